"""Sequential selective-scan reference: the definition every fast path is tested against.

Shapes and semantics follow mamba_ssm's ``selective_scan_fn``:
    u, delta, z : (batch, dim, L)
    A           : (dim, N), real
    B, C        : (batch, N, L)  |  (batch, groups, N, L)  |  (dim, N) (time-invariant)
    D, delta_bias : (dim,)
    initial_state : (batch, dim, N) or None

    delta' = softplus(delta + delta_bias)         (softplus only if delta_softplus)
    x_t    = exp(delta'_t * A) * x_{t-1} + delta'_t * B_t * u_t
    y_t    = <x_t, C_t> + D * u_t,   out = y * silu(z)

It loops over time on purpose: it is slow and obviously right. Tests call it in float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_bc(BC: torch.Tensor, batch: int, dim: int, L: int) -> torch.Tensor:
    """Bring B or C to the common (batch, dim, N, L) layout (a view where possible)."""
    if BC.dim() == 2:  # (dim, N): time-invariant
        return BC[None, :, :, None].expand(batch, dim, BC.shape[1], L)
    if BC.dim() == 3:  # (batch, N, L): shared by all channels
        return BC[:, None].expand(batch, dim, BC.shape[1], L)
    if BC.dim() == 4:  # (batch, groups, N, L): channel d uses group d // (dim // groups)
        groups = BC.shape[1]
        if dim % groups:
            raise ValueError(f"dim={dim} is not divisible by groups={groups}")
        return BC.repeat_interleave(dim // groups, dim=1)
    raise ValueError(f"B/C must have 2, 3 or 4 dims, got shape {tuple(BC.shape)}")


def prepare_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def gate_and_skip(y, u, D, z):
    if D is not None:
        y = y + u * D[:, None].to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None, dtype=torch.float64):
    """Step-by-step scan in ``dtype`` (float64 by default). Returns out in u's dtype."""
    out_dtype = u.dtype
    batch, dim, L = u.shape
    u_, delta_, A_ = u.to(dtype), delta.to(dtype), A.to(dtype)
    delta_ = prepare_delta(delta_, None if delta_bias is None else delta_bias.to(dtype), delta_softplus)
    Bx = expand_bc(B.to(dtype), batch, dim, L)
    Cx = expand_bc(C.to(dtype), batch, dim, L)
    N = A.shape[1]
    x = (torch.zeros(batch, dim, N, dtype=dtype, device=u.device) if initial_state is None
         else initial_state.to(dtype).clone())
    ys = []
    for t in range(L):
        dt = delta_[:, :, t, None]
        x = torch.exp(dt * A_) * x + dt * Bx[:, :, :, t] * u_[:, :, t, None]
        ys.append((x * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if L else u_.new_zeros(batch, dim, 0)
    out = gate_and_skip(y, u_, None if D is None else D.to(dtype), None if z is None else z.to(dtype))
    out = out.to(out_dtype)
    return (out, x) if return_last_state else out
