"""Training objectives: how a batch becomes a loss for a given head.

An objective is called as ``objective(model, batch) -> (loss, stats)``: ``loss`` is what is
back-propagated (a mean), ``stats`` holds detached sums (``loss_sum``, ``count`` and optionally
``correct``) that the training module adds up across micro-batches, devices and validation
batches, so logged means are exact token-weighted means rather than means of means.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

__all__ = ["LMObjective", "ClassificationObjective", "objective_for", "LN2"]

LN2 = math.log(2.0)


class LMObjective:
    """Next-token cross-entropy. Targets equal to ``pad_id`` or in ``ignore_ids`` (e.g. N, when
    N bases are excluded from the loss) do not count."""

    name = "lm"

    def __init__(self, pad_id: int, ignore_ids: Iterable[int] = ()):
        self.pad_id = int(pad_id)
        self.ignore_ids = tuple(int(i) for i in ignore_ids)

    def target_mask(self, targets: torch.Tensor) -> torch.Tensor:
        mask = targets != self.pad_id
        for i in self.ignore_ids:
            mask &= targets != i
        return mask

    def token_nll(self, model, input_ids: torch.Tensor):
        """Per-position negative log-likelihood (nats, float32) of tokens 1..L-1 given the
        previous ones, and the mask of positions that count. Shapes (B, L-1)."""
        logits = model(input_ids)[:, :-1]
        targets = input_ids[:, 1:]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              reduction="none").view_as(targets)
        return nll, self.target_mask(targets)

    def __call__(self, model, batch: dict[str, torch.Tensor]):
        nll, mask = self.token_nll(model, batch["input_ids"])
        count = mask.sum()
        loss_sum = (nll * mask).sum()
        # clamp: a micro-batch whose targets are all masked contributes a zero (not NaN) loss.
        loss = loss_sum / count.clamp(min=1)
        return loss, {"loss_sum": loss_sum.detach(), "count": count.detach().to(torch.float32)}


class ClassificationObjective:
    """Cross-entropy of the pooled logits against ``batch["labels"]`` (one label per sequence).
    Passes ``attention_mask`` when the batch has one (padded sequences of unequal length)."""

    name = "classification"

    def __call__(self, model, batch: dict[str, torch.Tensor]):
        kwargs = {}
        if "attention_mask" in batch:
            kwargs["attention_mask"] = batch["attention_mask"]
        logits = model(batch["input_ids"], **kwargs)
        labels = batch["labels"]
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        stats = {"loss_sum": losses.sum().detach(),
                 "count": torch.tensor(float(labels.numel()), device=labels.device),
                 "correct": (logits.argmax(-1) == labels).sum().detach().to(torch.float32)}
        return losses.mean(), stats


def objective_for(model, ignore_ids: Iterable[int] = ()):
    """The default objective of a model's head."""
    head = model.config.head
    if head == "lm":
        tok = getattr(model, "tokenizer", None)
        return LMObjective(getattr(tok, "pad_id", 0), ignore_ids)
    if head == "classification":
        return ClassificationObjective()
    raise ValueError(f"no training objective for head {head!r}")

