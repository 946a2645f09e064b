"""AdamW with decay only on weight matrices, and the warmup + cosine learning-rate curve."""
from __future__ import annotations

import math

import torch

from .config import OptimConfig, ScheduleConfig

__all__ = ["param_groups", "build_optimizer", "lr_factor"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices only. seqmamba models define the split themselves
    (``optimizer_groups``: no decay on norms, biases and ``_no_weight_decay`` parameters such as
    A_log and D); other modules get the same rule here."""
    if hasattr(model, "optimizer_groups"):
        groups = model.optimizer_groups(weight_decay)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        no_decay = lambda p: p.dim() < 2 or getattr(p, "_no_weight_decay", False)  # noqa: E731
        groups = [{"params": [p for p in params if not no_decay(p)], "weight_decay": weight_decay},
                  {"params": [p for p in params if no_decay(p)], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if any(p.is_cuda for p in model.parameters()):
        # Multi-tensor, not fused: Lightning refuses gradient clipping under bf16/16-mixed
        # precision with an optimizer that unscales gradients itself (fused AdamW does).
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)


def lr_factor(step: int, schedule: ScheduleConfig, max_steps: int) -> float:
    """Multiplier of the peak lr before optimizer step ``step`` (0-based): linear warmup from
    1/warmup to 1, then cosine (or flat) down to ``min_lr_ratio`` at ``max_steps``."""
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.decay == "constant":
        return 1.0
    span = max(max_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    floor = schedule.min_lr_ratio
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
