"""The tokenizer registry: the one place that maps a config ``"name"`` to a class.

Checkpoints store ``tokenizer.to_config()``; ``tokenizer_from_config`` rebuilds the same
tokenizer from it.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from .base import Tokenizer, TokenizerError
from .dna_byte import DNAByteTokenizer
from .dna_char import DNACharTokenizer
from .dna_kmer import DNAKmerTokenizer
from .mulaw import MuLawTokenizer

__all__ = ["TOKENIZERS", "get_tokenizer", "tokenizer_from_config", "available_tokenizers"]

TOKENIZERS: dict[str, type[Tokenizer]] = {
    cls.name: cls for cls in (DNACharTokenizer, DNAKmerTokenizer, DNAByteTokenizer, MuLawTokenizer)
}


def available_tokenizers() -> list[str]:
    return sorted(TOKENIZERS)


def get_tokenizer(name: str, **kwargs: Any) -> Tokenizer:
    """Build a tokenizer by registry name (``dna_char``, ``dna_kmer``, ``dna_byte``, ``mulaw``)
    with its constructor options, e.g. ``get_tokenizer("dna_kmer", k=6, stride=1)``."""
    try:
        cls = TOKENIZERS[name]
    except (KeyError, TypeError):
        raise TokenizerError(
            f"unknown tokenizer {name!r}; choose one of {', '.join(available_tokenizers())}") from None
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(params) - {"self"})
    if unknown:
        allowed = ", ".join(p for p in params if p != "self") or "none"
        raise TokenizerError(
            f"unknown option(s) {', '.join(unknown)} for tokenizer {name!r} (options: {allowed})")
    return cls(**kwargs)


def tokenizer_from_config(config: Mapping[str, Any]) -> Tokenizer:
    """Inverse of ``Tokenizer.to_config()``."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise TokenizerError(f"a tokenizer config must be a mapping with a 'name' key, got {config!r}")
    options = {k: v for k, v in config.items() if k != "name"}
    return get_tokenizer(config["name"], **options)
