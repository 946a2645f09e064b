"""The Mamba backbone: token embedding -> n_layer pre-norm Mamba blocks -> final RMSNorm."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from seqmamba.config import ModelConfig

from .block import Block, RMSNorm
from .inference import InferenceCache
from .registry import register_backbone


def mask_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) of a right-padded mask (B, L) of 1 = token, 0 = padding.

    Right padding is required: a causal scan reads left to right, so padding in front of a
    sequence would change every state after it.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, length), got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (1s then 0s in every row)")
    if mask.shape[1] and bool((lengths == 0).any()):
        raise ValueError("attention_mask has a row with no tokens")
    return lengths


def reverse_index_for(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """(B, L) gather index that reverses each row's first ``length`` positions only."""
    t = torch.arange(L, device=lengths.device)[None, :]
    n = lengths[:, None]
    return torch.where(t < n, n - 1 - t, t)


class MambaBackbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        # Recompute each block in backward instead of storing its activations (long sequences).
        self.gradient_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, input_ids: Optional[torch.Tensor] = None, output_hidden_states: bool = False,
                inputs_embeds: Optional[torch.Tensor] = None, cache: Optional[InferenceCache] = None,
                attention_mask: Optional[torch.Tensor] = None):
        """(B, L) token ids (or (B, L, d_model) embeddings) -> final normed hidden (B, L, d_model).

        output_hidden_states: also return a list of n_layer + 1 tensors: the residual stream after
            each block, then the final normed hidden (so index -1 is the returned tensor).
        cache: continue from / update a recurrent cache (prompt prefill); causal models only.
        attention_mask: (B, L) right-padded; only a bidirectional model needs it (its reverse
            direction reverses each sequence within its own length).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        if cache is not None:
            if self.config.bidirectional:
                raise ValueError("recurrent inference (cache) needs a causal model; this one is "
                                 "bidirectional")
            if cache.batch_size != hidden.shape[0]:
                raise ValueError(f"cache was allocated for batch {cache.batch_size}, "
                                 f"got batch {hidden.shape[0]}")
        reverse_index = None
        if attention_mask is not None and self.config.bidirectional:
            reverse_index = reverse_index_for(mask_lengths(attention_mask), hidden.shape[1])

        out_dtype = hidden.dtype
        residual = None
        per_layer = []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            if recompute and layer_cache is None:
                hidden, residual = checkpoint(layer, hidden, residual, None, reverse_index,
                                              use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, layer_cache, reverse_index)
            if output_hidden_states:
                per_layer.append((hidden.to(residual.dtype) + residual).to(out_dtype))
        hidden = self.norm_f(hidden, residual, prenorm=False,
                             residual_in_fp32=self.config.residual_in_fp32)
        if cache is not None:
            cache.seqlen_offset += hidden.shape[1]
        if output_hidden_states:
            per_layer.append(hidden)
            return hidden, per_layer
        return hidden

    def allocate_cache(self, batch_size: int, device=None, dtype: Optional[torch.dtype] = None):
        p = self.embedding.weight
        return InferenceCache.allocate(self.config, batch_size, device=device or p.device,
                                       dtype=dtype or p.dtype)

    def step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """Advance one token: input_ids (B,) -> final normed hidden (B, d_model)."""
        hidden = self.embedding(input_ids)
        residual = None
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        hidden = self.norm_f(hidden, residual, prenorm=False,
                             residual_in_fp32=self.config.residual_in_fp32)
        cache.seqlen_offset += 1
        return hidden


register_backbone("mamba", MambaBackbone)
