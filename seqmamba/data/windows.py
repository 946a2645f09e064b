"""Fixed-length windows of a genome, and the datasets that tokenize them.

Window rule (Mamba paper, App. E.3, after HyenaDNA): for a sequence length L and an interval
[start, end) of the BED,

* L <= end - start: the interval yields its non-overlapping sub-windows
  [start + k L, start + (k+1) L) for k = 0 .. (end - start) // L - 1 (the remainder is dropped);
* L >  end - start: it yields two windows, one starting at ``start`` and one ending at ``end``,
  shifted as needed to stay inside the chromosome (a chromosome shorter than L gives the whole
  chromosome once, padded by the collate function).

The same rule gives the fixed validation/test windows (no augmentation, fixed order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .genome import Genome, Intervals

__all__ = ["Windows", "make_windows", "evenly_spaced", "GenomeWindowDataset", "GenomeLMSource"]


@dataclass(frozen=True)
class Windows:
    chrom: np.ndarray  # int32 index into the genome's record names
    start: np.ndarray  # int64
    end: np.ndarray    # int64

    def __len__(self) -> int:
        return len(self.start)

    def subset(self, index: np.ndarray) -> "Windows":
        return Windows(self.chrom[index], self.start[index], self.end[index])


def make_windows(intervals: Intervals, chrom_lengths: np.ndarray, seq_len: int) -> Windows:
    """All windows of length ``seq_len`` the intervals yield (see module doc), in BED order."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    span = intervals.end - intervals.start
    long_ = span >= seq_len

    # Long intervals: non-overlapping sub-windows, vectorised with repeat + a per-interval counter.
    counts = np.where(long_, span // seq_len, 0)
    rep = np.repeat(np.arange(len(span)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    sub_start = intervals.start[rep] + offsets * seq_len

    # Short intervals: one window from the start, one up to the end, kept inside the chromosome.
    short = np.flatnonzero(~long_)
    chrom_len = chrom_lengths[intervals.chrom[short]]
    first = np.minimum(intervals.start[short], np.maximum(chrom_len - seq_len, 0))
    second = np.maximum(intervals.end[short] - seq_len, 0)
    pair_idx = np.repeat(short, 2)
    pair_start = np.stack([first, second], axis=1).reshape(-1)
    pair_end = np.minimum(pair_start + seq_len, np.repeat(chrom_len, 2))

    # Keep BED order: sort the union by interval index (stable, so sub-windows stay in order).
    idx = np.concatenate([rep, pair_idx])
    start = np.concatenate([sub_start, pair_start]).astype(np.int64)
    end = np.concatenate([sub_start + seq_len, pair_end]).astype(np.int64)
    order = np.argsort(idx, kind="stable")
    idx, start, end = idx[order], start[order], end[order]
    chrom = intervals.chrom[idx].astype(np.int32)
    # The two windows of a short interval coincide when the chromosome is shorter than L:
    # the interval yields that window once.
    keep = np.ones(len(start), dtype=bool)
    keep[1:] = (idx[1:] != idx[:-1]) | (start[1:] != start[:-1]) | (end[1:] != end[:-1])
    return Windows(chrom[keep], start[keep], end[keep])


def evenly_spaced(windows: Windows, max_count: int | None) -> Windows:
    """At most ``max_count`` windows spread evenly over the list (deterministic), to bound the
    cost of validation on a large split."""
    if max_count is None or len(windows) <= max_count:
        return windows
    index = np.linspace(0, len(windows) - 1, max_count).round().astype(np.int64)
    return windows.subset(np.unique(index))


class GenomeWindowDataset(torch.utils.data.Dataset):
    """Fixed windows as token ids, in order: validation, test and ``seqmamba evaluate``."""

    def __init__(self, genome: Genome, windows: Windows, tokenizer):
        self.genome, self.windows, self.tokenizer = genome, windows, tokenizer

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.windows
        seq = self.genome.fetch(int(w.chrom[i]), int(w.start[i]), int(w.end[i]))
        return {"input_ids": self.tokenizer.encode(seq)}


class GenomeLMSource:
    """Training windows of one split at any sequence length (the length-warmup stages ask for
    several), with reverse-complement augmentation.

    Implements the engine's staged-source protocol: ``size(seq_len)`` windows exist at a length,
    ``get(seq_len, index, rng)`` returns one; all randomness comes from ``rng``, which the sampler
    derives from the run seed and the sample's position, so a resumed run sees the same data.
    """

    def __init__(self, genome: Genome, intervals: Intervals, tokenizer, rc_prob: float = 0.5):
        if not 0.0 <= rc_prob <= 1.0:
            raise ValueError(f"rc_prob must be in [0, 1], got {rc_prob}")
        self.genome, self.intervals, self.tokenizer, self.rc_prob = genome, intervals, tokenizer, rc_prob
        self._tables: dict[int, Windows] = {}

    def windows(self, seq_len: int) -> Windows:
        table = self._tables.get(seq_len)
        if table is None:
            table = self._tables[seq_len] = make_windows(self.intervals, self.genome.chrom_lengths,
                                                         seq_len)
        return table

    def size(self, seq_len: int) -> int:
        return len(self.windows(seq_len))

    def get(self, seq_len: int, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        w = self.windows(seq_len)
        seq = self.genome.fetch(int(w.chrom[index]), int(w.start[index]), int(w.end[index]))
        ids = self.tokenizer.encode(seq)
        if self.rc_prob > 0 and rng.random() < self.rc_prob:
            ids = self.tokenizer.reverse_complement_ids(ids)
        return {"input_ids": ids}
