"""Fused Triton kernels for the causal depthwise conv1d (+ SiLU): forward, backward, decode step.

Semantics are those of ``causal_conv1d.causal_conv1d_torch`` (the reference). Write the padded input
as xp = [initial_state | x] (zeros when there is no initial state); then for w = width

    pre[t] = bias + sum_k weight[k] * xp[t + k]          y = silu(pre) or pre
    final_state = xp[L : L + w - 1]                     (the last w-1 inputs, oldest first)

One program owns a (BLOCK_D channels x BLOCK_L positions) tile. The w shifted views of x are plain
masked loads: the tile and its neighbours sit in L1/L2, so HBM sees each element about once. All
arithmetic is float32; results are rounded once to the output dtype.

The backward pass recomputes the pre-activation rather than storing it (saves a full (b, d, L)
tensor), writes dweight/dbias as per-program partial sums (deterministic, no atomics) and reduces them
with torch, and folds the gradient of the initial state into the programs that own position 0.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_xp(x_ptr, init_ptr, b, d, s, mask_d, L, sxb, sxd, sxl, sib, sid, sil,
             WIDTH: tl.constexpr, HAS_INIT: tl.constexpr):
    """xp at x-positions ``s`` (a vector that may be negative): x[s] for s >= 0, the initial state
    (or zero) for -(w-1) <= s < 0, zero past the end. Returns float32 (BLOCK_D, len(s))."""
    in_x = (s >= 0) & (s < L)
    v = tl.load(x_ptr + b * sxb + d[:, None] * sxd + s[None, :] * sxl,
                mask=mask_d[:, None] & in_x[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        j = s + (WIDTH - 1)
        in_init = (s < 0) & (j >= 0)
        v += tl.load(init_ptr + b * sib + d[:, None] * sid + j[None, :] * sil,
                     mask=mask_d[:, None] & in_init[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
                     D, L,
                     sxb, sxd, sxl, swd, swk, sib, sid, sil, syb, syd, syl, sfb, sfd, sfl,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                     SILU: tl.constexpr, WRITE_FINAL: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = d < D
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(WIDTH):
        wk = tl.load(w_ptr + d * swd + k * swk, mask=mask_d, other=0.0).to(tl.float32)
        xv = _load_xp(x_ptr, init_ptr, b, d, t + (k - (WIDTH - 1)), mask_d, L,
                      sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        acc += wk[:, None] * xv
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = mask_d[:, None] & (t < L)[None, :]
    tl.store(y_ptr + b * syb + d[:, None] * syd + t[None, :] * syl,
             acc.to(y_ptr.dtype.element_ty), mask=mask)
    if WRITE_FINAL:
        if pid_l == 0:
            j = tl.arange(0, 4)  # width - 1 <= 3 state columns
            fv = _load_xp(x_ptr, init_ptr, b, d, L - (WIDTH - 1) + j, mask_d, L,
                          sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
            tl.store(final_ptr + b * sfb + d[:, None] * sfd + j[None, :] * sfl,
                     fv.to(final_ptr.dtype.element_ty),
                     mask=mask_d[:, None] & (j < WIDTH - 1)[None, :])


@triton.jit
def _dpre_at(x_ptr, init_ptr, w_ptr, bias_ptr, dy_ptr, b, d, t, mask_d, L,
             sxb, sxd, sxl, sib, sid, sil, swd, swk, sdb, sdd, sdl,
             WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
             SILU: tl.constexpr):
    """Gradient w.r.t. the pre-activation at positions ``t`` (zero outside [0, L))."""
    valid = (t >= 0) & (t < L)
    g = tl.load(dy_ptr + b * sdb + d[:, None] * sdd + t[None, :] * sdl,
                mask=mask_d[:, None] & valid[None, :], other=0.0).to(tl.float32)
    if SILU:
        pre = tl.zeros(g.shape, dtype=tl.float32)
        if HAS_BIAS:
            pre += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
        for k in tl.static_range(WIDTH):
            wk = tl.load(w_ptr + d * swd + k * swk, mask=mask_d, other=0.0).to(tl.float32)
            pre += wk[:, None] * _load_xp(x_ptr, init_ptr, b, d, t + (k - (WIDTH - 1)), mask_d, L,
                                          sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        sig = tl.sigmoid(pre)
        g = g * sig * (1.0 + pre * (1.0 - sig))
    return g


@triton.jit
def _dxp_at(x_ptr, init_ptr, w_ptr, bias_ptr, dy_ptr, b, d, s, mask_d, L,
            sxb, sxd, sxl, sib, sid, sil, swd, swk, sdb, sdd, sdl,
            WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
            SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Gradient w.r.t. xp at x-positions ``s``: sum_m weight[w-1-m] * dpre[s + m]."""
    acc = tl.zeros((BLOCK_D, BLOCK_S), dtype=tl.float32)
    for m in tl.static_range(WIDTH):
        g = _dpre_at(x_ptr, init_ptr, w_ptr, bias_ptr, dy_ptr, b, d, s + m, mask_d, L,
                     sxb, sxd, sxl, sib, sid, sil, swd, swk, sdb, sdd, sdl,
                     WIDTH, HAS_BIAS, HAS_INIT, SILU)
        wk = tl.load(w_ptr + d * swd + (WIDTH - 1 - m) * swk, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk[:, None] * g
    return acc


# Shape of the backward (why it is built this way). dx[s] = sum_m weight[w-1-m] * dpre[s + m] needs
# the pre-activation gradient dpre at w shifted positions. Recomputing dpre at each shift (the earlier
# design) costs w * (w x-loads + a sigmoid) per element, ~24 loads and 4 sigmoids: the kernel was
# instruction-bound at ~5x its memory floor. Triton has no op that shifts a register tile along an
# axis (tl.gather is 3.2+ only and goes through shared memory anyway), so each program computes dpre
# ONCE on its tile (w x-loads, reused for dweight, one sigmoid), parks it in a small per-program
# float32 scratch row, and reads it back at the w-1 shifted offsets. The scratch is written and read
# by the same CTA within a barrier pair, so it is served from L1/L2: HBM traffic stays ~ x + dy + dx.
# A two-kernel design (dpre to a full float32 tensor, then dx) would add 8 bytes/element of HBM
# traffic (~2.3x the 6-byte floor); this one adds only the scratch's eventual write-back, which the
# chunk loop below keeps small by reusing one scratch tile for CHUNKS consecutive position tiles.
# dpre stays float32 throughout, so results match the previous kernel up to fp32 summation order.
HALO = tl.constexpr(4)  # w - 1 <= 3 look-ahead columns of dpre, rounded up to a power of two
SCRATCH_PAD = tl.constexpr(32)  # a scratch row is BLOCK_L + 32 floats: 128-byte aligned rows


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, dy_ptr, dx_ptr, dinit_ptr,
                     dw_part_ptr, db_part_ptr, scratch_ptr,
                     D, L, CHUNKS,
                     sxb, sxd, sxl, swd, swk, sib, sid, sil, sdb, sdd, sdl, sgb, sgd, sgl,
                     sjb, sjd, sjl,
                     WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                     SILU: tl.constexpr, NEED_DINIT: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """One program: BLOCK_D channels x CHUNKS consecutive tiles of BLOCK_L positions (its "split")."""
    b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    n_split = tl.num_programs(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < D
    cols = tl.arange(0, BLOCK_L)
    halo = tl.arange(0, HALO)
    # weights and bias once per program; taps k >= WIDTH stay zero (and are never used)
    w0 = tl.load(w_ptr + d * swd, mask=mask_d, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + d * swd + swk, mask=mask_d, other=0.0).to(tl.float32)
    w2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    w3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if WIDTH >= 3:
        w2 = tl.load(w_ptr + d * swd + 2 * swk, mask=mask_d, other=0.0).to(tl.float32)
    if WIDTH >= 4:
        w3 = tl.load(w_ptr + d * swd + 3 * swk, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    # dweight[k] = sum_t dpre[t] * xp[t + k - (w-1)], dbias = sum_t dpre[t]: per-program partials
    dw0 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw1 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dw3 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    db = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # this program's scratch tile: BLOCK_D rows of [dpre on the tile | dpre on the next HALO positions]
    prog = (b * tl.num_programs(1) + pid_d) * n_split + pid_l
    row = BLOCK_L + SCRATCH_PAD
    scr = scratch_ptr + prog * (BLOCK_D * row) + tl.arange(0, BLOCK_D)[:, None] * row
    for i in range(CHUNKS):
        s0 = (pid_l * CHUNKS + i) * BLOCK_L
        s = s0 + cols
        # the w shifted x tiles, each loaded once (L1/L2 hits after the first) and kept for dweight
        x0 = _load_xp(x_ptr, init_ptr, b, d, s - (WIDTH - 1), mask_d, L,
                      sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        x1 = _load_xp(x_ptr, init_ptr, b, d, s - (WIDTH - 2), mask_d, L,
                      sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        x2 = x1
        x3 = x1
        if WIDTH >= 3:
            x2 = _load_xp(x_ptr, init_ptr, b, d, s - (WIDTH - 3), mask_d, L,
                          sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        if WIDTH >= 4:
            x3 = _load_xp(x_ptr, init_ptr, b, d, s, mask_d, L,
                          sxb, sxd, sxl, sib, sid, sil, WIDTH, HAS_INIT)
        g = tl.load(dy_ptr + b * sdb + d[:, None] * sdd + s[None, :] * sdl,
                    mask=mask_d[:, None] & (s < L)[None, :], other=0.0).to(tl.float32)
        if SILU:
            pre = bias[:, None] + w0[:, None] * x0 + w1[:, None] * x1
            if WIDTH >= 3:
                pre += w2[:, None] * x2
            if WIDTH >= 4:
                pre += w3[:, None] * x3
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        db += tl.sum(g, axis=1)
        dw0 += tl.sum(g * x0, axis=1)
        dw1 += tl.sum(g * x1, axis=1)
        if WIDTH >= 3:
            dw2 += tl.sum(g * x2, axis=1)
        if WIDTH >= 4:
            dw3 += tl.sum(g * x3, axis=1)
        # dpre at the w-1 positions past the tile belongs to the next tile: recompute it directly
        # (HALO columns of the old per-position recomputation, ~HALO/BLOCK_L of the work)
        g_next = _dpre_at(x_ptr, init_ptr, w_ptr, bias_ptr, dy_ptr, b, d, s0 + BLOCK_L + halo,
                          mask_d, L, sxb, sxd, sxl, sib, sid, sil, swd, swk, sdb, sdd, sdl,
                          WIDTH, HAS_BIAS, HAS_INIT, SILU)
        # the barrier pair orders the CTA's global-memory accesses to its scratch: no warp overwrites
        # a row another warp is still reading (previous chunk), none reads before all have written
        tl.debug_barrier()
        tl.store(scr + cols[None, :], g)
        tl.store(scr + BLOCK_L + halo[None, :], g_next)
        tl.debug_barrier()
        # dx[s] = sum_m weight[w-1-m] * dpre[s + m]; the m = 0 term is still in registers
        if WIDTH == 2:
            dx = w1[:, None] * g + w0[:, None] * tl.load(scr + cols[None, :] + 1)
        elif WIDTH == 3:
            dx = w2[:, None] * g + w1[:, None] * tl.load(scr + cols[None, :] + 1) \
                + w0[:, None] * tl.load(scr + cols[None, :] + 2)
        else:
            dx = w3[:, None] * g + w2[:, None] * tl.load(scr + cols[None, :] + 1) \
                + w1[:, None] * tl.load(scr + cols[None, :] + 2) \
                + w0[:, None] * tl.load(scr + cols[None, :] + 3)
        tl.store(dx_ptr + b * sgb + d[:, None] * sgd + s[None, :] * sgl,
                 dx.to(dx_ptr.dtype.element_ty), mask=mask_d[:, None] & (s < L)[None, :])
    part = (b * n_split + pid_l) * D + d
    if HAS_BIAS:
        tl.store(db_part_ptr + part, db, mask=mask_d)
    tl.store(dw_part_ptr + part * WIDTH, dw0, mask=mask_d)
    tl.store(dw_part_ptr + part * WIDTH + 1, dw1, mask=mask_d)
    if WIDTH >= 3:
        tl.store(dw_part_ptr + part * WIDTH + 2, dw2, mask=mask_d)
    if WIDTH >= 4:
        tl.store(dw_part_ptr + part * WIDTH + 3, dw3, mask=mask_d)
    if NEED_DINIT:
        if pid_l == 0:  # the initial state sits at x-positions -(w-1) .. -1
            j = tl.arange(0, 4)
            di = _dxp_at(x_ptr, init_ptr, w_ptr, bias_ptr, dy_ptr, b, d, j - (WIDTH - 1), mask_d, L,
                         sxb, sxd, sxl, sib, sid, sil, swd, swk, sdb, sdd, sdl,
                         WIDTH, HAS_BIAS, HAS_INIT, SILU, BLOCK_D, 4)
            tl.store(dinit_ptr + b * sjb + d[:, None] * sjd + j[None, :] * sjl,
                     di.to(dinit_ptr.dtype.element_ty),
                     mask=mask_d[:, None] & (j < WIDTH - 1)[None, :])


def _blocks(L: int, elems: int) -> tuple[int, int]:
    # ~``elems`` elements a program: long rows take wide position tiles, short ones many channels.
    block_l = min(max(triton.next_power_of_2(max(L, 1)), 16), 256)
    block_d = min(max(elems // block_l, 4), 64)
    return block_d, block_l


# Forward: 4k-element tiles on 4 warps (32 values a thread) stream at ~2 TB/s. Backward: 1k-element
# tiles (4 channels x 256 positions) on 4 warps, 8 values a thread. Measured on an H100 (bf16,
# 16 x 512 x 4096, width 4, kernel time): 1024/4 warps 197 us, 2048/4 205 us, 2048/8 244 us,
# 4096/4 208 us (the earlier per-shift recomputing kernel: 357 us at 2048/8). A backward program
# walks several position tiles (reusing its scratch tile, which keeps the scratch small and
# L2-resident) but the grid keeps at least BWD_MIN_PROGRAMS programs so that short or narrow inputs
# still fill the GPU (at 2048/4: 1024 programs 211 us, 2048 205 us, 4096 195 us).
FWD_ELEMS, FWD_WARPS = 4096, 4
BWD_ELEMS, BWD_WARPS = 1024, 4
BWD_MIN_PROGRAMS = 2048


def _check(x, weight, bias, initial_state, activation):
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, dim, L), got shape {tuple(x.shape)}")
    batch, dim, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim or not 2 <= weight.shape[1] <= 4:
        raise ValueError(f"weight must be (dim={dim}, width in 2..4), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must be ({dim},), got {tuple(bias.shape)}")
    w = weight.shape[1]
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, w - 1):
        raise ValueError(f"initial_state must be ({batch}, {dim}, {w - 1}), "
                         f"got {tuple(initial_state.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu, return_final_state):
        batch, dim, L = x.shape
        width = weight.shape[1]
        y = torch.empty((batch, dim, L), device=x.device, dtype=x.dtype)
        final = (torch.empty((batch, dim, width - 1), device=x.device, dtype=x.dtype)
                 if return_final_state else None)
        block_d, block_l = _blocks(L, FWD_ELEMS)
        grid = (batch, triton.cdiv(dim, block_d), max(triton.cdiv(L, block_l), 1))
        init_s = initial_state.stride() if initial_state is not None else (0, 0, 0)
        fin_s = final.stride() if final is not None else (0, 0, 0)
        _conv_fwd_kernel[grid](
            x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
            y, final if final is not None else y,
            dim, L, *x.stride(), *weight.stride(), *init_s, *y.stride(), *fin_s,
            WIDTH=width, HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
            SILU=silu, WRITE_FINAL=final is not None, BLOCK_D=block_d, BLOCK_L=block_l,
            num_warps=FWD_WARPS)
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.silu = silu
        ctx.return_final_state = return_final_state
        if return_final_state:
            return y, final
        return y

    @staticmethod
    def backward(ctx, dy, dfinal=None):
        x, weight, bias, initial_state = ctx.saved_tensors
        batch, dim, L = x.shape
        width = weight.shape[1]
        if dy is None:
            dy = torch.zeros_like(x)
        block_d, block_l = _blocks(L, BWD_ELEMS)
        n_l = max(triton.cdiv(L, block_l), 1)
        n_d = triton.cdiv(dim, block_d)
        # split each row of position tiles into n_split programs of `chunks` consecutive tiles
        n_split = min(n_l, triton.cdiv(BWD_MIN_PROGRAMS, batch * n_d))
        chunks = triton.cdiv(n_l, n_split)
        n_split = triton.cdiv(n_l, chunks)
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        need_dinit = initial_state is not None and ctx.needs_input_grad[3]
        dinit = torch.empty_like(initial_state, memory_format=torch.contiguous_format) if need_dinit else None
        dw_part = torch.empty((batch, n_split, dim, width), device=x.device, dtype=torch.float32)
        db_part = (torch.empty((batch, n_split, dim), device=x.device, dtype=torch.float32)
                   if bias is not None else None)
        scratch = torch.empty(batch * n_d * n_split * block_d * (block_l + SCRATCH_PAD.value),
                              device=x.device, dtype=torch.float32)
        init_s = initial_state.stride() if initial_state is not None else (0, 0, 0)
        dinit_s = dinit.stride() if dinit is not None else (0, 0, 0)
        grid = (batch, n_d, n_split)
        _conv_bwd_kernel[grid](
            x, weight, bias if bias is not None else x, initial_state if initial_state is not None else x,
            dy, dx, dinit if dinit is not None else dx, dw_part, db_part if db_part is not None else dw_part,
            scratch, dim, L, chunks,
            *x.stride(), *weight.stride(), *init_s, *dy.stride(), *dx.stride(), *dinit_s,
            WIDTH=width, HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
            SILU=ctx.silu, NEED_DINIT=need_dinit, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=BWD_WARPS)
        if dfinal is not None and ctx.return_final_state:
            # final_state[j] is xp at x-position L-(w-1)+j: route its gradient to x or the initial state
            for j in range(width - 1):
                p = L - (width - 1) + j
                if p >= 0:
                    dx[:, :, p] += dfinal[:, :, j].to(dx.dtype)
                elif dinit is not None:
                    dinit[:, :, p + width - 1] += dfinal[:, :, j].to(dinit.dtype)
        dweight = dw_part.sum(dim=(0, 1)).to(weight.dtype)
        dbias = db_part.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dweight, dbias, dinit, None, None


def causal_conv1d_triton(x, weight, bias=None, initial_state=None, activation="silu",
                         return_final_state=False):
    """Fused causal depthwise conv1d; same contract as ``causal_conv1d_torch``."""
    _check(x, weight, bias, initial_state, activation)
    return CausalConv1dFn.apply(x, weight, bias, initial_state, activation in ("silu", "swish"),
                                return_final_state)


@triton.jit
def conv_history(state_row, s_k, w_ptr, swd, swk, d, mask, WIDTH: tl.constexpr):
    """The state's share of one causal-conv step for channels ``d``: sum_{k < w-1} weight[k] *
    state[k] (float32), plus state columns 1 and 2 (raw) for ``conv_shift_in``."""
    c0 = tl.load(state_row, mask=mask, other=0.0)
    acc = tl.load(w_ptr + d * swd, mask=mask, other=0.0).to(tl.float32) * c0.to(tl.float32)
    c1 = c0
    c2 = c0
    if WIDTH >= 3:
        c1 = tl.load(state_row + s_k, mask=mask, other=0.0)
        acc += tl.load(w_ptr + d * swd + swk, mask=mask, other=0.0).to(tl.float32) * c1.to(tl.float32)
    if WIDTH >= 4:
        c2 = tl.load(state_row + 2 * s_k, mask=mask, other=0.0)
        acc += tl.load(w_ptr + d * swd + 2 * swk, mask=mask, other=0.0).to(tl.float32) \
            * c2.to(tl.float32)
    return acc, c1, c2


@triton.jit
def conv_shift_in(state_row, s_k, mask, x, c1, c2, WIDTH: tl.constexpr):
    """Drop the oldest state column and append ``x``, in place, from the columns read by
    ``conv_history``. The barrier comes first: a program's tensors can be replicated across
    warps, and a warp that ran ahead must not overwrite a column a slower warp has yet to read."""
    tl.debug_barrier()
    xs = x.to(state_row.dtype.element_ty)
    if WIDTH == 2:
        tl.store(state_row, xs, mask=mask)
    if WIDTH == 3:
        tl.store(state_row, c1, mask=mask)
        tl.store(state_row + s_k, xs, mask=mask)
    if WIDTH == 4:
        tl.store(state_row, c1, mask=mask)
        tl.store(state_row + s_k, c2, mask=mask)
        tl.store(state_row + 2 * s_k, xs, mask=mask)


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, D,
                        sxb, sxd, ssb, ssd, ssk, swd, swk, syb, syd,
                        WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                        BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = d < D
    # the state keeps x in its own dtype; the reference rounds x to it before the dot product too
    xv = tl.load(x_ptr + b * sxb + d * sxd, mask=mask, other=0.0)
    xr = xv.to(state_ptr.dtype.element_ty).to(tl.float32)
    row = state_ptr + b * ssb + d * ssd
    acc, c1, c2 = conv_history(row, ssk, w_ptr, swd, swk, d, mask, WIDTH)
    acc += tl.load(w_ptr + d * swd + (WIDTH - 1) * swk, mask=mask, other=0.0).to(tl.float32) * xr
    conv_shift_in(row, ssk, mask, xr, c1, c2, WIDTH)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y_ptr + b * syb + d * syd, acc.to(y_ptr.dtype.element_ty), mask=mask)


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, activation="silu"):
    """One decode step; same contract as ``causal_conv1d_update_torch`` (conv_state updated in place)."""
    batch, dim = x.shape
    width = weight.shape[1]
    if tuple(conv_state.shape) != (batch, dim, width - 1):
        raise ValueError(f"conv_state must be ({batch}, {dim}, {width - 1}), got {tuple(conv_state.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    y = torch.empty((batch, dim), device=x.device, dtype=x.dtype)
    block_d = min(max(triton.next_power_of_2(dim), 32), 256)
    grid = (batch, triton.cdiv(dim, block_d))
    _conv_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else x, y, dim,
        *x.stride(), *conv_state.stride(), *weight.stride(), *y.stride(),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=activation in ("silu", "swish"),
        BLOCK_D=block_d, num_warps=4 if block_d >= 256 else 1)
    return y
