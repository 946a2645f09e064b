"""Backbone registry: ``ModelConfig.backbone`` names the class that turns tokens into hidden states.

A backbone class takes ``(config: ModelConfig)`` and provides:
    embedding                 nn.Embedding(config.padded_vocab_size, d_model) (the LM head ties to it)
    forward(input_ids=None, output_hidden_states=False, inputs_embeds=None, cache=None,
            attention_mask=None) -> (B, L, d_model) [, list of per-layer hidden states]
    allocate_cache(batch_size, device=None, dtype=None) and step(input_ids (B,), cache) -> (B, d_model)
      (may raise ValueError when the backbone cannot run recurrently)

To add one, call ``register_backbone("name", Class)`` in a module ``seqmamba/model/<name>.py``:
``build_backbone`` imports that module on first use of ``<name>``, so no central list needs editing.
"""
from __future__ import annotations

import importlib

from seqmamba.config import ConfigError, ModelConfig

_BACKBONES: dict[str, type] = {}


def register_backbone(name: str, cls: type) -> type:
    if name in _BACKBONES and _BACKBONES[name] is not cls:
        raise ValueError(f"backbone {name!r} is already registered to {_BACKBONES[name].__name__}")
    _BACKBONES[name] = cls
    return cls


def get_backbone_class(name: str) -> type:
    if name not in _BACKBONES and name.isidentifier():
        try:
            importlib.import_module(f"seqmamba.model.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"seqmamba.model.{name}":
                raise  # the module exists but one of its own imports is missing: show that
    if name not in _BACKBONES:
        known = ", ".join(sorted(_BACKBONES)) or "none"
        raise ConfigError(f"model.backbone: unknown backbone {name!r} (known: {known})")
    return _BACKBONES[name]


def build_backbone(config: ModelConfig):
    return get_backbone_class(config.backbone)(config)


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)
