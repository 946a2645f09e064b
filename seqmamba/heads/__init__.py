"""Task heads on top of a backbone; ``build_model`` picks one from ``config.head``."""
from __future__ import annotations

from typing import Union

from seqmamba.config import ModelConfig

from .base import SeqMambaModel, pool
from .classifier import MambaClassifier
from .lm import MambaLM, sample_next

HEADS = {"lm": MambaLM, "classification": MambaClassifier}


def build_model(config: Union[ModelConfig, dict], tokenizer=None) -> SeqMambaModel:
    """A freshly initialised model for ``config`` (a ModelConfig or its dict form)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return HEADS[config.head](config, tokenizer=tokenizer)


__all__ = ["SeqMambaModel", "MambaLM", "MambaClassifier", "build_model", "pool", "sample_next",
           "HEADS"]
