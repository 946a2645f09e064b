"""What every seqmamba model shares: config, tokenizer, saving, embeddings, pooling."""
from __future__ import annotations

from typing import Literal, Optional, Union

import torch
import torch.nn as nn

from seqmamba.config import ModelConfig
from seqmamba.model.backbone import mask_lengths
from seqmamba.model.registry import build_backbone

Pooling = Literal["mean", "last", "none"]


def pool(hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], pooling: str) -> torch.Tensor:
    """(B, L, D) -> (B, D) by mean or last-token pooling over real (mask == 1) positions;
    "none" returns hidden unchanged. The mask must be right-padded."""
    if pooling == "none":
        return hidden
    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean', 'last' or 'none', got {pooling!r}")
    if hidden.shape[1] == 0:
        raise ValueError("cannot pool an empty sequence")
    if attention_mask is None:
        return hidden[:, -1] if pooling == "last" else hidden.float().mean(1).to(hidden.dtype)
    lengths = mask_lengths(attention_mask)
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    weights = attention_mask.to(torch.float32)[..., None]
    summed = (hidden.float() * weights).sum(1)
    return (summed / lengths[:, None].to(torch.float32)).to(hidden.dtype)


def build_tokenizer(tokenizer_config: Optional[dict]):
    """The tokenizer a config names, or None when there is none (or no tokenizer package)."""
    if tokenizer_config is None:
        return None
    try:
        from seqmamba.tokenizers import tokenizer_from_config
    except ImportError:
        return None
    return tokenizer_from_config(dict(tokenizer_config))


class SeqMambaModel(nn.Module):
    """Base class of the heads. Subclasses build ``self.backbone`` via ``super().__init__``."""

    def __init__(self, config: Union[ModelConfig, dict], tokenizer=None):
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if tokenizer is not None:
            config = config.replace(tokenizer=tokenizer.to_config())
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else build_tokenizer(config.tokenizer)
        tok_vocab = getattr(self.tokenizer, "vocab_size", None)
        if tok_vocab is not None and tok_vocab > config.vocab_size:
            raise ValueError(f"tokenizer {self.tokenizer_name!r} has {tok_vocab} tokens but "
                             f"model.vocab_size is {config.vocab_size}")
        self.backbone = build_backbone(config)

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> Optional[str]:
        tok = self.config.tokenizer
        return None if tok is None else tok.get("name")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Distinct parameters (tied weights count once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups: decay on weight matrices and embeddings (dim >= 2); none on biases,
        norm weights and parameters flagged ``_no_weight_decay`` (A_log, D)."""
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if p.dim() < 2 or getattr(p, "_no_weight_decay", False):
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    # ---- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors to directory ``path`` (atomically)."""
        from seqmamba.checkpoint import save_pretrained
        save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "SeqMambaModel":
        from seqmamba.checkpoint import load
        model = load(path, device=device, dtype=dtype)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # ---- features ------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      layer: int = -1) -> torch.Tensor:
        """(B, L, d_model) hidden states of one layer: index into the backbone's per-layer list
        (residual stream after block i for i < n_layer; -1 = final normed hidden)."""
        if layer == -1:
            return self.backbone(input_ids, attention_mask=attention_mask)
        _, per_layer = self.backbone(input_ids, output_hidden_states=True,
                                     attention_mask=attention_mask)
        n = len(per_layer)
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [{-n}, {n - 1}] (n_layer={self.config.n_layer} "
                             f"blocks, then the final norm), got {layer}")
        return per_layer[layer]

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
              pooling: Pooling = "mean", layer: int = -1) -> torch.Tensor:
        """Sequence embeddings: (B, d_model) pooled over real tokens, or (B, L, d_model) with
        pooling="none". Pad on the right and pass the mask when lengths differ."""
        if pooling not in ("mean", "last", "none"):
            raise ValueError(f"pooling must be 'mean', 'last' or 'none', got {pooling!r}")
        return pool(self.hidden_states(input_ids, attention_mask, layer), attention_mask, pooling)
