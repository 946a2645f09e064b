"""Loading a trained model from whatever a run left behind: its export folder, the run folder
itself, or a Lightning checkpoint (``.ckpt``) of the run."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["load_trained_model", "describe_source"]


def _from_lightning_checkpoint(path: Path, device: torch.device):
    from ..checkpoint import CheckpointError, load_tensors_into
    from ..config import ConfigError, ModelConfig
    from ..heads import build_model

    try:
        # weights_only: a checkpoint from elsewhere cannot run code when opened
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling/zip errors of every kind: one line
        raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({type(e).__name__})") from None
    meta = ckpt.get("seqmamba") if isinstance(ckpt, dict) else None
    if not meta or "model_config" not in meta:
        raise CheckpointError(f"{path}: not a seqmamba training checkpoint (no model config inside)")
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad model config ({e})") from None
    model = build_model(config)
    prefix = "model."
    tensors = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    load_tensors_into(model, tensors, path)
    return model.to(device).eval()


def load_trained_model(path: str | os.PathLike, device=None):
    """The model at ``path`` in eval mode with its tokenizer, on ``device`` (default: the GPU
    when there is one). ``path`` is an exported folder (config.json + model.safetensors), a run
    folder (its ``export/`` is used), or a ``.ckpt`` written during training."""
    from ..api import load_model, resolve_device

    path = Path(path).expanduser()
    dev = resolve_device(device)
    if path.is_file() and path.suffix == ".ckpt":
        model = _from_lightning_checkpoint(path, dev)
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(f"{path}: the model has no tokenizer in its config")
        return model
    if path.is_dir() and not (path / "config.json").exists() and (path / "export").is_dir():
        path = path / "export"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model (give an export folder, a run folder or a "
                                ".ckpt file)")
    return load_model(str(path), device=dev)


def describe_source(model) -> str:
    cfg = model.config
    return (f"d_model {cfg.d_model}, {cfg.n_layer} layers, {model.num_parameters():,} parameters, "
            f"tokenizer {cfg.tokenizer.get('name') if cfg.tokenizer else 'none'}")
