"""The LightningDataModule shared by every recipe: a staged training source (see ``sampling``)
and an optional fixed validation dataset, batched by the run's ``StagePlan``."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .plan import StagePlan
from .sampling import KeyedDataset, PadCollate, ResumableLoader, StagedBatchSampler, StagedSource

__all__ = ["StagedDataModule"]


class StagedDataModule(L.LightningDataModule):
    def __init__(self, train: StagedSource, plan: StagePlan, seed: int, pad_id: int,
                 valid: Dataset | None = None, valid_batch_size: int = 1, num_workers: int = 0):
        super().__init__()
        self.train_source, self.plan, self.seed = train, plan, seed
        self.valid, self.valid_batch_size = valid, max(int(valid_batch_size), 1)
        self.collate = PadCollate(pad_id)
        self.num_workers = num_workers

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        if trainer.world_size != self.plan.world_size:
            raise RuntimeError(f"the step plan was made for {self.plan.world_size} device(s) but the "
                               f"trainer runs on {trainer.world_size}")
        return trainer.global_rank, trainer.world_size

    def _loader_kwargs(self) -> dict:
        workers = self.num_workers
        return dict(collate_fn=self.collate, num_workers=workers, persistent_workers=workers > 0,
                    pin_memory=torch.cuda.is_available())

    def train_dataloader(self):
        rank, world = self._rank_world()
        sampler = StagedBatchSampler(self.train_source, self.plan, self.seed, rank, world)
        trainer, accumulate = self.trainer, self.plan.accumulate
        # The data position saved in checkpoints: micro-batches behind the current optimizer step.
        consumed = (lambda: trainer.global_step * accumulate) if trainer is not None else (lambda: 0)
        return ResumableLoader(KeyedDataset(self.train_source), batch_sampler=sampler,
                               consumed=consumed, **self._loader_kwargs())

    def val_dataloader(self):
        if self.valid is None:
            return []
        rank, world = self._rank_world()
        # Each rank takes every world-th window; the module all-reduces the sums, so the result is
        # the exact mean over the whole split.
        dataset = self.valid if world == 1 else Subset(self.valid, range(rank, len(self.valid), world))
        return DataLoader(dataset, batch_size=self.valid_batch_size, shuffle=False,
                          **self._loader_kwargs())
