"""Deterministic, resumable training batches.

Every sample of the run is a pure function of (seed, stage, position in the stage): the batch
sampler turns the micro-batch counter into keys ``(seq_len, index, seed_words)`` and the dataset
draws any augmentation from ``np.random.default_rng(seed_words)``. The data position is therefore
just the number of micro-batches consumed, which the loader saves in Lightning checkpoints, so
``--resume`` continues with exactly the batches an uninterrupted run would have seen, whatever
the number of DataLoader workers. The samples of one optimizer step do not depend on how it is
split into devices and accumulation micro-batches either.

Training data is given as a *staged source*: any object with

    size(seq_len) -> int                           samples available at that length
    get(seq_len, index, rng) -> dict[str, Tensor]  one sample (at least "input_ids")

``FixedSource`` adapts a plain map-style dataset (e.g. labelled sequences for classification).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .plan import StagePlan

__all__ = ["StagedSource", "FixedSource", "KeyedDataset", "StagedBatchSampler", "ResumableLoader",
           "PadCollate"]


class StagedSource(Protocol):
    def size(self, seq_len: int) -> int: ...

    def get(self, seq_len: int, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]: ...


class FixedSource:
    """A map-style dataset as a staged source: the same items at every length."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def size(self, seq_len: int) -> int:
        return len(self.dataset)

    def get(self, seq_len: int, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return self.dataset[index]


class KeyedDataset(Dataset):
    """Indexed by the sampler's keys rather than by integers."""

    def __init__(self, source: StagedSource):
        self.source = source

    def __len__(self) -> int:  # not used for sampling; DataLoader wants it to exist
        return 0

    def __getitem__(self, key: tuple[int, int, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        seq_len, index, seed_words = key
        return self.source.get(seq_len, index, np.random.default_rng(list(seed_words)))


class StagedBatchSampler:
    """Yields this device's micro-batches of keys, from micro-batch ``start`` to the end of the run.

    Within a stage, global sample position p (step-in-stage x batch_size + offset) maps to
    ``perm_epoch[p mod n]`` with one fresh permutation per pass over the ``n`` samples.
    """

    def __init__(self, source: StagedSource, plan: StagePlan, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.source, self.plan, self.seed = source, plan, int(seed)
        self.rank, self.world_size = rank, world_size
        self.start = 0
        self._perm_key: tuple[int, int] | None = None
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return self.plan.total_micro_batches

    def __iter__(self):
        for m in range(self.start, self.plan.total_micro_batches):
            yield self.keys(m)

    def _permutation(self, stage: int, epoch: int, n: int) -> np.ndarray:
        if self._perm_key != (stage, epoch):
            self._perm = np.random.default_rng([self.seed, stage, epoch, 0x5EC]).permutation(n)
            self._perm_key = (stage, epoch)
        return self._perm

    def keys(self, micro_batch: int) -> list[tuple[int, int, tuple[int, ...]]]:
        step, micro = divmod(micro_batch, self.plan.accumulate)
        st = self.plan.stage_at(step)
        n = self.source.size(st.seq_len)
        if n == 0:
            raise ValueError(f"the training data has no sample of length {st.seq_len} "
                             f"(stage {st.index})")
        base = (step - st.first_step) * st.batch_size \
            + (micro * self.world_size + self.rank) * st.micro_batch
        out = []
        for k in range(st.micro_batch):
            pos = base + k
            epoch, within = divmod(pos, n)
            index = int(self._permutation(st.index, epoch, n)[within])
            out.append((st.seq_len, index, (self.seed, st.index, pos)))
        return out


class ResumableLoader(DataLoader):
    """A DataLoader over a ``StagedBatchSampler`` that Lightning saves and restores
    (its ``state_dict`` goes into checkpoints): the state is the micro-batches consumed."""

    def __init__(self, *args, consumed: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self._consumed = consumed

    def state_dict(self) -> dict[str, Any]:
        return {"micro_batches_consumed": int(self._consumed())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_sampler.start = int(state["micro_batches_consumed"])


class PadCollate:
    """Stack samples (dicts of tensors) into a batch, right-padding 1-D tensors to the longest:
    ``input_ids`` with ``pad_id``, other sequences with zeros/False. Scalars are stacked.
    (A class, not a closure, so spawned DataLoader workers can pickle it.)"""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in samples[0]:
            values = [torch.as_tensor(s[key]) for s in samples]
            if values[0].dim() == 0:
                batch[key] = torch.stack(values)
                continue
            width = max(v.shape[0] for v in values)
            fill = self.pad_id if key == "input_ids" else 0
            out = values[0].new_full((len(values), width, *values[0].shape[1:]), fill)
            for i, v in enumerate(values):
                out[i, :v.shape[0]] = v
            batch[key] = out
        return batch
