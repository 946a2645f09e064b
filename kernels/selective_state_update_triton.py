"""One decode step of the selective SSM, fused into a single Triton kernel.

Semantics are those of ``selective_state_update.selective_state_update_torch`` (the reference):

    dt'   = softplus(dt + dt_bias)                      (each part optional)
    state = exp(dt' * A) * state + dt' * B * x          (in place, in state's dtype)
    y     = <state, C> + D * x,   y *= silu(z)

One program owns BLOCK_D channels of one sequence and the whole state row (N <= 256) of each, so
the state is read and written exactly once and every intermediate stays in registers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus(v):
    # log1p(exp(v)) without overflow; torch's softplus switches to identity above 20 too
    return tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))


@triton.jit
def _ssu_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, y_ptr,
                DIM, N, CH_PER_GROUP,
                ss_b, ss_d, ss_n, sx_b, sx_d, sdt_b, sdt_d, sa_d, sa_n,
                sb_b, sb_g, sb_n, sc_b, sc_g, sc_n, sz_b, sz_d, sy_b, sy_d,
                HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
                SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    md = d < DIM
    mn = n < N
    m2 = md[:, None] & mn[None, :]
    x = tl.load(x_ptr + b * sx_b + d * sx_d, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * sdt_b + d * sdt_d, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + d[:, None] * sa_d + n[None, :] * sa_n, mask=m2, other=0.0).to(tl.float32)
    # channel d reads group d // CH_PER_GROUP (one group: sb_g = 0)
    g = d // CH_PER_GROUP
    Bv = tl.load(B_ptr + b * sb_b + g[:, None] * sb_g + n[None, :] * sb_n, mask=m2,
                 other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sc_b + g[:, None] * sc_g + n[None, :] * sc_n, mask=m2,
                 other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * ss_b + d[:, None] * ss_d + n[None, :] * ss_n
    s = tl.load(s_ptrs, mask=m2, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv
    tl.debug_barrier()  # every warp has read the old state before any writes the new one
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * Cv, axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * sz_b + d * sz_d, mask=md, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + b * sy_b + d * sy_d, y.to(y_ptr.dtype.element_ty), mask=md)


def _bc_strides(BC, batch, dim, name):
    """(stride_batch, stride_group, stride_n, channels_per_group) for (b, N) or (b, g, N)."""
    if BC.dim() == 2:
        if BC.shape[0] != batch:
            raise ValueError(f"{name} must be ({batch}, N) or ({batch}, groups, N), got {tuple(BC.shape)}")
        return BC.stride(0), 0, BC.stride(1), dim
    if BC.dim() == 3 and BC.shape[0] == batch:
        groups = BC.shape[1]
        if dim % groups:
            raise ValueError(f"dim={dim} is not divisible by {name}'s groups={groups}")
        return BC.stride(0), BC.stride(1), BC.stride(2), dim // groups
    raise ValueError(f"{name} must be ({batch}, N) or ({batch}, groups, N), got {tuple(BC.shape)}")


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                  dt_softplus=False):
    """Fused decode step; same contract as ``selective_state_update_torch`` (state in place)."""
    batch, dim, N = state.shape
    if tuple(x.shape) != (batch, dim) or tuple(dt.shape) != (batch, dim):
        raise ValueError(f"x and dt must be ({batch}, {dim}), got {tuple(x.shape)}, {tuple(dt.shape)}")
    if tuple(A.shape) != (dim, N):
        raise ValueError(f"A must be ({dim}, {N}), got {tuple(A.shape)}")
    if B.shape[-1] != N or C.shape[-1] != N:
        raise ValueError(f"B and C must end in N={N}, got {tuple(B.shape)}, {tuple(C.shape)}")
    if B.dim() != C.dim() or (B.dim() == 3 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must share a layout, got {tuple(B.shape)}, {tuple(C.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim):
        raise ValueError(f"z must be ({batch}, {dim}), got {tuple(z.shape)}")
    sb_b, sb_g, sb_n, per_group = _bc_strides(B, batch, dim, "B")
    sc_b, sc_g, sc_n, _ = _bc_strides(C, batch, dim, "C")
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    block_n = max(triton.next_power_of_2(N), 2)
    if block_n > 256:
        raise ValueError(f"state size N={N} > 256 is not supported by the fused decode kernel")
    block_d = max(1, min(triton.next_power_of_2(dim), 2048 // block_n, 64))
    grid = (batch, triton.cdiv(dim, block_d))
    _ssu_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else x, y,
        dim, N, per_group,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(),
        sb_b, sb_g, sb_n, sc_b, sc_g, sc_n,
        *(z.stride() if z is not None else (0, 0)), *y.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), BLOCK_D=block_d, BLOCK_N=block_n,
        num_warps=4 if block_d * block_n >= 1024 else 2)
    return y
