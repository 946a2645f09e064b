"""Causal depthwise conv1d (+ optional SiLU): the op between in_proj and the scan.

    x       : (batch, dim, L)
    weight  : (dim, width), width in 2..4
    bias    : (dim,) or None
    initial_state / conv_state : (batch, dim, width - 1), the previous width-1 inputs, oldest first

The PyTorch path below is the reference; ``causal_conv1d_triton`` holds the fused GPU kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import use_triton


def causal_conv1d_torch(x, weight, bias=None, initial_state=None, activation="silu",
                        return_final_state=False):
    batch, dim, L = x.shape
    width = weight.shape[1]
    if initial_state is None:
        xp = F.pad(x, (width - 1, 0))
    else:
        xp = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    y = F.conv1d(xp, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                 groups=dim)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    if return_final_state:
        return y, xp[..., xp.shape[-1] - (width - 1):].contiguous()
    return y


def causal_conv1d_fn(x, weight, bias=None, initial_state=None, activation="silu",
                     return_final_state=False):
    if use_triton(x):
        from .causal_conv1d_triton import causal_conv1d_triton
        return causal_conv1d_triton(x, weight, bias, initial_state, activation, return_final_state)
    return causal_conv1d_torch(x, weight, bias, initial_state, activation, return_final_state)


def causal_conv1d_update_torch(x, conv_state, weight, bias=None, activation="silu"):
    """One decode step. x: (batch, dim); conv_state (batch, dim, width-1) is updated in place."""
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)  # (b, d, width)
    y = (window * weight.to(window.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    conv_state.copy_(window[..., 1:])
    if activation in ("silu", "swish"):
        y = F.silu(y)
    return y.to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation="silu"):
    """One decode step (fused Triton kernel on CUDA); conv_state is updated in place."""
    if use_triton(x):
        from .causal_conv1d_triton import causal_conv1d_update_triton
        return causal_conv1d_update_triton(x, conv_state, weight, bias, activation)
    return causal_conv1d_update_torch(x, conv_state, weight, bias, activation)
