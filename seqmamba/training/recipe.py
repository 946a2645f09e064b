"""The pretraining recipe: model + genome data + trainer + optim + schedule, as one typed tree.

    name: hg38
    seed: 0
    model:    {d_model: 128, n_layer: 12, tokenizer: {name: dna_char}}   # vocab_size from tokenizer
    data:     {fasta: data/hg38/hg38.ml.fa, bed: data/hg38/sequences_human.bed}
    trainer:  {max_steps: 10000, tokens_per_step: 1048576, micro_batch_tokens: 65536}
    optim:    {lr: 8.0e-3}
    schedule: {warmup_steps: 500, stages: [{seq_len: 1024}]}

Relative paths are taken from the current directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from ..config import ConfigError, ModelConfig, TypedConfig
from .config import OptimConfig, ScheduleConfig, TrainerConfig, build_recipe, load_recipe_dict

__all__ = ["GenomeDataConfig", "PretrainRecipe", "load_pretrain_recipe", "MissingDataError",
           "fill_tokenizer", "check_run_name", "build_named_recipe"]

DEFAULT_TOKENIZER = {"name": "dna_char"}


class MissingDataError(FileNotFoundError):
    """A data file the recipe names does not exist; the message says how to get it."""


@dataclass
class GenomeDataConfig(TypedConfig):
    _config_prefix: ClassVar[str] = "data"

    fasta: str
    bed: Optional[str] = None           # Basenji/Enformer-style BED: chrom start end split
    train_split: str = "train"
    valid_split: Optional[str] = "valid"  # null: no validation during training
    rc_prob: float = 0.5                # reverse-complement augmentation of training windows
    exclude_n: bool = False             # N targets do not count in the loss
    eval_seq_len: Optional[int] = None  # validation window length (default: the last stage's)
    max_valid_windows: Optional[int] = 256
    get_command: Optional[str] = None   # how to download the files, shown when they are missing

    def validate(self, prefix: str) -> None:
        if not 0.0 <= self.rc_prob <= 1.0:
            raise ConfigError(f"{prefix}.rc_prob: must be in [0, 1], got {self.rc_prob}")
        if self.eval_seq_len is not None and self.eval_seq_len < 2:
            raise ConfigError(f"{prefix}.eval_seq_len: must be >= 2, got {self.eval_seq_len}")
        if self.max_valid_windows is not None and self.max_valid_windows < 1:
            raise ConfigError(f"{prefix}.max_valid_windows: must be >= 1 or null, "
                              f"got {self.max_valid_windows}")

    def check_files(self) -> None:
        """Raise MissingDataError naming the first missing file and the command that gets it."""
        for key in ("fasta", "bed"):
            value = getattr(self, key)
            if value is None or Path(value).is_file():
                continue
            where = f" (relative to {os.getcwd()})" if not Path(value).is_absolute() else ""
            hint = (f"; get it with: {self.get_command}" if self.get_command else
                    "; point data.%s at an existing file" % key)
            raise MissingDataError(f"data.{key}: {value} not found{where}{hint}")


@dataclass(kw_only=True)
class TrainingRecipe(TypedConfig):
    """What every training recipe holds (genome pretraining, species fine-tuning, audio); each
    adds its ``data`` section and its extras, and checks that the model has its head."""
    model: ModelConfig
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    name: str = "run"  # the run folder's prefix
    seed: int = 0

    def validate(self, prefix: str) -> None:
        check_run_name(self.name)


@dataclass(kw_only=True)
class PretrainRecipe(TrainingRecipe):
    data: GenomeDataConfig
    name: str = "pretrain"

    def validate(self, prefix: str) -> None:
        if self.model.head != "lm":
            raise ConfigError(f"model.head: pretraining trains a language model, got {self.model.head!r}")
        super().validate(prefix)


def check_run_name(name: str) -> None:
    """Every recipe's ``name`` prefixes its run folder, so it must not be empty or hold a path."""
    if not name or any(c in name for c in "/\\"):
        raise ConfigError(f"name: must be a plain folder-name prefix, got {name!r}")


def fill_tokenizer(data: dict) -> None:
    """model.tokenizer defaults to dna_char, and model.vocab_size comes from the tokenizer."""
    from ..tokenizers import TokenizerError, tokenizer_from_config

    model = data.get("model")
    if not isinstance(model, dict):
        return  # from_dict reports the missing/ill-typed section
    tok_cfg = model.get("tokenizer") or dict(DEFAULT_TOKENIZER)
    try:
        tokenizer = tokenizer_from_config(tok_cfg)
    except TokenizerError as e:
        raise ConfigError(f"model.tokenizer: {e}") from None
    model["tokenizer"] = tokenizer.to_config()
    vocab = model.get("vocab_size")
    if vocab is None:
        model["vocab_size"] = tokenizer.vocab_size
    elif vocab != tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size: {vocab} does not match the {tokenizer.name} "
                          f"tokenizer's {tokenizer.vocab_size} (leave it out to use the tokenizer's)")


def build_named_recipe(cls, data: dict, path: str | os.PathLike | None):
    """The checked recipe ``cls`` from a merged recipe dict, as every recipe loader finishes:
    the run name defaults to the recipe file's stem, then the tokenizer fills the model section."""
    if path is not None and "name" not in data:
        data["name"] = Path(path).stem
    fill_tokenizer(data)
    return build_recipe(cls, data)


def load_pretrain_recipe(path: str | os.PathLike | None, overrides: list[str] = (),
                         base: dict | None = None) -> PretrainRecipe:
    """Read a recipe YAML (or ``base`` dict), apply ``key=value`` overrides, check it all."""
    data = load_recipe_dict(path, overrides, base)
    from ..data.audio import build_audio_recipe, is_audio_recipe
    if is_audio_recipe(data):  # data.audio_dir: an audio recipe (seqmamba.data.audio)
        return build_audio_recipe(data, path)
    return build_named_recipe(PretrainRecipe, data, path)
