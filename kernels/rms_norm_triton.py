"""Fused residual-add + RMSNorm in Triton, forward and backward.

Semantics are those of ``rms_norm.rms_norm_torch`` (the reference):

    r   = x + residual          (float32 when residual_in_fp32, else rounded to x's dtype)
    out = r * rsqrt(mean(r^2) + eps) * weight           (in x's dtype)
    returns out, or (out, r) when prenorm

The forward pass reads x (and residual) once and writes out (and r). The backward pass recomputes
r and rstd from the inputs instead of saving them, so a non-prenorm call keeps no extra activation;
dweight is reduced per program in registers (a persistent grid) and the few partial rows are summed
by torch, which keeps it deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_r(x_ptr, res_ptr, rows, cols, mask, sx, sr, HAS_RES: tl.constexpr,
            RES_FP32: tl.constexpr):
    x = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0)
    r = x.to(tl.float32)
    if HAS_RES:
        r += tl.load(res_ptr + rows[:, None] * sr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if not RES_FP32:
            r = r.to(x.dtype).to(tl.float32)  # the reference adds in x's dtype
    return r


@triton.jit
def _rms_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, rout_ptr, M, H, eps,
                    sx, sr, so, sro,
                    HAS_RES: tl.constexpr, RES_FP32: tl.constexpr, WRITE_ROUT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < M)[:, None] & (cols < H)[None, :]
    r = _load_r(x_ptr, res_ptr, rows, cols, mask, sx, sr, HAS_RES, RES_FP32)
    if WRITE_ROUT:
        tl.store(rout_ptr + rows[:, None] * sro + cols[None, :], r.to(rout_ptr.dtype.element_ty),
                 mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=1) / H + eps)
    w = tl.load(w_ptr + cols, mask=cols < H, other=0.0).to(tl.float32)
    out = r * rstd[:, None] * w[None, :]
    tl.store(out_ptr + rows[:, None] * so + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _rms_bwd_kernel(x_ptr, res_ptr, w_ptr, dout_ptr, drout_ptr, dx_ptr, dres_ptr, dw_part_ptr,
                    M, H, eps, sx, sr, sdo, sdro, sdx, sdr,
                    HAS_RES: tl.constexpr, RES_FP32: tl.constexpr, HAS_DROUT: tl.constexpr,
                    WRITE_DRES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_H,), dtype=tl.float32)
    n_blocks = tl.cdiv(M, BLOCK_M)
    for blk in range(pid, n_blocks, n_prog):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & col_mask[None, :]
        r = _load_r(x_ptr, res_ptr, rows, cols, mask, sx, sr, HAS_RES, RES_FP32)
        rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=1) / H + eps)
        xhat = r * rstd[:, None]
        dout = tl.load(dout_ptr + rows[:, None] * sdo + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)
        dw += tl.sum(dout * xhat, axis=0)
        g = dout * w[None, :]
        c = tl.sum(g * xhat, axis=1) / H
        dr = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DROUT:
            dr += tl.load(drout_ptr + rows[:, None] * sdro + cols[None, :], mask=mask,
                          other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * sdx + cols[None, :], dr.to(dx_ptr.dtype.element_ty),
                 mask=mask)
        if WRITE_DRES:
            tl.store(dres_ptr + rows[:, None] * sdr + cols[None, :],
                     dr.to(dres_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_part_ptr + pid * H + cols, dw, mask=col_mask)


# ~2k elements a program (several short rows, or one long row) at ~8 values a thread: wider
# tiles spill registers in the backward pass. bench_conv_norm --sweep measures alternatives.
TILE_ELEMS, VALUES_PER_THREAD = 2048, 8
# backward: a persistent grid of this many programs per SM, each reducing its dweight rows
PROGRAMS_PER_SM = 4


def _block_m(block_h: int) -> int:
    return max(1, min(16, TILE_ELEMS // block_h))


def _warps(block_h: int) -> int:
    return max(1, min(16, _block_m(block_h) * block_h // (32 * VALUES_PER_THREAD)))


def _rows(t, H):
    """(M, H) view with unit stride along H (copies only when it must)."""
    t2 = t.reshape(-1, H)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


_SM_COUNT: dict = {}


def _num_programs(device: torch.device, n_blocks: int) -> int:
    if device.type != "cuda":
        return max(1, min(n_blocks, 4))
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return max(1, min(n_blocks, PROGRAMS_PER_SM * _SM_COUNT[idx]))


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, residual_in_fp32, write_rout):
        shape, H = x.shape, x.shape[-1]
        x2 = _rows(x, H)
        res2 = _rows(residual, H) if residual is not None else None
        M = x2.shape[0]
        out = torch.empty((M, H), device=x.device, dtype=x.dtype)
        rout = (torch.empty((M, H), device=x.device,
                            dtype=torch.float32 if residual_in_fp32 else x.dtype)
                if write_rout else None)
        block_h = triton.next_power_of_2(H)
        block_m = _block_m(block_h)
        _rms_fwd_kernel[(triton.cdiv(M, block_m),)](
            x2, res2 if res2 is not None else x2, weight, out, rout if rout is not None else out,
            M, H, eps, x2.stride(0), res2.stride(0) if res2 is not None else 0, out.stride(0),
            rout.stride(0) if rout is not None else 0,
            HAS_RES=res2 is not None, RES_FP32=residual_in_fp32, WRITE_ROUT=rout is not None,
            BLOCK_M=block_m, BLOCK_H=block_h, num_warps=_warps(block_h))
        ctx.save_for_backward(x2, res2, weight)
        ctx.eps, ctx.residual_in_fp32, ctx.shape = eps, residual_in_fp32, shape
        ctx.res_dtype = residual.dtype if residual is not None else None
        out = out.reshape(shape)
        if rout is not None:
            return out, rout.reshape(shape)
        return out

    @staticmethod
    def backward(ctx, dout, drout=None):
        x2, res2, weight = ctx.saved_tensors
        shape, H = ctx.shape, ctx.shape[-1]
        M = x2.shape[0]
        dout2 = _rows(dout, H) if dout is not None else torch.zeros_like(x2)
        drout2 = _rows(drout, H) if drout is not None else None
        dx = torch.empty((M, H), device=x2.device, dtype=x2.dtype)
        write_dres = res2 is not None and ctx.needs_input_grad[2]
        dres = torch.empty((M, H), device=x2.device, dtype=ctx.res_dtype) if write_dres else None
        block_h = triton.next_power_of_2(H)
        block_m = _block_m(block_h)
        n_prog = _num_programs(x2.device, triton.cdiv(M, block_m))
        dw_part = torch.empty((n_prog, H), device=x2.device, dtype=torch.float32)
        _rms_bwd_kernel[(n_prog,)](
            x2, res2 if res2 is not None else x2, weight, dout2,
            drout2 if drout2 is not None else dout2, dx, dres if dres is not None else dx, dw_part,
            M, H, ctx.eps, x2.stride(0), res2.stride(0) if res2 is not None else 0, dout2.stride(0),
            drout2.stride(0) if drout2 is not None else 0, dx.stride(0),
            dres.stride(0) if dres is not None else 0,
            HAS_RES=res2 is not None, RES_FP32=ctx.residual_in_fp32, HAS_DROUT=drout2 is not None,
            WRITE_DRES=write_dres, BLOCK_M=block_m, BLOCK_H=block_h, num_warps=_warps(block_h))
        dweight = dw_part.sum(0).to(weight.dtype)
        return (dx.reshape(shape), dweight, dres.reshape(shape) if dres is not None else None,
                None, None, None)


def rms_norm_triton(x, weight, residual=None, eps=1e-5, prenorm=False, residual_in_fp32=False):
    """Fused residual add + RMSNorm; same contract as ``rms_norm_torch``."""
    H = x.shape[-1]
    if tuple(weight.shape) != (H,):
        raise ValueError(f"weight must be ({H},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if residual is None:
        # r is x itself (or x.float()): autograd routes its gradient without a kernel output
        out = RMSNormFn.apply(x, weight, None, eps, False, False)
        if prenorm:
            return out, (x.float() if residual_in_fp32 else x)
        return out
    return RMSNormFn.apply(x, weight, residual, eps, residual_in_fp32, prenorm)
