"""One recurrent step of the selective SSM (decode): the scan's single-token form.

    state : (batch, dim, N), updated in place
    x, dt, z : (batch, dim);  A : (dim, N);  B, C : (batch, N) or (batch, groups, N)
    D, dt_bias : (dim,)

The PyTorch path below is the reference; ``selective_state_update_triton`` is the fused kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import use_triton


def _per_channel(BC, dim):
    if BC.dim() == 2:
        return BC[:, None, :]  # (batch, 1, N) broadcasts over channels
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def selective_state_update_torch(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                 dt_softplus=False):
    dim = x.shape[1]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    Bc, Cc = _per_channel(B.float(), dim), _per_channel(C.float(), dim)
    dA = torch.exp(dt[..., None] * A.float())
    new_state = state.float() * dA + (dt * x.float())[..., None] * Bc
    state.copy_(new_state.to(state.dtype))
    y = (new_state * Cc).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    if use_triton(x):
        from .selective_state_update_triton import selective_state_update_triton
        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
