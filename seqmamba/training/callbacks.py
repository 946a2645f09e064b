"""Run-folder artefacts: step checkpoints + model export, the CSV log and the loss curve plot."""
from __future__ import annotations

import csv
import math
import os
import shutil
import time
from pathlib import Path

import lightning as L

from ..atomic_io import atomic_output

__all__ = ["StepCheckpoint", "MetricsLog", "StepProgressBar", "export_model", "plot_curves",
           "CSV_FIELDS"]

CSV_FIELDS = ["step", "split", "loss", "bits", "ppl", "acc", "lr", "grad_norm", "seq_len", "tokens",
              "elapsed_s"]


def export_model(model, target: Path) -> None:
    """The model as ``save_pretrained`` writes it (atomic: a reader sees the old export or the
    new one, never a mix)."""
    model.save_pretrained(Path(target))


class StepCheckpoint(L.Callback):
    """Every ``every`` optimizer steps and at the last step: a Lightning checkpoint
    ``checkpoints/step-NNNNNNN.ckpt`` (written atomically by Lightning's checkpoint IO: temp file
    then rename), ``checkpoints/last.ckpt`` pointing at it, and the model exported with
    ``save_pretrained`` to ``export/``. Older step checkpoints beyond ``keep`` are deleted."""

    def __init__(self, run_dir: Path, every: int, keep: int, max_steps: int):
        self.run_dir, self.every, self.keep, self.max_steps = Path(run_dir), every, keep, max_steps
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.last_saved_step = -1

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / "last.ckpt"

    def on_train_start(self, trainer, pl_module):
        self.last_saved_step = trainer.global_step  # a resumed run's checkpoint already exists

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.last_saved_step:
            return  # mid-accumulation, or this step is saved already
        if (self.every and step % self.every == 0) or step >= self.max_steps:
            self.save(trainer, pl_module)

    def save(self, trainer, pl_module) -> None:
        step = trainer.global_step
        path = self.ckpt_dir / f"step-{step:07d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # every rank calls it; rank 0 writes
        self.last_saved_step = step
        if trainer.is_global_zero:
            tmp = self.ckpt_dir / f".last.ckpt.tmp-{os.getpid()}"
            try:
                os.link(path, tmp)  # no copy of a large file; falls back where links fail
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, self.last_path)
            steps = sorted(self.ckpt_dir.glob("step-*.ckpt"))
            for stale in steps[:-self.keep]:
                stale.unlink(missing_ok=True)
            export_model(pl_module.model, self.run_dir / "export")
        trainer.strategy.barrier("seqmamba_checkpoint")


def plot_curves(csv_path: Path, png_path: Path) -> None:
    """Loss (and perplexity) against step for train and validation rows of the CSV log."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = read_log(csv_path)
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train" and r["loss"] is not None]
    valid = [(r["step"], r["loss"]) for r in rows if r["split"] == "valid" and r["loss"] is not None]
    # Dotted lines where sequence-length warmup moves to the next length.
    lengths = [(r["step"], r["seq_len"]) for r in rows if r["split"] == "train" and r["seq_len"]]
    stage_changes = [s for (s, n), (_, prev) in zip(lengths[1:], lengths[:-1]) if n != prev]
    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, transform, label in ((ax_loss, lambda v: v / math.log(2), "loss (bits/token)"),
                                 (ax_ppl, lambda v: math.exp(min(v, 50)), "perplexity")):
        if train:
            ax.plot([s for s, _ in train], [transform(v) for _, v in train], label="train", lw=1)
        if valid:
            ax.plot([s for s, _ in valid], [transform(v) for _, v in valid], "o-", label="valid",
                    ms=3)
        for step in stage_changes:
            ax.axvline(step, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if train or valid:
            ax.legend()
    fig.tight_layout()
    try:
        with atomic_output(png_path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)


def read_log(csv_path: Path) -> list[dict]:
    if not Path(csv_path).exists():
        return []
    rows = []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for key, value in row.items():
                if key == "split":
                    parsed[key] = value
                elif value in ("", None):
                    parsed[key] = None
                else:
                    parsed[key] = int(float(value)) if key in ("step", "seq_len", "tokens") else float(value)
            rows.append(parsed)
    return rows


class MetricsLog(L.Callback):
    """Appends a train row every ``every`` steps and a valid row after each validation to
    ``metrics.csv``; redraws ``curves.png`` at each checkpoint and at the end. On resume, rows
    after the checkpoint's step are dropped so the log matches the restored state."""

    def __init__(self, run_dir: Path, every: int, max_steps: int):
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.png_path = Path(run_dir) / "curves.png"
        self.every, self.max_steps = every, max_steps
        self._elapsed_before = 0.0
        self._t0 = time.monotonic()
        self._last_train_step = -1

    def _elapsed(self) -> float:
        return self._elapsed_before + time.monotonic() - self._t0

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.monotonic()
        if not trainer.is_global_zero:
            return
        rows = [r for r in read_log(self.csv_path) if r["step"] <= trainer.global_step]
        if rows:
            self._elapsed_before = max((r["elapsed_s"] or 0.0) for r in rows)
        with open(self.csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in r.items() if k in CSV_FIELDS})

    def _append(self, row: dict) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if row.get(k) is None else _fmt(row.get(k))) for k in CSV_FIELDS})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = pl_module.step_metrics
        step = m.get("step")
        if not trainer.is_global_zero or step is None or step == self._last_train_step:
            return
        self._last_train_step = step
        if step % self.every == 0 or step == 1 or step >= self.max_steps:
            self._append({**m, "split": "train", "elapsed_s": self._elapsed()})

    def on_validation_end(self, trainer, pl_module):
        m = pl_module.val_metrics
        if trainer.sanity_checking or not trainer.is_global_zero or not m:
            return
        row = {"step": m["step"], "split": "valid", "elapsed_s": self._elapsed()}
        row.update({k[len("val_"):]: v for k, v in m.items() if k.startswith("val_")})
        self._append(row)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.is_global_zero:
            self.redraw()

    def redraw(self) -> None:
        if self.csv_path.exists():
            plot_curves(self.csv_path, self.png_path)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class StepProgressBar(L.Callback):
    """Progress over optimizer steps (Lightning's own bar counts micro-batches of one endless
    epoch): a tqdm bar on a terminal, else a plain line every ``every`` steps (logs, CI), with
    loss, last validation loss, sequence length and tokens per second."""

    def __init__(self, max_steps: int, every: int = 10, stream=None):
        self.max_steps, self.every = max_steps, max(int(every), 1)
        self.stream = stream
        self.bar = None
        self._last = -1
        self._t0 = 0.0
        self._start_step = 0

    def _out(self):
        import sys
        return self.stream or sys.stderr

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        self._last = self._start_step = trainer.global_step
        self._t0 = time.monotonic()
        if self._out().isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.max_steps, initial=trainer.global_step, unit="step",
                            dynamic_ncols=True, desc="train", file=self._out())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last:
            return
        m, v = pl_module.step_metrics, pl_module.val_metrics
        plan = pl_module.plan
        rate = (plan.tokens_through(step) - plan.tokens_through(self._start_step)) / \
            max(time.monotonic() - self._t0, 1e-9)
        post = {"loss": f"{m.get('loss', float('nan')):.4f}", "L": m.get("seq_len")}
        if v:
            post["val"] = f"{v['val_loss']:.4f}"
        post["tok/s"] = f"{rate:,.0f}"
        if self.bar is not None:
            self.bar.update(step - self._last)
            self.bar.set_postfix(post, refresh=False)
        elif step % self.every == 0 or step >= self.max_steps:
            fields = "  ".join(f"{k} {val}" for k, val in post.items())
            print(f"step {step}/{self.max_steps}  {fields}", file=self._out(), flush=True)
        self._last = step

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, trainer, pl_module):
        self._close()

    def on_exception(self, trainer, pl_module, exception):
        self._close()
