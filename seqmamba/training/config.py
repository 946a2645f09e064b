"""Recipe sections shared by every training recipe (trainer, optim, schedule) and the YAML loader.

A recipe is a YAML file whose sections map onto typed dataclasses checked by
``seqmamba.config.from_dict`` (one schema mechanism for models and recipes). ``key=value``
overrides from the command line are merged with OmegaConf's dotlist parser before the check, so
an unknown key or a wrong type is one ``ConfigError`` line naming the key either way.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from ..config import ConfigError, TypedConfig, from_dict

__all__ = ["Stage", "LengthWarmup", "TrainerConfig", "OptimConfig", "ScheduleConfig", "load_recipe_dict",
           "build_recipe", "dump_recipe"]


@dataclass
class Stage(TypedConfig):
    """One phase of sequence-length warmup: ``steps`` optimizer steps at ``seq_len`` tokens per
    sequence and ``batch_size`` sequences per step (derived from trainer.tokens_per_step when
    omitted). The last stage's ``steps`` may be left out: it runs to trainer.max_steps."""

    _config_prefix: ClassVar[str] = "schedule.stages[]"

    seq_len: int
    steps: Optional[int] = None
    batch_size: Optional[int] = None

    def validate(self, prefix: str) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"{prefix}.seq_len: must be >= 2, got {self.seq_len}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{prefix}.steps: must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class TrainerConfig(TypedConfig):
    _config_prefix: ClassVar[str] = "trainer"

    max_steps: int = 1000
    # Global batch in tokens per optimizer step (all devices, all accumulation micro-batches).
    tokens_per_step: Optional[int] = None
    # Tokens one device processes per forward pass; gradient accumulation makes up the rest.
    # null = the whole per-device batch at once.
    micro_batch_tokens: Optional[int] = None
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 on GPU
    grad_clip: float = 1.0
    log_every: int = 10        # steps between CSV rows
    val_every: int = 500       # steps between validations (0 = only at the end)
    ckpt_every: int = 1000     # steps between checkpoints + model export (0 = only at the end)
    keep_checkpoints: int = 3  # newest step checkpoints kept (last.ckpt is always kept)
    runs_dir: str = "runs"
    num_workers: int = 2       # DataLoader worker processes
    progress_bar: bool = True

    def validate(self, prefix: str) -> None:
        positive = ["max_steps", "devices", "num_nodes", "log_every", "keep_checkpoints"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("val_every", "ckpt_every", "num_workers"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("tokens_per_step", "micro_batch_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{prefix}.{key}: must be >= 1 or null, got {value}")
        if self.grad_clip < 0:
            raise ConfigError(f"{prefix}.grad_clip: must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class OptimConfig(TypedConfig):
    """AdamW. Weight decay applies to weight matrices only: norms and biases (1-D) and the
    parameters marked ``_no_weight_decay`` (the SSM's A_log and D) are not decayed."""

    _config_prefix: ClassVar[str] = "optim"

    lr: float = 8e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1

    def validate(self, prefix: str) -> None:
        if not self.lr > 0:
            raise ConfigError(f"{prefix}.lr: must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{prefix}.betas: each must be in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"{prefix}.weight_decay: must be >= 0, got {self.weight_decay}")


@dataclass
class LengthWarmup(TypedConfig):
    """Sequence-length warmup written compactly: start at ``start`` tokens and double every
    ``stage_steps`` steps until ``target``, which then runs to the end (batch halves as length
    doubles, so tokens per step stay constant)."""

    _config_prefix: ClassVar[str] = "schedule.length_warmup"

    target: int
    start: int = 1024
    stage_steps: int = 500

    def validate(self, prefix: str) -> None:
        if self.start < 2:
            raise ConfigError(f"{prefix}.start: must be >= 2, got {self.start}")
        ratio = self.target // self.start
        if self.target < self.start or self.target % self.start or ratio & (ratio - 1):
            raise ConfigError(f"{prefix}.target: must be start x a power of two "
                              f"(start {self.start}), got {self.target}")
        if self.stage_steps < 1:
            raise ConfigError(f"{prefix}.stage_steps: must be >= 1, got {self.stage_steps}")

    def stages(self) -> list[Stage]:
        out, length = [], self.start
        while length < self.target:
            out.append(Stage(seq_len=length, steps=self.stage_steps))
            length *= 2
        return out + [Stage(seq_len=self.target)]


@dataclass
class ScheduleConfig(TypedConfig):
    """Learning rate: linear warmup to optim.lr, then cosine decay to min_lr_ratio * lr at
    trainer.max_steps (or constant). Sequence length: the list of stages, or ``length_warmup``
    (which, when set, replaces ``stages``)."""

    _config_prefix: ClassVar[str] = "schedule"

    warmup_steps: int = 0
    decay: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    stages: list[Stage] = field(default_factory=lambda: [Stage(seq_len=1024)])
    length_warmup: Optional[LengthWarmup] = None

    def validate(self, prefix: str) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"{prefix}.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{prefix}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.length_warmup is not None:
            self.stages = self.length_warmup.stages()
        if not self.stages:
            raise ConfigError(f"{prefix}.stages: needs at least one stage")
        for i, stage in enumerate(self.stages[:-1]):
            if stage.steps is None:
                raise ConfigError(f"{prefix}.stages[{i}].steps: required for every stage but the last")


def _parse_overrides(overrides: list[str]):
    from omegaconf import OmegaConf

    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value (e.g. trainer.max_steps=100)")
    for item in overrides:  # one at a time, so the error names the bad override
        try:
            OmegaConf.from_dotlist([item])
        except Exception as e:  # omegaconf's grammar errors and YAML errors (multi-line)
            raise ConfigError(f"override {item!r}: {_first_line(e)}") from None
    return OmegaConf.from_dotlist(list(overrides))


def _first_line(err: Exception) -> str:
    """One line of a parser error: a YAML error's ``problem`` ("did not find expected ','"),
    else the first line of the message."""
    problem = getattr(err, "problem", None)
    if problem:
        return problem
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_recipe_dict(path: str | os.PathLike | None, overrides: list[str] = (),
                     base: dict | None = None) -> dict:
    """The recipe at ``path`` (or ``base``) with ``key=value`` overrides merged, as a plain dict
    (interpolations resolved). YAML errors become ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, expected a recipe YAML file")
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found")
        try:
            cfg = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends: one line, with the line number
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ConfigError(f"{path}: not a valid YAML recipe ({where}{_first_line(e)})") from None
        if not isinstance(OmegaConf.to_container(cfg), dict):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections")
    else:
        cfg = OmegaConf.create(base or {})
    if overrides:
        cfg = OmegaConf.merge(cfg, _parse_overrides(list(overrides)))
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe: {str(e).splitlines()[0]}") from None


def build_recipe(cls, data: dict):
    """``from_dict`` for a whole recipe (prefix '' so messages read ``trainer.max_steps: ...``)."""
    return from_dict(cls, data, "")


def dump_recipe(recipe: Any, path: str | os.PathLike) -> None:
    """Write the fully resolved recipe (what the run actually used) as YAML."""
    import yaml

    data = recipe.to_dict() if hasattr(recipe, "to_dict") else dataclasses.asdict(recipe)
    Path(path).write_text(yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value

