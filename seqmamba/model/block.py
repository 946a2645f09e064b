"""Pre-norm residual block (mamba_ssm's ``Block``): RMSNorm(hidden + residual) -> mixer.

The residual stream is carried separately from the mixer output so that the add and the norm fuse
into one kernel (``rms_norm_fn(..., prenorm=True)``) and so it can stay in fp32 under bf16
training (``residual_in_fp32``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from seqmamba import kernels
from seqmamba.config import ModelConfig

from .mixer import BiMambaMixer, MambaMixer


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        """``x + residual`` normalised; with prenorm also returns that sum (the new residual)."""
        return kernels.rms_norm_fn(x, self.weight, residual, self.eps, prenorm=prenorm,
                                   residual_in_fp32=residual_in_fp32)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = BiMambaMixer(config, layer_idx) if config.bidirectional \
            else MambaMixer(config, layer_idx)

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None,
                layer_cache=None, reverse_index: Optional[torch.Tensor] = None):
        """Returns (mixer output, residual stream); the next block adds them."""
        hidden, residual = self.norm(hidden, residual, prenorm=True,
                                     residual_in_fp32=self.residual_in_fp32)
        if isinstance(self.mixer, BiMambaMixer):
            hidden = self.mixer(hidden, layer_cache, reverse_index=reverse_index)
        else:
            hidden = self.mixer(hidden, layer_cache)
        return hidden, residual

    def step(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], layer_cache):
        """One token: hidden/residual (B, d_model)."""
        if isinstance(self.mixer, BiMambaMixer):
            raise ValueError("recurrent inference (step) needs a causal model; this one is bidirectional")
        hidden, residual = self.norm(hidden, residual, prenorm=True,
                                     residual_in_fp32=self.residual_in_fp32)
        return self.mixer.step(hidden, layer_cache), residual
