"""Checkpoints: a directory with config.json (ModelConfig + tokenizer config) and model.safetensors.

Loading reads JSON and safetensors only, so opening a checkpoint never runs code from it (no
pickle, no torch.load). Every problem with a checkpoint is one ``CheckpointError`` naming the file
and what is wrong. Saving is atomic: a new checkpoint appears complete or not at all, and an
existing one is only replaced once the new files are fully written. config.json and
model.safetensors carry the same random ``save_id``, so a pair mixed up by an interrupted
overwrite (or by hand) is detected instead of silently loading mismatched weights.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from seqmamba.config import ConfigError, ModelConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

__all__ = ["CheckpointError", "save_pretrained", "load", "FORMAT_VERSION", "CONFIG_NAME",
           "WEIGHTS_NAME"]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match its config."""


# ---- writing ---------------------------------------------------------------------------------

def _fsync_path(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except (OSError, AttributeError):  # Windows cannot open directories; durability is best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_files_atomically(target: Union[str, Path], writers: dict[str, Callable[[Path], None]]) -> None:
    """Create or update directory ``target`` with one file per ``writers`` entry (name -> function
    writing that file at the given path). Files are written under temporary names first; only
    when all are complete do they replace the old ones, in the given order."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    tag = uuid.uuid4().hex[:12]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = target.parent / f".{target.name}.tmp-{tag}"
        tmp_dir.mkdir()
        try:
            for name, write in writers.items():
                write(tmp_dir / name)
                _fsync_path(tmp_dir / name)
            os.rename(tmp_dir, target)  # a half-written directory is never visible as `target`
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    else:
        temps: dict[str, Path] = {}
        try:
            for name, write in writers.items():
                temps[name] = target / f".{name}.tmp-{tag}"
                write(temps[name])
                _fsync_path(temps[name])
            for name in writers:
                os.replace(temps[name], target / name)
        except BaseException:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
            raise
    _fsync_path(target.parent, directory=True)
    _fsync_path(target, directory=True)


def canonical_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict without aliases, {alias key: key it shares memory with}).

    Tied weights (lm_head <- embedding, shared bidirectional projections) appear under several
    keys in ``state_dict()``; safetensors refuses shared tensors, and storing one copy is smaller.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        ident = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = t
    return tensors, aliases


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata=metadata)


def _write_json(doc: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return write


def save_pretrained(model, path: Union[str, Path]) -> None:
    """Write ``model`` (a SeqMambaModel) to directory ``path``: config.json + model.safetensors."""
    from seqmamba import __version__

    config = model.config.to_dict()
    if getattr(model, "tokenizer", None) is not None:
        config["tokenizer"] = model.tokenizer.to_config()
    save_id = uuid.uuid4().hex
    doc = {"seqmamba_format": FORMAT_VERSION, "seqmamba_version": __version__,
           "model_type": "seqmamba", "save_id": save_id, **config}
    tensors, _ = canonical_state(model)
    metadata = {"format": "pt", "seqmamba_format": str(FORMAT_VERSION), "save_id": save_id}
    # Weights first, config last: config.json is what marks the directory as a checkpoint.
    write_files_atomically(path, {
        WEIGHTS_NAME: lambda p: save_safetensors(tensors, p, metadata),
        CONFIG_NAME: _write_json(doc),
    })


# ---- reading ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint directory needs {path.name})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: "
                              f"{err.msg}") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on CPU) and the metadata of a safetensors file."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the weights file of the checkpoint)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:  # SafetensorError, OSError, ...: all mean "unreadable file"
        raise CheckpointError(f"{path}: not a valid safetensors file (truncated or corrupt?): "
                              f"{err}") from None
    return tensors, metadata


def _examples(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_tensors_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source) -> None:
    """Copy ``tensors`` into ``model``; every parameter/buffer must be present with its shape."""
    expected, aliases = canonical_state(model)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and k not in aliases]
    mismatched = [f"{k} {tuple(tensors[k].shape)} vs model {tuple(t.shape)}"
                  for k, t in expected.items() if k in tensors and tensors[k].shape != t.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_examples(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_examples(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_examples(mismatched)}")
    if problems:
        raise CheckpointError(f"{source}: does not match its config ({'; '.join(problems)})")
    bad_dtype = [k for k, t in tensors.items() if k in expected and not t.is_floating_point()
                 and expected[k].is_floating_point()]
    if bad_dtype:
        raise CheckpointError(f"{source}: non-float tensors for float parameters: {_examples(bad_dtype)}")
    with torch.no_grad():
        for key, dst in expected.items():
            dst.copy_(tensors[key])


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "float64": torch.float64, "fp64": torch.float64}


def resolve_dtype(dtype) -> Optional[torch.dtype]:
    """torch dtype from a dtype or a name ("bf16", "float32", ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype must be one of {', '.join(sorted(_DTYPES))} or a torch.dtype, "
                     f"got {dtype!r}")


def finish_model(model, device, dtype):
    """Move to device/dtype and switch to eval mode (what a freshly loaded model should be)."""
    dtype = resolve_dtype(dtype)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()


def build_checked(config: ModelConfig, source: Path):
    """build_model, with a bad tokenizer config reported against the checkpoint."""
    from seqmamba.heads import build_model
    try:
        return build_model(config)
    except (ConfigError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: cannot build the model it describes: {err}") from None


def load(path: Union[str, Path], device=None, dtype=None):
    """Load a model saved by ``save_pretrained`` (or by transformers' MambaForCausalLM).

    device: where to put it ("cpu", "cuda", torch.device); default CPU.
    dtype: torch dtype or name ("bf16", "float32", ...); default float32.
    Returns the model in eval mode, with ``.tokenizer`` rebuilt from its stored config.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected a directory with "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    config_path = path / CONFIG_NAME
    doc = read_json(config_path)
    if doc.get("model_type") == "mamba":  # written by transformers' MambaForCausalLM
        from seqmamba.hf_interop import load_hf
        return load_hf(path, doc, device=device, dtype=dtype)

    version = doc.pop("seqmamba_format", None)
    if version is None:
        raise CheckpointError(f"{config_path}: not a seqmamba checkpoint (no 'seqmamba_format' key; "
                              f"model_type={doc.get('model_type')!r})")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{config_path}: invalid seqmamba_format {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: written in checkpoint format {version} by a newer "
                              f"seqmamba (this one reads format {FORMAT_VERSION}); upgrade seqmamba")
    for key in ("seqmamba_version", "model_type"):
        doc.pop(key, None)
    save_id = doc.pop("save_id", None)
    try:
        config = ModelConfig.from_dict(doc)
    except ConfigError as err:
        raise CheckpointError(f"{config_path}: {err}") from None

    weights_path = path / WEIGHTS_NAME
    tensors, metadata = read_safetensors(weights_path)
    if save_id is not None and metadata.get("save_id") != save_id:
        raise CheckpointError(f"{path}: {CONFIG_NAME} and {WEIGHTS_NAME} come from different saves "
                              f"(an interrupted overwrite, or files copied from two checkpoints)")
    model = build_checked(config, config_path)
    load_tensors_into(model, tensors, weights_path)
    return finish_model(model, device, dtype)
