"""Runs a SeqMambaModule on a StagedDataModule with Lightning, inside a run folder:

    runs/<name>-<timestamp>/
        recipe.yaml        the resolved recipe (written by the task)
        metrics.csv        train rows every trainer.log_every steps, valid rows per validation
        curves.png         loss / perplexity curves
        checkpoints/       step-NNNNNNN.ckpt (the newest few) and last.ckpt: Lightning checkpoints
                           with optimizer, scheduler, data position and RNG states
        export/            the model as save_pretrained writes it (what evaluate/score/... load)

bf16 mixed precision on GPU, fp32 on CPU; DDP when trainer.devices > 1.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import lightning as L
import torch

from .callbacks import MetricsLog, StepCheckpoint, StepProgressBar
from .config import TrainerConfig
from .datamodule import StagedDataModule
from .module import SeqMambaModule

__all__ = ["fit", "FitResult", "make_run_dir", "resolve_accelerator", "resolve_precision",
           "world_size", "RUN_DIR_ENV"]

# DDP re-launches the command once per extra device; they must all write to one run folder.
RUN_DIR_ENV = "SEQMAMBA_RUN_DIR"


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    seconds: float
    train: dict = field(default_factory=dict)
    valid: dict = field(default_factory=dict)
    is_global_zero: bool = True  # False in the extra processes DDP starts

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def export(self) -> Path:
        return self.run_dir / "export"


def resolve_accelerator(cfg: TrainerConfig) -> str:
    if cfg.accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("trainer.accelerator=gpu but no CUDA GPU is visible (use auto or cpu)")
    return cfg.accelerator


def resolve_precision(cfg: TrainerConfig, accelerator: str) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    if accelerator == "gpu" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def world_size(cfg: TrainerConfig) -> int:
    return cfg.devices * cfg.num_nodes


def _is_launcher_child() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) != 0 or int(os.environ.get("NODE_RANK", "0")) != 0


def make_run_dir(runs_dir: str | os.PathLike, name: str) -> Path:
    """A new ``runs_dir/name-YYYYmmdd-HHMMSS`` folder (DDP children reuse the parent's)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and _is_launcher_child():
        return Path(inherited)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    os.environ[RUN_DIR_ENV] = str(path)
    return path


# Lightning hints that do not apply to these runs (the sampler is ours on purpose; validation
# data is small; there is no Lightning logger).
_QUIET = [
    r".*does not have many workers.*",
    r".*`use_distributed_sampler`.*",
    r".*The number of training batches.*logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*Total length of `.*` across ranks is zero.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*It is recommended to use `self.log\('val_loss', ..., sync_dist=True\)`.*",  # reduced already
]


def fit(module: SeqMambaModule, datamodule: StagedDataModule, cfg: TrainerConfig, run_dir: Path,
        resume: bool = False, callbacks: list | tuple = (),
        echo: Callable[[str], None] = print) -> FitResult:
    """Train (or, with ``resume``, continue from ``run_dir/checkpoints/last.ckpt``)."""
    run_dir = Path(run_dir)
    plan = module.plan
    accelerator = resolve_accelerator(cfg)
    precision = resolve_precision(cfg, accelerator)
    world = world_size(cfg)
    if plan.world_size != world:
        raise RuntimeError(f"plan for {plan.world_size} devices, trainer config has {world}")

    metrics_log = MetricsLog(run_dir, cfg.log_every, plan.max_steps)
    checkpoint = StepCheckpoint(run_dir, cfg.ckpt_every, cfg.keep_checkpoints, plan.max_steps)
    ckpt_path = None
    if resume:
        ckpt_path = checkpoint.last_path
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")

    has_valid = datamodule.valid is not None and len(datamodule.valid) > 0
    progress = [StepProgressBar(plan.max_steps, cfg.log_every)] if cfg.progress_bar else []

    # Lightning's start-up chatter (accelerator lines, tips) goes to this logger at INFO level;
    # the one useful fact is echoed below instead.
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = chatter.level
    chatter.setLevel(logging.WARNING)
    try:
        trainer = _trainer(cfg, plan, accelerator, precision, world, run_dir, has_valid,
                           [metrics_log, checkpoint, *progress, *callbacks])
        if trainer.is_global_zero:
            echo(f"device: {accelerator} x {world}, precision {precision}")
        module.grad_norm_every = cfg.log_every
        start = time.monotonic()
        _run(trainer, module, datamodule, ckpt_path, has_valid)
    finally:
        chatter.setLevel(level)
    if trainer.is_global_zero:
        metrics_log.redraw()
    return FitResult(run_dir, trainer.global_step, time.monotonic() - start,
                     dict(module.step_metrics), dict(module.val_metrics), trainer.is_global_zero)


def _trainer(cfg, plan, accelerator, precision, world, run_dir, has_valid, callbacks):
    val_every = cfg.val_every or plan.max_steps
    val_interval = min(val_every, plan.max_steps) * plan.accumulate
    return L.Trainer(
        accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy="ddp" if world > 1 else "auto", precision=precision,
        max_steps=plan.max_steps, max_epochs=-1,
        accumulate_grad_batches=plan.accumulate,
        gradient_clip_val=cfg.grad_clip or None, gradient_clip_algorithm="norm",
        val_check_interval=val_interval if has_valid else None,
        check_val_every_n_epoch=None if has_valid else 1,
        limit_val_batches=None if has_valid else 0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, default_root_dir=str(run_dir),
    )


def _run(trainer, module, datamodule, ckpt_path, has_valid) -> None:
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
        if has_valid and module.val_metrics.get("step") != trainer.global_step:
            trainer.validate(module, datamodule=datamodule, verbose=False)
