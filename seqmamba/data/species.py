"""Species classification data: one genome FASTA per species, windows sampled at random.

A training example is drawn as in HyenaDNA and the Mamba paper (App. E.3.4): pick a species
uniformly, then one of its chromosomes (records) uniformly, then a window start uniformly; the
label is the species' index in the recipe. Windows whose fraction of non-ACGT bases (N, IUPAC)
exceeds ``max_n_fraction`` are redrawn.

Splits (``SplitConfig``), decided per species:

* ``chromosome``: whole records are held out by name. The defaults are HyenaDNA's: chr1, 3, 12,
  13 for validation and chr5, 7, 9, 10, 11 for test; everything else trains. Names are matched
  on the chromosome part, so ``chr1``, ``1``, ``hg38_chr1`` and ``chr1:100-200`` all mean chr1.
* ``position``: every record is cut into three contiguous ranges, the first
  ``1 - val_fraction - test_fraction`` of it for training, then validation, then test. This is
  for genomes with too few records to hold out whole chromosomes (a bacterium has one).
* ``auto`` (default): ``chromosome`` when it leaves every split at least one record for this
  species, else ``position``. The choice made is logged per species.

Records whose name matches ``exclude`` (unplaced/alt contigs, mitochondria) are dropped first.
Validation and test windows are fixed (seeded by their index) and balanced over species, so the
numbers are comparable between runs; training windows are drawn afresh for every sample from the
engine's per-sample generator (reproducible and resumable).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import ConfigError, TypedConfig
from ..tokenizers.dna_alphabet import reverse_complement
from .fasta import IndexedFasta

__all__ = [
    "SpeciesEntry", "SplitConfig", "SpeciesDataConfig", "Interval", "chromosome_key", "split_records", "SpeciesGenome",
    "SpeciesSource", "SpeciesWindowDataset", "HYENADNA_VAL_CHROMOSOMES", "HYENADNA_TEST_CHROMOSOMES",
    "missing_species_message",
]

log = logging.getLogger(__name__)

HYENADNA_VAL_CHROMOSOMES = ["chr1", "chr3", "chr12", "chr13"]
HYENADNA_TEST_CHROMOSOMES = ["chr5", "chr7", "chr9", "chr10", "chr11"]
SPLITS = ("train", "val", "test")


@dataclass
class SpeciesEntry(TypedConfig):
    """One class: a name and its genome FASTA (plain, .gz or bgzip)."""

    _config_prefix: ClassVar[str] = "data.species[]"

    name: str
    path: Path
    assembly: Optional[str] = None  # e.g. "panTro6", shown in messages
    url: Optional[str] = None       # where to download the FASTA when it is missing

    def validate(self, prefix: str) -> None:
        if not self.name.strip():
            raise ConfigError(f"{prefix}.name: must not be empty")


@dataclass
class SplitConfig(TypedConfig):
    _config_prefix: ClassVar[str] = "data.split"

    by: Literal["auto", "chromosome", "position"] = "auto"
    val_chromosomes: list[str] = field(default_factory=lambda: list(HYENADNA_VAL_CHROMOSOMES))
    test_chromosomes: list[str] = field(default_factory=lambda: list(HYENADNA_TEST_CHROMOSOMES))
    val_fraction: float = 0.1   # used by the position split
    test_fraction: float = 0.1
    # UCSC/Ensembl names of unplaced, alternative and patch contigs and of mitochondria.
    exclude: str = r"(_random|_alt|_fix|_hap\d*|chrUn|^chrM$|^chrMT$|^MT$|MtDNA)"

    def validate(self, prefix: str) -> None:
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            if not 0 < v < 1:
                raise ConfigError(f"{prefix}.{key}: must be between 0 and 1, got {v}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"{prefix}: val_fraction + test_fraction must be < 1")
        overlap = {chromosome_key(c) for c in self.val_chromosomes} & \
            {chromosome_key(c) for c in self.test_chromosomes}
        if overlap:
            raise ConfigError(f"{prefix}: chromosomes in both val and test: {sorted(overlap)}")
        try:
            re.compile(self.exclude)
        except re.error as e:
            raise ConfigError(f"{prefix}.exclude: not a regular expression ({e})") from None


@dataclass
class SpeciesDataConfig(TypedConfig):
    """The ``data`` section of a species fine-tuning recipe."""

    _config_prefix: ClassVar[str] = "data"

    species: list[SpeciesEntry]
    split: SplitConfig = field(default_factory=SplitConfig)
    max_n_fraction: float = 0.1     # windows with more non-ACGT bases are redrawn
    rc_augment: bool = False        # reverse-complement half of the training windows
    steps_per_epoch: int = 1024     # the paper's epoch; sets the nominal epoch of the sampler
    val_samples: int = 256          # fixed validation windows (balanced over species)
    test_samples: int = 512         # fixed test windows, scored after training
    eval_seq_len: Optional[int] = None  # validation/test window length (default: last stage's)

    def validate(self, prefix: str) -> None:
        if len(self.species) < 2:
            raise ConfigError(f"{prefix}.species: needs at least two species, got {len(self.species)}")
        names = [s.name for s in self.species]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{prefix}.species: duplicate names {dup}")
        if not 0 <= self.max_n_fraction <= 1:
            raise ConfigError(f"{prefix}.max_n_fraction: must be in [0, 1], got {self.max_n_fraction}")
        for key in ("steps_per_epoch", "val_samples", "test_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1, got {getattr(self, key)}")
        if self.eval_seq_len is not None and self.eval_seq_len < 1:
            raise ConfigError(f"{prefix}.eval_seq_len: must be >= 1, got {self.eval_seq_len}")

    @property
    def class_names(self) -> list[str]:
        return [s.name for s in self.species]

    def missing(self) -> list[SpeciesEntry]:
        return [s for s in self.species if not Path(s.path).is_file()]


@dataclass(frozen=True)
class Interval:
    name: str   # record name in the FASTA
    start: int  # 0-based, end exclusive
    end: int

    def __len__(self) -> int:
        return self.end - self.start


# "chr1", "hg38_chr1", "CHROMOSOME_I", "chrom_X"; a trailing ":start-end" is ignored.
_CHROM_RE = re.compile(r"(?:^|[_|.])(?:chromosome|chrom|chr)[_\-]?([0-9A-Za-z]+)$", re.IGNORECASE)


def chromosome_key(name: str) -> str:
    """The comparable chromosome part of a record name: 'hg38_chr13:755-812' -> '13'."""
    base = name.split()[0].split(":")[0] if name.strip() else name
    m = _CHROM_RE.search(base)
    return (m.group(1) if m else base).lower()


def split_records(lengths: dict[str, int], cfg: SplitConfig) -> tuple[str, dict[str, list[Interval]]]:
    """(method used, {split: intervals}) for one genome given its record lengths."""
    exclude = re.compile(cfg.exclude)
    kept = {n: L for n, L in lengths.items() if L > 0 and not exclude.search(n)}
    if not kept:
        raise ValueError("no records left after excluding names matching " + repr(cfg.exclude))
    if cfg.by in ("auto", "chromosome"):
        val = {chromosome_key(c) for c in cfg.val_chromosomes}
        test = {chromosome_key(c) for c in cfg.test_chromosomes}
        out: dict[str, list[Interval]] = {s: [] for s in SPLITS}
        for n, L in kept.items():
            key = chromosome_key(n)
            split = "val" if key in val else "test" if key in test else "train"
            out[split].append(Interval(n, 0, L))
        if all(out.values()):
            return "chromosome", out
        if cfg.by == "chromosome":
            empty = [s for s in SPLITS if not out[s]]
            raise ValueError(
                f"split by chromosome leaves {'/'.join(empty)} empty (records: "
                f"{', '.join(list(kept)[:8])}{'...' if len(kept) > 8 else ''}); "
                "use split.by: position or auto, or list chromosomes that exist")
    out = {s: [] for s in SPLITS}
    train_frac = 1 - cfg.val_fraction - cfg.test_fraction
    for n, L in kept.items():
        a = round(L * train_frac)
        b = round(L * (1 - cfg.test_fraction))
        out["train"].append(Interval(n, 0, a))
        out["val"].append(Interval(n, a, b))
        out["test"].append(Interval(n, b, L))
    return "position", out


def missing_species_message(missing: Sequence[SpeciesEntry]) -> str:
    """One line naming the missing genomes and, where the recipe gives URLs, the command that
    downloads them."""
    what = ", ".join(f"{sp.name}" + (f" ({sp.assembly})" if sp.assembly else "") + f" {sp.path}"
                     for sp in missing)
    with_url = [sp for sp in missing if sp.url]
    if not with_url:
        return f"missing genome files: {what}; point data.species[].path at existing FASTA files"
    folders = sorted({str(sp.path.parent) for sp in with_url if str(sp.path.parent) not in ("", ".")})
    steps = ([f"mkdir -p {' '.join(folders)}"] if folders else []) + \
        [f"curl -L -o {sp.path} {sp.url}" for sp in with_url]
    return f"missing genome files: {what}; get them with: {' && '.join(steps)}"


class SpeciesGenome:
    """One species: its indexed FASTA and its train/val/test intervals."""

    def __init__(self, entry: SpeciesEntry, split: SplitConfig, label: int):
        self.entry, self.label = entry, label
        self.fasta = IndexedFasta(entry.path)
        try:
            self.split_method, self.intervals = split_records(self.fasta.lengths, split)
        except ValueError as e:
            raise ConfigError(f"data.species {entry.name!r} ({entry.path}): {e}") from None
        log.info("species %s: %d records, split by %s", entry.name, len(self.fasta.lengths),
                 self.split_method)

    @property
    def name(self) -> str:
        return self.entry.name

    def eligible(self, split: str, window: int) -> list[Interval]:
        return [iv for iv in self.intervals[split] if len(iv) >= window]

    def longest(self, split: str) -> int:
        return max((len(iv) for iv in self.intervals[split]), default=0)


def _non_acgt_fraction(s: str) -> float:
    if not s:
        return 1.0
    acgt = s.count("A") + s.count("C") + s.count("G") + s.count("T")
    return 1.0 - acgt / len(s)


class _WindowSampler:
    """Draws windows of one split: species -> record -> start, redrawing N-rich windows."""

    max_draws = 32  # windows tried before taking the one with the fewest N

    def __init__(self, genomes: Sequence[SpeciesGenome], split: str, max_n_fraction: float):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not genomes:
            raise ValueError("no species given")
        self.genomes, self.split, self.max_n_fraction = list(genomes), split, float(max_n_fraction)
        self._eligible: dict[int, list[list[Interval]]] = {}

    def eligible(self, window: int) -> list[list[Interval]]:
        """Per species, the intervals that hold a whole window (checked once per length)."""
        if window not in self._eligible:
            table = []
            for g in self.genomes:
                ivs = g.eligible(self.split, window)
                if not ivs:
                    raise ConfigError(
                        f"data.species {g.name!r}: no {self.split} sequence of at least {window} "
                        f"bases (longest is {g.longest(self.split)}); lower the sequence length "
                        "or give a bigger genome")
                table.append(ivs)
            self._eligible[window] = table
        return self._eligible[window]

    def draw(self, species: int, window: int, rng: np.random.Generator) -> tuple[str, str, int]:
        """(sequence, record name, start) of one window of ``species``."""
        genome, ivs = self.genomes[species], self.eligible(window)[species]
        best = None
        for _ in range(self.max_draws):
            iv = ivs[int(rng.integers(len(ivs)))]
            start = int(rng.integers(iv.start, iv.end - window + 1))
            seq = genome.fasta.fetch(iv.name, start, start + window)
            frac = _non_acgt_fraction(seq)
            if best is None or frac < best[0]:
                best = (frac, seq, iv.name, start)
            if frac <= self.max_n_fraction:
                break
        return best[1], best[2], best[3]


class SpeciesSource:
    """Training windows as a staged source of the training engine (``size``/``get``): any
    length, each sample drawn from the ``rng`` the engine derives from the run seed and the
    sample's position, so runs are reproducible and resumable. ``size`` is a nominal epoch
    (windows are drawn with replacement from an effectively unlimited pool).
    """

    def __init__(self, genomes: Sequence[SpeciesGenome], tokenizer, split: str = "train",
                 max_n_fraction: float = 0.1, rc_augment: bool = False,
                 samples_per_epoch: int = 65536):
        self.sampler = _WindowSampler(genomes, split, max_n_fraction)
        self.tokenizer, self.rc_augment = tokenizer, rc_augment
        self.samples_per_epoch = int(samples_per_epoch)

    def size(self, seq_len: int) -> int:
        self.sampler.eligible(seq_len)  # a too-long stage fails here, before training starts
        return self.samples_per_epoch

    def get(self, seq_len: int, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        k = int(rng.integers(len(self.sampler.genomes)))
        seq, _, _ = self.sampler.draw(k, seq_len, rng)
        # On the string, not the ids, so it works the same for every tokenizer (k-mers too).
        if self.rc_augment and rng.random() < 0.5:
            seq = reverse_complement(seq)
        return {"input_ids": self.tokenizer.encode(seq),
                "labels": torch.tensor(self.sampler.genomes[k].label, dtype=torch.long)}


class SpeciesWindowDataset(Dataset):
    """A fixed, balanced set of ``num_samples`` windows of one split (validation, test): item i
    is always the same window of species ``i % n_species``; items are
    ``{"input_ids": LongTensor (L,), "labels": LongTensor ()}``."""

    def __init__(self, genomes: Sequence[SpeciesGenome], split: str, window: int,
                 num_samples: int, tokenizer, max_n_fraction: float = 0.1, seed: int = 0):
        if window < 1 or num_samples < 1:
            raise ValueError(f"window and num_samples must be >= 1, got {window}, {num_samples}")
        self.sampler = _WindowSampler(genomes, split, max_n_fraction)
        self.sampler.eligible(window)
        self.window, self.num_samples = int(window), int(num_samples)
        self.tokenizer, self.seed = tokenizer, int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> tuple[str, int, str, int]:
        """(sequence, label, record name, start) of item ``index``."""
        rng = np.random.default_rng([self.seed, SPLITS.index(self.sampler.split), index])
        k = index % len(self.sampler.genomes)
        seq, name, start = self.sampler.draw(k, self.window, rng)
        return seq, self.sampler.genomes[k].label, name, start

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        seq, label, _, _ = self.sample(index)
        return {"input_ids": self.tokenizer.encode(seq),
                "labels": torch.tensor(label, dtype=torch.long)}
