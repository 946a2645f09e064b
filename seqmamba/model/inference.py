"""State for recurrent (token-by-token) inference of a causal Mamba backbone.

Per layer: the last d_conv-1 conv inputs and the SSM state. The tensors are allocated once and
updated in place by ``forward(..., cache=cache)`` (prefill) and ``step`` (one token), so a decode
step allocates no persistent memory and can be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from seqmamba.config import ModelConfig


@dataclass
class LayerCache:
    conv_state: torch.Tensor  # (B, d_inner, d_conv - 1), model dtype, oldest input first
    ssm_state: torch.Tensor   # (B, d_inner, d_state), float32


class InferenceCache:
    def __init__(self, layers: list[LayerCache]):
        self.layers = layers
        # Tokens consumed so far. Bookkeeping only (for callers); kernels never read it, so a
        # replayed CUDA graph that does not advance it still computes correctly.
        self.seqlen_offset = 0

    @classmethod
    def allocate(cls, config: ModelConfig, batch_size: int, device=None,
                 dtype: Optional[torch.dtype] = None) -> "InferenceCache":
        if config.bidirectional:
            raise ValueError("recurrent inference needs a causal model; this one is bidirectional")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dtype = dtype or torch.get_default_dtype()
        layers = [LayerCache(
            conv_state=torch.zeros(batch_size, config.d_inner, config.d_conv - 1, device=device,
                                   dtype=dtype),
            ssm_state=torch.zeros(batch_size, config.d_inner, config.d_state, device=device,
                                  dtype=torch.float32))
            for _ in range(config.n_layer)]
        return cls(layers)

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm_state.shape[0]

    def reset(self) -> None:
        """Back to the empty-prefix state, in place (keeps tensor addresses for CUDA graphs)."""
        for layer in self.layers:
            layer.conv_state.zero_()
            layer.ssm_state.zero_()
        self.seqlen_offset = 0
