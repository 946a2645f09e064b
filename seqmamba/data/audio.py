"""Audio folders as training data: files -> 16 kHz mono mu-law codes -> file-level splits -> windows.

``AudioFolder.load(root)`` reads every WAV / FLAC / OGG file under ``root`` (recursively, in sorted
order) with ``seqmamba.audio_io.load_audio`` (mono, resampled to the target rate), encodes it with
the mu-law tokenizer, and keeps the codes in memory (one byte per sample for 8 bits: YouTubeMix's
4 hours are 230 MB). Files that cannot be used are reported and skipped, never fatal on their
own: *corrupt* (soundfile cannot decode them), *empty* (no samples) and *silent* (peak below
-80 dBFS). Only a folder with no usable file is an error.

Splits are by file, so no recording leaks between them: the usable files, sorted by path, are
shuffled with ``seed``; 88 % train, the rest halved into valid and test (SaShiMi's YouTubeMix
proportions). Windows are fixed-length, non-overlapping runs of codes inside one file; training
windows get a random shift within the file's leftover samples (a file shorter than the window
gives one short window, padded by the collate function and masked in the loss).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

__all__ = [
    "AUDIO_EXTENSIONS", "AudioDataError", "AudioFolder", "AudioSplit", "SkippedFile",
    "split_files", "AudioLMSource", "AudioWindowDataset", "KNOWN_DATASETS", "missing_dataset_message",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
SILENCE_PEAK = 1e-4  # -80 dBFS: below this a file is treated as digital silence
TRAIN_FRACTION = 0.88

# Public audio sets a recipe may name; when the folder is missing the user gets the command.
KNOWN_DATASETS: dict[str, dict[str, str]] = {
    "youtubemix": {
        "description": "YouTubeMix: 4 hours of solo piano, 241 one-minute 16 kHz WAV files "
                       "(SaShiMi, Goel et al. 2022)",
        "get": "huggingface-cli download krandiash/youtubemix youtube_mix.zip --repo-type dataset "
               "--local-dir data && unzip data/youtube_mix.zip -d data/youtube_mix",
    },
    "piano": {
        "description": "the offline piano corpus rendered from music21's bundled scores",
        "get": "seqmamba data piano --out data/piano",
    },
}


class AudioDataError(ValueError):
    """The audio data cannot be used (missing folder, no usable file...); one line for the user."""


def missing_dataset_message(root: Path, dataset: Optional[str]) -> str:
    info = KNOWN_DATASETS.get(dataset or "")
    if info is None:
        return f"audio folder {root} does not exist"
    return f"audio folder {root} does not exist: get {info['description']} with: {info['get']}"


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str  # "corrupt" | "empty" | "silent"
    detail: str


@dataclass
class AudioFolder:
    """The usable files of a folder, as mu-law codes, plus what was skipped and why."""

    root: Path
    sample_rate: int
    bits: int
    names: list[str]              # paths relative to root, sorted
    codes: list[np.ndarray]       # per file, uint8 (bits <= 8) or uint16
    skipped: list[SkippedFile] = field(default_factory=list)

    @classmethod
    def load(cls, root: str | os.PathLike, sample_rate: int = 16000, bits: int = 8,
             dataset: Optional[str] = None,
             progress: Optional[Callable[[int, int, str], None]] = None) -> "AudioFolder":
        from seqmamba.audio_io import AudioError, load_audio
        from seqmamba.tokenizers import MuLawTokenizer

        root = Path(root).expanduser()
        if not root.exists():
            raise AudioDataError(missing_dataset_message(root, dataset))
        if not root.is_dir():
            raise AudioDataError(f"{root} is not a folder (expected a folder of audio files)")
        files = sorted(p for p in root.rglob("*")
                       if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise AudioDataError(f"{root} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"
                                 + ("" if dataset not in KNOWN_DATASETS
                                    else f"; get them with: {KNOWN_DATASETS[dataset]['get']}"))
        tok = MuLawTokenizer(bits)
        dtype = np.uint8 if bits <= 8 else np.uint16
        names, codes, skipped = [], [], []
        for i, path in enumerate(files):
            rel = str(path.relative_to(root))
            if progress is not None:
                progress(i, len(files), rel)
            if path.stat().st_size == 0:
                skipped.append(SkippedFile(rel, "empty", "0 bytes"))
                continue
            try:
                wave, _ = load_audio(path, sample_rate)
            except AudioError as e:
                reason = "empty" if "no audio samples" in str(e) else "corrupt"
                skipped.append(SkippedFile(rel, reason, str(e)))
                continue
            if wave.numel() < 2:
                skipped.append(SkippedFile(rel, "empty", f"{wave.numel()} sample"))
                continue
            peak = float(wave.abs().max())
            if peak < SILENCE_PEAK:
                skipped.append(SkippedFile(rel, "silent", f"peak {peak:.1e}"))
                continue
            names.append(rel)
            codes.append(tok.encode(wave).numpy().astype(dtype))
        if not names:
            raise AudioDataError(f"{root}: no usable audio file ({summarize_skipped(skipped)})")
        return cls(root, sample_rate, bits, names, codes, skipped)

    @property
    def total_samples(self) -> int:
        return int(sum(len(c) for c in self.codes))

    def report(self) -> str:
        hours = self.total_samples / self.sample_rate / 3600
        line = f"{self.root}: {len(self.names)} audio files used ({hours:.2f} h at {self.sample_rate} Hz)"
        if self.skipped:
            line += f"; skipped {summarize_skipped(self.skipped)}"
        return line

    def splits(self, seed: int = 0) -> dict[str, "AudioSplit"]:
        index = split_files(len(self.names), seed)
        return {name: AudioSplit(name, [self.names[i] for i in idx], [self.codes[i] for i in idx],
                                 self.sample_rate)
                for name, idx in index.items()}


def summarize_skipped(skipped: Sequence[SkippedFile]) -> str:
    if not skipped:
        return "nothing skipped"
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) + \
        " (" + "; ".join(f"{s.path}: {s.detail}" for s in skipped[:3]) + \
        (", ..." if len(skipped) > 3 else "") + ")"


def split_files(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """File indices of train / valid / test: a seeded shuffle, then 88 % / 6 % / 6 %.

    Valid and test get at least one file each, so at least 3 files are needed."""
    if n < 3:
        raise AudioDataError(f"need at least 3 usable audio files for a train/valid/test split "
                             f"by file, found {n}")
    order = np.random.default_rng([int(seed), 0xA0D10]).permutation(n)
    n_train = min(max(int(round(TRAIN_FRACTION * n)), 1), n - 2)
    n_valid = max((n - n_train) // 2, 1)
    return {"train": np.sort(order[:n_train]), "valid": np.sort(order[n_train:n_train + n_valid]),
            "test": np.sort(order[n_train + n_valid:])}


@dataclass
class AudioSplit:
    name: str
    names: list[str]
    codes: list[np.ndarray]
    sample_rate: int

    @property
    def total_samples(self) -> int:
        return int(sum(len(c) for c in self.codes))

    def windows(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(file index, start) of the non-overlapping windows of ``seq_len`` samples, in file
        order; a file shorter than ``seq_len`` gives one window (all of it)."""
        if seq_len < 2:
            raise AudioDataError(f"window length must be >= 2 samples, got {seq_len}")
        counts = np.array([max(len(c) // seq_len, 1) for c in self.codes], dtype=np.int64)
        files = np.repeat(np.arange(len(self.codes)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return files, within * seq_len

    def window(self, file: int, start: int, seq_len: int) -> torch.Tensor:
        return torch.from_numpy(self.codes[file][start:start + seq_len].astype(np.int64))


class AudioLMSource:
    """Training windows of a split at any length (the engine's staged-source protocol)."""

    def __init__(self, split: AudioSplit, random_shift: bool = True):
        self.split, self.random_shift = split, random_shift
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _table(self, seq_len: int):
        if seq_len not in self._tables:
            self._tables[seq_len] = self.split.windows(seq_len)
        return self._tables[seq_len]

    def size(self, seq_len: int) -> int:
        return len(self._table(seq_len)[0])

    def get(self, seq_len: int, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        files, starts = self._table(seq_len)
        f = int(files[index])
        start = int(starts[index])
        if self.random_shift:
            n = len(self.split.codes[f])
            slack = n - (n // seq_len) * seq_len if n >= seq_len else 0
            if slack:
                start += int(rng.integers(0, slack + 1))
        return {"input_ids": self.split.window(f, start, seq_len)}


class AudioWindowDataset(torch.utils.data.Dataset):
    """Fixed windows of a split in order, without shifts: validation, test and evaluation."""

    def __init__(self, split: AudioSplit, seq_len: int, max_windows: Optional[int] = None):
        files, starts = split.windows(seq_len)
        if max_windows is not None and len(files) > max_windows:
            keep = np.unique(np.linspace(0, len(files) - 1, max_windows).round().astype(np.int64))
            files, starts = files[keep], starts[keep]
        self.split, self.seq_len, self.files, self.starts = split, seq_len, files, starts

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.split.window(int(self.files[i]), int(self.starts[i]), self.seq_len)}
