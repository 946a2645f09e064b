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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..config import ConfigError, TypedConfig
from ..training.config import dump_recipe
from ..training.recipe import TrainingRecipe, build_named_recipe

__all__ = [
    "AUDIO_EXTENSIONS", "AudioDataError", "AudioFolder", "AudioSplit", "SkippedFile",
    "split_files", "AudioLMSource", "AudioWindowDataset", "KNOWN_DATASETS", "missing_dataset_message",
    "AudioDataConfig", "AudioEvalConfig", "AudioGenerateConfig", "AudioPretrainRecipe",
    "is_audio_recipe", "build_audio_recipe", "build_audio_pretraining", "audio_pretrain",
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
                skipped.append(SkippedFile(rel, reason, str(e).replace(f"{path}: ", "")))
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


# ---- plugging audio into the training engine ---------------------------------------------------
# `seqmamba pretrain RECIPE` sends recipes whose data section names an `audio_dir` here: the
# model, trainer, optim and schedule sections are the shared ones; only the data differs, and
# after training the run is evaluated (bits/sample, baselines) and, with a `generate` section,
# sample clips are written.


DEFAULT_AUDIO_TOKENIZER = {"name": "mulaw", "bits": 8}


@dataclass
class AudioDataConfig(TypedConfig):
    _config_prefix = "data"

    audio_dir: str                     # folder of WAV/FLAC/OGG files (searched recursively)
    dataset: Optional[str] = None      # a KNOWN_DATASETS name: how to get the files when missing
    sample_rate: int = 16000
    split_seed: int = 0                # seed of the file-level train/valid/test split
    random_shift: bool = True          # shift training windows within each file's leftover
    eval_seq_len: Optional[int] = None  # validation window length (default: the last stage's)
    max_valid_windows: Optional[int] = 64

    def validate(self, prefix: str) -> None:
        if self.sample_rate < 1000:
            raise ConfigError(f"{prefix}.sample_rate: must be >= 1000, got {self.sample_rate}")
        if self.eval_seq_len is not None and self.eval_seq_len < 2:
            raise ConfigError(f"{prefix}.eval_seq_len: must be >= 2, got {self.eval_seq_len}")
        if self.max_valid_windows is not None and self.max_valid_windows < 1:
            raise ConfigError(f"{prefix}.max_valid_windows: must be >= 1 or null")
        if self.dataset is not None and self.dataset not in KNOWN_DATASETS:
            raise ConfigError(f"{prefix}.dataset: one of {', '.join(KNOWN_DATASETS)} or null, "
                              f"got {self.dataset!r}")


@dataclass
class AudioEvalConfig(TypedConfig):
    """Scoring after training: bits/sample on a held-out split at several lengths."""

    _config_prefix = "eval"

    enabled: bool = True
    split: str = "test"
    seq_lens: Optional[list[int]] = None  # default: the training length and 4x it
    max_windows: int = 32

    def validate(self, prefix: str) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"{prefix}.split: valid or test, got {self.split!r}")
        for i, n in enumerate(self.seq_lens or []):
            if n < 2:
                raise ConfigError(f"{prefix}.seq_lens[{i}]: must be >= 2, got {n}")
        if self.max_windows < 1:
            raise ConfigError(f"{prefix}.max_windows: must be >= 1, got {self.max_windows}")


@dataclass
class AudioGenerateConfig(TypedConfig):
    """Clips sampled from the exported model after training (run folder ``samples/``)."""

    _config_prefix = "generate"

    num: int = 1
    seconds: float = 1.0
    temperature: float = 1.0
    top_p: Optional[float] = None
    prompt_seconds: Optional[float] = None  # continue the start of a held-out test file
    batch_size: int = 8
    seed: int = 0

    def validate(self, prefix: str) -> None:
        if self.num < 1 or self.batch_size < 1:
            raise ConfigError(f"{prefix}.num and batch_size: must be >= 1")
        if not self.seconds > 0:
            raise ConfigError(f"{prefix}.seconds: must be > 0, got {self.seconds}")
        if self.temperature < 0:
            raise ConfigError(f"{prefix}.temperature: must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"{prefix}.top_p: must be in (0, 1], got {self.top_p}")
        if self.prompt_seconds is not None and not self.prompt_seconds > 0:
            raise ConfigError(f"{prefix}.prompt_seconds: must be > 0, got {self.prompt_seconds}")


@dataclass(kw_only=True)
class AudioPretrainRecipe(TrainingRecipe):
    data: AudioDataConfig
    eval: AudioEvalConfig = field(default_factory=AudioEvalConfig)
    generate: Optional[AudioGenerateConfig] = None
    name: str = "audio"

    def validate(self, prefix: str) -> None:
        if self.model.head != "lm":
            raise ConfigError(f"model.head: audio pretraining trains a language model, got "
                              f"{self.model.head!r}")
        tok = (self.model.tokenizer or {}).get("name")
        if tok != "mulaw":
            raise ConfigError(f"model.tokenizer: audio data needs the mulaw tokenizer, got {tok!r}")
        super().validate(prefix)


def is_audio_recipe(data: dict) -> bool:
    """Whether a recipe dict (before checking) describes audio training."""
    section = data.get("data") if isinstance(data, dict) else None
    return isinstance(section, dict) and "audio_dir" in section


def build_audio_recipe(data: dict, path=None) -> AudioPretrainRecipe:
    """A checked AudioPretrainRecipe from a merged recipe dict (mu-law tokenizer by default)."""
    model = data.get("model")
    if isinstance(model, dict):
        model.setdefault("tokenizer", dict(DEFAULT_AUDIO_TOKENIZER))
    return build_named_recipe(AudioPretrainRecipe, data, path)


def build_audio_pretraining(recipe: AudioPretrainRecipe, echo: Callable[[str], None] = print):
    """(module, datamodule, folder, plan) for an audio recipe; checks the data against the plan."""
    import lightning as L

    from ..heads import build_model
    from ..tokenizers import tokenizer_from_config
    from ..training.datamodule import StagedDataModule
    from ..training.engine import world_size
    from ..training.module import SeqMambaModule
    from ..training.objectives import LMObjective
    from ..training.plan import StagePlan

    t, data = recipe.trainer, recipe.data
    plan = StagePlan(recipe.schedule.stages, t.max_steps, t.tokens_per_step, t.micro_batch_tokens,
                     world_size(t))
    tokenizer = tokenizer_from_config(recipe.model.tokenizer)
    folder = AudioFolder.load(data.audio_dir, data.sample_rate, tokenizer.bits, data.dataset)
    splits = folder.splits(data.split_seed)
    source = AudioLMSource(splits["train"], data.random_shift)
    eval_len = data.eval_seq_len or plan.final_seq_len
    valid = AudioWindowDataset(splits["valid"], eval_len, data.max_valid_windows)
    micro_tokens = plan.tokens_per_step // plan.world_size // plan.accumulate
    valid_batch = max(micro_tokens // eval_len, 1)

    L.seed_everything(recipe.seed, verbose=False)
    model = build_model(recipe.model, tokenizer=tokenizer)
    module = SeqMambaModule(model, LMObjective(tokenizer.pad_id), recipe.optim, recipe.schedule, plan)
    datamodule = StagedDataModule(source, plan, recipe.seed, tokenizer.pad_id, valid, valid_batch,
                                  t.num_workers)
    return module, datamodule, folder, splits


def audio_pretrain(recipe: AudioPretrainRecipe, resume_dir=None, callbacks=(),
                   echo: Callable[[str], None] = print):
    """Train (or resume) an audio LM, then on rank 0 score the held-out split
    (``audio_eval.json``) and, with a ``generate`` section, write clips to ``samples/``."""
    import json

    from ..training.engine import fit, make_run_dir

    module, datamodule, folder, splits = build_audio_pretraining(recipe, echo)
    run_dir = Path(resume_dir) if resume_dir is not None else \
        make_run_dir(recipe.trainer.runs_dir, recipe.name)
    is_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and \
        int(os.environ.get("NODE_RANK", "0")) == 0
    plan = module.plan
    if is_zero:
        dump_recipe(recipe, run_dir / "recipe.yaml")
        m = recipe.model
        echo(f"{'resuming' if resume_dir is not None else 'run folder'}: {run_dir}")
        echo(f"model: {module.model.num_parameters():,} parameters ({m.backbone} backbone, "
             f"d_model {m.d_model}, {m.n_layer} Mamba blocks"
             + (f", pools {m.unet.get('pool')}" if m.backbone == "unet" and m.unet else "") + ")")
        echo(folder.report())
        echo(f"split by file (seed {recipe.data.split_seed}): "
             + ", ".join(f"{k} {len(s.names)} files / {s.total_samples / folder.sample_rate / 60:.1f} min"
                         for k, s in splits.items()))
        echo(f"{datamodule.train_source.size(plan.stages[0].seq_len):,} training windows at "
             f"{plan.stages[0].seq_len}; {len(datamodule.valid)} validation windows")
        for line in plan.describe():
            echo(line)
    result = fit(module, datamodule, recipe.trainer, run_dir, resume=resume_dir is not None,
                 callbacks=callbacks, echo=echo)
    if not is_zero:
        return result

    from ..tasks.audio_eval import (evaluate_audio_model, format_report, format_samples,
                                    sample_statistics)

    model = module.model.eval()
    report: dict = {}
    if recipe.eval.enabled:
        lens = recipe.eval.seq_lens or [plan.final_seq_len, 4 * plan.final_seq_len]
        report = evaluate_audio_model(model, recipe.data.audio_dir, lens, recipe.eval.split,
                                      recipe.data.split_seed, folder.sample_rate,
                                      recipe.eval.max_windows, folder=folder)
        echo(format_report(report))
    if recipe.generate is not None:
        from ..tasks.generate import run_generate

        g = recipe.generate
        prompt = None
        if g.prompt_seconds is not None:
            test = splits["test"]
            n = int(round(g.prompt_seconds * folder.sample_rate))
            codes = max(test.codes, key=len)
            if len(codes) < n:
                raise ConfigError(f"generate.prompt_seconds: no test file is {g.prompt_seconds:g} s long")
            from ..audio_io import save_audio
            prompt = str(run_dir / "prompt.wav")
            save_audio(prompt, model.tokenizer.decode(torch.from_numpy(codes[:n].astype(np.int64))),
                       folder.sample_rate, subtype="PCM_16")
        samples = run_dir / "samples"
        run_generate(str(result.export), str(samples), seconds=g.seconds, num=g.num,
                     temperature=g.temperature, top_p=g.top_p, prompt=prompt,
                     batch_size=g.batch_size, seed=g.seed, device=str(model.device),
                     sample_rate=folder.sample_rate, overwrite=True,
                     progress=sys.stderr.isatty(), echo=echo)
        if report:
            report["samples"] = sample_statistics(str(samples), splits[recipe.eval.split],
                                                  folder.sample_rate, folder.bits)
            echo(format_samples(report["samples"]))
    if report:
        (run_dir / "audio_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return result
