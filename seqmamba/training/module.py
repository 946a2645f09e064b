"""The LightningModule shared by every recipe: any seqmamba model + an objective + AdamW with
warmup/cosine. Metrics are exact sums reduced over micro-batches and devices (see objectives)."""
from __future__ import annotations

import math
import random

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from .config import OptimConfig, ScheduleConfig
from .objectives import LN2
from .optim import build_optimizer, lr_factor
from .plan import StagePlan

__all__ = ["SeqMambaModule", "NonFiniteLossError"]

_STAT_KEYS = ("loss_sum", "count", "correct")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; raised before the optimizer applies the bad update."""

    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite training loss ({value}) at step {step}: stopping before the "
                         f"update (lower optim.lr, raise schedule.warmup_steps, or check the data)")
        self.step, self.value = step, value


def _reduce(sums: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = sums.clone()
        dist.all_reduce(sums)
    return sums


def _summary(sums: list[float], prefix: str = "") -> dict[str, float]:
    loss_sum, count, correct = sums
    loss = loss_sum / count if count else float("nan")
    out = {f"{prefix}loss": loss, f"{prefix}bits": loss / LN2,
           f"{prefix}ppl": math.exp(loss) if loss < 700 else float("inf")}
    if correct >= 0:
        out[f"{prefix}acc"] = correct / count if count else float("nan")
    return out


def _numpy_state() -> list:
    # As plain types and a tensor: Lightning loads checkpoints with torch.load(weights_only=True),
    # which refuses numpy arrays.
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


class SeqMambaModule(L.LightningModule):
    """Wraps ``model`` (a SeqMambaModel) with ``objective`` (see ``objectives``).

    After every optimizer step ``step_metrics`` holds the step's loss (token-weighted over all
    micro-batches and devices), lr, sequence length and tokens seen; after every validation,
    ``val_metrics``. Callbacks (CSV log, progress bar) read them.
    """

    def __init__(self, model, objective, optim: OptimConfig, schedule: ScheduleConfig,
                 plan: StagePlan, grad_norm_every: int = 1):
        super().__init__()
        self.model, self.objective = model, objective
        self.optim_cfg, self.schedule_cfg, self.plan = optim, schedule, plan
        self.grad_norm_every = max(int(grad_norm_every), 1)
        self._train_sums: torch.Tensor | None = None
        self._val_sums: torch.Tensor | None = None
        self.step_metrics: dict[str, float] = {}
        self.val_metrics: dict[str, float] = {}

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # ---- training ------------------------------------------------------------------------------
    @staticmethod
    def _stats_vector(stats: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        # correct = -1 marks "no accuracy for this objective" through the sums.
        values = [stats.get("loss_sum"), stats.get("count"), stats.get("correct")]
        return torch.stack([v.float() if v is not None else torch.tensor(-1.0, device=like.device)
                            for v in values]).to(like.device)

    def training_step(self, batch, batch_idx):
        loss, stats = self.objective(self.model, batch)
        vec = self._stats_vector(stats, loss)
        self._train_sums = vec if self._train_sums is None else self._train_sums + vec
        return loss

    def on_before_optimizer_step(self, optimizer):
        # Every micro-batch of this step has been back-propagated: check and summarise the step
        # here, before the update is applied. All ranks see the same reduced sums, so all stop.
        # One host sync per optimizer step (for the check and the log), none per micro-batch.
        sums = _reduce(self._train_sums).tolist()
        sums[2] = max(sums[2], -1.0)
        self._train_sums = None
        step = self.global_step + 1
        if not math.isfinite(sums[0]):
            raise NonFiniteLossError(step, sums[0])
        metrics = {"step": step, **_summary(sums)}
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        metrics["seq_len"] = self.plan.stage_at(step - 1).seq_len
        metrics["tokens"] = self.plan.tokens_through(step)
        if step % self.grad_norm_every == 0 or step == self.plan.max_steps:
            norms = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
            metrics["grad_norm"] = float(torch.stack(norms).norm()) if norms else 0.0
        self.step_metrics = metrics
        self.log("loss", metrics["loss"], prog_bar=True, logger=False, batch_size=1)

    # ---- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = None

    def validation_step(self, batch, batch_idx):
        loss, stats = self.objective(self.model, batch)
        vec = self._stats_vector(stats, loss)
        self._val_sums = vec if self._val_sums is None else self._val_sums + vec

    def on_validation_epoch_end(self):
        if self._val_sums is None:
            return
        sums = _reduce(self._val_sums).tolist()
        sums[2] = max(sums[2], -1.0)
        self.val_metrics = {"step": self.global_step, **_summary(sums, "val_")}
        self.log("val_loss", self.val_metrics["val_loss"], prog_bar=True, logger=False, batch_size=1)

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.model, self.optim_cfg)
        schedule, max_steps = self.schedule_cfg, self.plan.max_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, schedule, max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        # The model config rebuilds the network from a .ckpt alone; the RNG states make a resumed
        # run draw the same random numbers (dropout-free models barely use them, but tests and
        # user objectives may).
        checkpoint["seqmamba"] = {
            "model_config": self.model.config.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(),
                    "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def on_load_checkpoint(self, checkpoint):
        rng = checkpoint.get("seqmamba", {}).get("rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
