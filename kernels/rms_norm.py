"""RMSNorm with the residual add fused in front of it (pre-norm Mamba blocks).

    residual_out = x + residual            (kept in fp32 when residual_in_fp32)
    out          = residual_out / rms(residual_out) * weight

The PyTorch path below is the reference; ``rms_norm_triton`` holds the fused GPU kernel.
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def rms_norm_torch(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    dtype = x.dtype
    if residual is not None:
        x = x.float() + residual.float() if residual_in_fp32 else x + residual.to(x.dtype)
    residual_out = x.float() if residual_in_fp32 else x
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    out = out.to(dtype)
    return (out, residual_out) if prenorm else out


def rms_norm_fn(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    if use_triton(x):
        from .rms_norm_triton import rms_norm_triton
        return rms_norm_triton(x, weight, residual, eps, prenorm, residual_in_fp32)
    return rms_norm_torch(x, weight, residual, eps, prenorm, residual_in_fp32)
