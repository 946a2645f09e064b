"""A reference genome for pretraining: an indexed FASTA plus the BED of intervals that split it.

The BED follows the Basenji/Enformer ``sequences_human.bed`` that HyenaDNA and the Mamba paper
use: tab-separated ``chrom  start  end  split`` (0-based, end exclusive), split being train /
valid / test. Random access to the sequence goes through ``IndexedFasta`` (pyfaidx, plain or
bgzip; see ``seqmamba.data.fasta``), which reopens its file in every DataLoader worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fasta import FastaError, IndexedFasta

__all__ = ["GenomeError", "Intervals", "read_bed", "Genome", "split_intervals"]


class GenomeError(ValueError):
    """The genome FASTA or its BED is missing or inconsistent; the message is for the user."""


@dataclass(frozen=True)
class Intervals:
    """Intervals of one split, as parallel arrays (``chrom`` holds indices into ``names``)."""

    names: tuple[str, ...]
    chrom: np.ndarray   # int32
    start: np.ndarray   # int64
    end: np.ndarray     # int64

    def __len__(self) -> int:
        return len(self.start)

    @property
    def total_bases(self) -> int:
        return int((self.end - self.start).sum())


def read_bed(path: str | os.PathLike) -> list[tuple[str, int, int, str | None]]:
    """Rows ``(chrom, start, end, split)`` of a BED file; split is None when the column is absent.

    Header lines (``#``, ``track``, ``browser``) and blank lines are skipped; anything else that is
    not ``chrom start end [split]`` with 0 <= start < end raises GenomeError naming the line.
    """
    path = Path(path)
    if path.is_dir():
        raise GenomeError(f"{path}: is a folder, expected a BED file")
    if not path.is_file():
        raise GenomeError(f"{path}: no such BED file")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.rstrip("\r\n")
            if "\x00" in text or "\ufffd" in text:  # undecodable bytes: not text at all
                raise GenomeError(f"{path}:{lineno}: binary data, not BED text (a compressed "
                                  "BED must be decompressed first)")
            if not text.strip() or text.startswith(("#", "track", "browser")):
                continue
            fields = text.split("\t")
            if len(fields) < 3:
                fields = text.split()
            if len(fields) < 3:
                raise GenomeError(f"{path}:{lineno}: expected 'chrom start end [split]', got {text[:60]!r}")
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise GenomeError(f"{path}:{lineno}: start/end must be integers, got "
                                  f"{fields[1][:20]!r} {fields[2][:20]!r}") from None
            if not 0 <= start < end:
                raise GenomeError(f"{path}:{lineno}: need 0 <= start < end, got {start} {end}")
            rows.append((fields[0], start, end, fields[3].strip() if len(fields) > 3 else None))
    if not rows:
        raise GenomeError(f"{path}: no intervals found")
    return rows


class Genome:
    """An indexed genome FASTA and, optionally, the BED that splits it into train/valid/test.

    Without a BED every record is one interval of every split (used by ``evaluate`` on a plain
    FASTA of held-out sequence).
    """

    def __init__(self, fasta: str | os.PathLike, bed: str | os.PathLike | None = None):
        try:
            self.fasta = IndexedFasta(fasta)
        except FastaError as e:
            raise GenomeError(str(e)) from None
        self.names: tuple[str, ...] = tuple(self.fasta.names)
        self._chrom_index = {name: i for i, name in enumerate(self.names)}
        self.chrom_lengths = np.array([self.fasta.lengths[n] for n in self.names], dtype=np.int64)
        self.bed_path = Path(bed) if bed is not None else None
        self._rows = read_bed(bed) if bed is not None else None
        if self._rows is not None:
            self._check_rows()

    def _check_rows(self) -> None:
        for i, (chrom, start, end, _split) in enumerate(self._rows):
            if chrom not in self._chrom_index:
                raise GenomeError(
                    f"{self.bed_path}: interval {i + 1} is on {chrom!r}, which {self.fasta.path} "
                    f"does not have (its records: {', '.join(self.names[:5])}"
                    f"{', ...' if len(self.names) > 5 else ''}); is this the BED for this genome?")
            length = self.chrom_lengths[self._chrom_index[chrom]]
            if end > length:
                raise GenomeError(f"{self.bed_path}: interval {i + 1} {chrom}:{start}-{end} ends past "
                                  f"the end of {chrom} ({length} bases)")

    @property
    def splits(self) -> list[str]:
        if self._rows is None:
            return []
        return sorted({r[3] for r in self._rows if r[3] is not None})

    def intervals(self, split: str | None) -> Intervals:
        """The intervals of ``split`` (all of them with split None, or the whole records when the
        genome has no BED)."""
        if self._rows is None:
            n = len(self.names)
            return Intervals(self.names, np.arange(n, dtype=np.int32), np.zeros(n, np.int64),
                             self.chrom_lengths.copy())
        if split is not None and any(r[3] is None for r in self._rows):
            raise GenomeError(f"{self.bed_path}: has no 4th (split) column, cannot select "
                              f"split {split!r}")
        rows = [r for r in self._rows if split is None or r[3] == split]
        if not rows:
            raise GenomeError(f"{self.bed_path}: no intervals with split {split!r} "
                              f"(splits present: {', '.join(self.splits) or 'none'})")
        return Intervals(self.names,
                         np.array([self._chrom_index[r[0]] for r in rows], dtype=np.int32),
                         np.array([r[1] for r in rows], dtype=np.int64),
                         np.array([r[2] for r in rows], dtype=np.int64))

    def fetch(self, chrom_index: int, start: int, end: int) -> str:
        return self.fasta.fetch(self.names[chrom_index], int(start), int(end))

    def __repr__(self) -> str:
        bed = f", bed={str(self.bed_path)!r}" if self.bed_path else ""
        return f"Genome({str(self.fasta.path)!r}{bed}, {len(self.names)} records)"


def split_intervals(records: list[tuple[str, int]], interval: int, valid_frac: float = 0.05,
                    test_frac: float = 0.05, min_split_length: int | None = None
                    ) -> list[tuple[str, int, int, str]]:
    """A train/valid/test BED for a genome of ``(name, length)`` records: each record's first
    part is train, then ``valid_frac`` of it valid, then the last ``test_frac`` test, each part
    cut into intervals of at most ``interval`` bases. Contiguous held-out blocks (rather than
    scattered intervals) keep training windows from overlapping the held-out sequence. Records
    shorter than ``min_split_length`` (default: 10 x interval) are train only."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 <= valid_frac, test_frac and valid_frac + test_frac < 1, got "
                         f"{valid_frac} and {test_frac}")
    min_len = 10 * interval if min_split_length is None else min_split_length
    rows = []
    for name, length in records:
        if length < min_len:
            parts = [("train", 0, length)]
        else:
            a = int(round(length * (1 - valid_frac - test_frac)))
            b = int(round(length * (1 - test_frac)))
            parts = [(s, lo, hi) for s, lo, hi in
                     (("train", 0, a), ("valid", a, b), ("test", b, length)) if hi > lo]
        for split, start, end in parts:
            for s in range(start, end, interval):
                rows.append((name, s, min(s + interval, end), split))
    return rows
