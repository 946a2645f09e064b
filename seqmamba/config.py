"""Typed configuration: the model contract (`ModelConfig`) and a generic dict -> dataclass loader.

`from_dict(cls, data, prefix)` turns a plain mapping (parsed YAML/JSON) into a dataclass instance,
checking every key and value against the field annotations, so that a typo in a recipe is one clear
line instead of a traceback deep inside training:

    model.d_modle: unknown key (did you mean d_model?)
    model.d_model: expected int, got str 'abc'

Supported annotations: int, float (an int is accepted and converted), bool, str, pathlib.Path (from
str), None, Any, Optional[X] / X | None, Union[...], Literal[...], list[X], tuple[X, ...], dict /
dict[str, X], and nested dataclasses (checked recursively, with dotted paths in messages). Fields
without a default are required. A dataclass may define ``validate(self, prefix)`` for value checks
(ranges, cross-field rules); it runs after the type checks, with the same prefix (build key
paths for its messages with ``key_path(prefix, "lr")``).

Dataclasses that derive from `TypedConfig` are also checked when constructed directly in Python.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import math
import pathlib
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Union

__all__ = ["ConfigError", "TypedConfig", "from_dict", "check_value", "key_path", "ModelConfig"]


class ConfigError(ValueError):
    """A configuration key or value is wrong. The message names the full key path."""


# (class, prefix) while `from_dict` builds an instance of that class, so that its __post_init__
# reports errors under the right key path (and a nested default built meanwhile does not).
_PREFIX: contextvars.ContextVar[Optional[tuple]] = contextvars.ContextVar("seqmamba_config_prefix",
                                                                          default=None)


def key_path(prefix: str, key: Any) -> str:
    """Dotted path of ``key`` under ``prefix`` for messages: "model" + "d_model", "files" + 2."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    if tp is type(None) or tp is None:
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        return repr(options[0]) if len(options) == 1 else \
            "one of " + ", ".join(repr(a) for a in options)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        return origin.__name__
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def check_value(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it, converted where that is lossless
    (int -> float, str -> Path, list -> tuple, mapping -> nested dataclass). Raises ConfigError."""
    if tp is Any:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {_describe(value)}")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return check_value(value, member, path)
            except ConfigError as err:
                # A mapping aimed at a nested dataclass fails on its own keys: report that error.
                if isinstance(value, dict) and dataclasses.is_dataclass(member):
                    raise err
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        options = typing.get_args(tp)
        # `True == 1` in Python: compare type as well so a bool never matches an int option.
        if any(value == opt and type(value) is type(opt) for opt in options):
            return value
        raise ConfigError(f"{path}: expected one of {', '.join(repr(o) for o in options)}, "
                          f"got {_describe(value)}")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected a list of {len(args)} items, got {len(value)}")
            items = [check_value(v, a, key_path(path, i)) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [check_value(v, item_tp, key_path(path, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        args = typing.get_args(tp)
        if not args:
            return dict(value)
        key_tp, val_tp = args
        return {check_value(k, key_tp, key_path(path, k)): check_value(v, val_tp, key_path(path, k))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected bool (true/false), got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected float, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {_describe(value)}")
    if tp is pathlib.Path:
        if isinstance(value, (str, pathlib.PurePath)):
            return pathlib.Path(value)
        raise ConfigError(f"{path}: expected a path string, got {_describe(value)}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{path}: expected {tp.__name__}, got {_describe(value)}")
    raise TypeError(f"{path}: unsupported annotation {tp!r} in a config dataclass")


@contextlib.contextmanager
def _prefix_scope(cls, prefix: str):
    token = _PREFIX.set((cls, prefix))
    try:
        yield
    finally:
        _PREFIX.reset(token)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls, data: Any, prefix: str = ""):
    """Build dataclass ``cls`` from mapping ``data``, checking keys and types (see module doc).

    ``prefix`` is the dotted location of ``data`` in the whole config ("model", "trainer.optim"),
    used in error messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {_describe(data)}")
    types_ = _field_types(cls)
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{key_path(prefix, key)}: keys must be strings, got {_describe(key)}")
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else \
                f" (known keys: {', '.join(sorted(types_))})"
            raise ConfigError(f"{key_path(prefix, key)}: unknown key{hint}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{key_path(prefix, missing[0])}: required key is missing")
    kwargs = {key: check_value(value, types_[key], key_path(prefix, key)) for key, value in data.items()}
    with _prefix_scope(cls, prefix):
        obj = cls(**kwargs)
    if not isinstance(obj, TypedConfig):  # TypedConfig validates itself in __post_init__
        validate = getattr(obj, "validate", None)
        if callable(validate):
            validate(prefix)
    return obj


class TypedConfig:
    """Mixin for config dataclasses: type-checks fields and runs ``validate`` on construction.

    Subclasses set ``_config_prefix`` (the section name used in messages when built directly in
    Python) and may override ``validate(self, prefix)``.
    """

    _config_prefix: ClassVar[str] = ""

    def __post_init__(self):
        scope = _PREFIX.get()
        prefix = scope[1] if scope is not None and scope[0] is type(self) else self._config_prefix
        # from_dict already checked the types, but direct construction in Python did not.
        for name, tp in _field_types(type(self)).items():
            object.__setattr__(self, name, check_value(getattr(self, name), tp, key_path(prefix, name)))
        self.validate(prefix)

    def validate(self, prefix: str) -> None:
        """Value checks beyond types; raise ConfigError naming ``prefix.key``."""

    @classmethod
    def from_dict(cls, data: Any, prefix: Optional[str] = None):
        return from_dict(cls, data, cls._config_prefix if prefix is None else prefix)

    def to_dict(self) -> dict:
        """Plain JSON/YAML-ready dict (nested dataclasses become dicts, tuples lists)."""
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def _require(cond: bool, path: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {problem}")


@dataclass
class ModelConfig(TypedConfig):
    """Everything needed to rebuild a model; saved as config.json beside the weights.

    Field names follow mamba_ssm's MambaConfig where one exists.
    """

    _config_prefix: ClassVar[str] = "model"

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Union[int, Literal["auto"]] = "auto"  # "auto" = ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False  # bias in in_proj / out_proj
    pad_vocab_size_multiple: int = 8
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    # Bidirectional (Caduceus-style): each layer also runs a mixer over the reversed sequence and
    # the two outputs are summed; with bidirectional_tie the two share in_proj and out_proj.
    bidirectional: bool = False
    bidirectional_strategy: Literal["add"] = "add"
    bidirectional_tie: bool = False
    backbone: str = "mamba"  # a name in seqmamba.model.registry
    unet: Optional[dict] = None  # settings of the "unet" backbone, read by that backbone only
    head: Literal["lm", "classification"] = "lm"
    num_classes: Optional[int] = None
    class_names: Optional[list[str]] = None  # label of each class index (classification head)
    pooling: Literal["last", "mean"] = "last"
    tokenizer: Optional[dict] = None  # the tokenizer's to_config()

    def validate(self, prefix: str) -> None:
        p = lambda key: key_path(prefix, key)  # noqa: E731
        _require(self.d_model >= 1, p("d_model"), f"must be >= 1, got {self.d_model}")
        _require(self.n_layer >= 1, p("n_layer"), f"must be >= 1, got {self.n_layer}")
        _require(self.vocab_size >= 1, p("vocab_size"), f"must be >= 1, got {self.vocab_size}")
        _require(self.d_state >= 1, p("d_state"), f"must be >= 1, got {self.d_state}")
        # The fused causal-conv kernels (here and in mamba_ssm) support widths 2..4 only.
        _require(2 <= self.d_conv <= 4, p("d_conv"), f"must be 2, 3 or 4, got {self.d_conv}")
        _require(self.expand >= 1, p("expand"), f"must be >= 1, got {self.expand}")
        if isinstance(self.dt_rank, int):
            _require(self.dt_rank >= 1, p("dt_rank"), f"must be >= 1 or 'auto', got {self.dt_rank}")
        _require(0 < self.dt_min <= self.dt_max, p("dt_min"),
                 f"need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        _require(self.dt_init_floor > 0, p("dt_init_floor"), f"must be > 0, got {self.dt_init_floor}")
        _require(self.dt_scale > 0, p("dt_scale"), f"must be > 0, got {self.dt_scale}")
        _require(self.pad_vocab_size_multiple >= 1, p("pad_vocab_size_multiple"),
                 f"must be >= 1, got {self.pad_vocab_size_multiple}")
        _require(self.norm_eps > 0 and math.isfinite(self.norm_eps), p("norm_eps"),
                 f"must be a positive number, got {self.norm_eps}")
        _require(bool(self.backbone), p("backbone"), "must be a backbone name, e.g. 'mamba'")
        if self.head == "classification":
            _require(self.num_classes is not None, p("num_classes"),
                     "required when head is 'classification'")
            _require(self.num_classes >= 2, p("num_classes"), f"must be >= 2, got {self.num_classes}")
            if self.class_names is not None:
                _require(len(self.class_names) == self.num_classes, p("class_names"),
                         f"has {len(self.class_names)} names for {self.num_classes} classes")
        elif self.num_classes is not None:
            raise ConfigError(f"{p('num_classes')}: only used with head 'classification' "
                              f"(head is {self.head!r})")
        if self.bidirectional_tie and not self.bidirectional:
            raise ConfigError(f"{p('bidirectional_tie')}: needs bidirectional: true")
        if self.tokenizer is not None:
            _require(isinstance(self.tokenizer.get("name"), str), p("tokenizer.name"),
                     "the tokenizer config needs a 'name' (a registered tokenizer)")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return ((self.vocab_size + m - 1) // m) * m

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)
