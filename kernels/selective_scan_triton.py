"""Fused Triton selective scan, forward and backward (mamba_ssm semantics, see selective_scan_ref).

    x_t = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t,   y_t = <x_t, C_t> + D u_t,   out = y * silu(z)

The expanded state (batch, L, dim, N) never reaches HBM. Two layouts, each where it is cheapest:

* Forward (``_fwd_kernel``): one thread owns one channel and all its N states and walks time in
  register tiles of T steps, so the recurrence is plain in-thread arithmetic (per state and step: one
  exp2, three multiply-adds). It writes the state every CKPT steps ("checkpoints", fp32, N values:
  small) for the backward. Few channels and a long sequence give too few threads, so the sequence is
  also cut into chunks scanned in parallel: pass 1 (same kernel, STATE_ONLY) scans each chunk from a
  zero state and keeps its end state and its delta sum; ``_fwd_combine_kernel`` chains the chunk
  carries (h_next = exp(A * sum delta) * h + h_local); pass 3 rescans every chunk from its true start.
* Backward (``_bwd_kernel``): a tile is (N states) x (TB steps) of one channel with time across the
  lanes, and a program loops over G channels that share B/C, so dB/dC, which sum over channels,
  accumulate in registers. Per tile it recomputes the states from the checkpoint (forward scan), runs
  the adjoint lam_t = C_t dy_t + exp(delta_{t+1} A) lam_{t+1} as a reverse scan, and forms every
  gradient. The adjoint carry between chunks comes from ``_bwd_state_kernel`` (each chunk's adjoint
  at its start from a zero carry) and ``_bwd_combine_kernel``, mirroring the forward.

exp is computed as exp2 with log2(e) folded into A. State and accumulation are fp32 for every input
dtype. Triton >= 3.0 (associative_scan with reverse=True).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
_MAX_N = 64  # states per channel held in registers; larger N goes to the chunked PyTorch path


@triton.jit
def _affine(a1, b1, a2, b2):
    # compose x -> a1 x + b1, then x -> a2 x + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _delta(dt_row, t, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """delta' = softplus(delta + bias), 0 where masked (so exp(delta' A) = 1 and the input term is 0)."""
    x = tl.load(dt_row + t, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    dt = x
    if SOFTPLUS:
        dt = _softplus(x)
    return tl.where(mask, dt, 0.0), x


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(
    u_ptr, dt_ptr, z_ptr, out_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
    ck_ptr, hloc_ptr, sdt_ptr,
    s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_ob, s_od,
    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn,
    L, dim, cpg_B, cpg_C, CH, CKPT, n_ck,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    STATE_ONLY: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
    B_GRP: tl.constexpr, C_GRP: tl.constexpr,
):
    # tiles are [T (time, in-thread), NP (states, in-thread), BLOCK_D (channels, across threads)]
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, None, :]
    n = tl.arange(0, NP)[None, :, None]
    tt = tl.arange(0, T)[:, None, None]
    dmask = d < dim
    nmask = n < N
    dn_mask = dmask & nmask
    d64 = d.to(tl.int64)
    A2 = tl.load(A_ptr + d * N + n, mask=dn_mask, other=0.0) * LOG2E
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    dt_row = dt_ptr + b * s_tb + d64 * s_td
    u_row = u_ptr + b * s_ub + d64 * s_ud
    if B_VAR:
        if B_GRP:
            B_row = B_ptr + b * s_Bb + (d // cpg_B) * s_Bg + n * s_Bn
        else:
            B_row = B_ptr + b * s_Bb + n * s_Bn
    else:
        Bt = tl.load(B_ptr + d * N + n, mask=dn_mask, other=0.0)
    if not STATE_ONLY:
        out_row = out_ptr + b * s_ob + d64 * s_od
        if HAS_Z:
            z_row = z_ptr + b * s_zb + d64 * s_zd
        if HAS_D:
            Dd = tl.load(D_ptr + d, mask=dmask, other=0.0)
        if C_VAR:
            if C_GRP:
                C_row = C_ptr + b * s_Cb + (d // cpg_C) * s_Cg + n * s_Cn
            else:
                C_row = C_ptr + b * s_Cb + n * s_Cn
        else:
            Ct = tl.load(C_ptr + d * N + n, mask=dn_mask, other=0.0)
    t_begin = c * CH
    t_end = tl.minimum(t_begin + CH, L)
    ck_row = ck_ptr + (b * (n_ck + 1)) * dim * N + d * N + n  # + k * dim * N: state before step k*CKPT
    if STATE_ONLY:
        h = tl.zeros([1, NP, BLOCK_D], dtype=tl.float32)
        dsum = tl.zeros([T, 1, BLOCK_D], dtype=tl.float32)
    else:
        h = tl.load(ck_row + (t_begin // CKPT).to(tl.int64) * dim * N, mask=dn_mask, other=0.0)
    for t0 in range(t_begin, t_end, T):
        if not STATE_ONLY:
            if (t0 % CKPT == 0) & (t0 > t_begin):
                tl.store(ck_row + (t0 // CKPT).to(tl.int64) * dim * N, h, mask=dn_mask)
        t = t0 + tt
        tmask = t < t_end
        m = tmask & dmask
        dt, _ = _delta(dt_row, t, m, bias, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_row + t, mask=m, other=0.0).to(tl.float32)
        if B_VAR:
            if B_GRP:
                Bt = tl.load(B_row + t, mask=tmask & dn_mask, other=0.0)
            else:
                Bt = tl.load(B_row + t, mask=tmask & nmask, other=0.0)
        a = tl.exp2(dt * A2)
        bx = (dt * uu) * Bt
        bx = tl.where(tt == 0, bx + a * h, bx)  # fold the carried state into the first step
        _, hs = tl.associative_scan((a, bx), 0, _affine)
        h = tl.sum(tl.where(tt == T - 1, hs, 0.0), axis=0, keep_dims=True)
        if STATE_ONLY:
            dsum += dt
        else:
            if C_VAR:
                if C_GRP:
                    Ct = tl.load(C_row + t, mask=tmask & dn_mask, other=0.0)
                else:
                    Ct = tl.load(C_row + t, mask=tmask & nmask, other=0.0)
            y = tl.sum(hs * Ct, axis=1, keep_dims=True)
            if HAS_D:
                y += Dd * uu
            if HAS_Z:
                zz = tl.load(z_row + t, mask=m, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_row + t, y.to(out_ptr.dtype.element_ty), mask=m)
    if STATE_ONLY:
        n_chunks = tl.num_programs(2) + 1  # the last chunk needs no pass 1
        tl.store(hloc_ptr + ((b * n_chunks + c) * dim + d) * N + n, h, mask=dn_mask)
        tl.store(sdt_ptr + (b * n_chunks + c) * dim + d, tl.sum(dsum, axis=0, keep_dims=True),
                 mask=dmask)
    else:
        if t_end == L:
            tl.store(ck_row + n_ck * dim * N, h, mask=dn_mask)


@triton.jit
def _fwd_combine_kernel(ck_ptr, hloc_ptr, sdt_ptr, A_ptr, dim, n_ck, n_chunks, CK_PER_CHUNK,
                        N: tl.constexpr, BLOCK: tl.constexpr):
    """Chain chunk carries: state entering chunk c+1 = exp(A sum(delta_c)) * state entering c + local."""
    b = tl.program_id(1).to(tl.int64)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (d, n)
    m = idx < dim * N
    d = idx // N
    A2 = tl.load(A_ptr + idx, mask=m, other=0.0) * LOG2E
    ck_row = ck_ptr + b * (n_ck + 1) * dim * N + idx
    h = tl.load(ck_row, mask=m, other=0.0)
    for c in range(0, n_chunks - 1):
        s = tl.load(sdt_ptr + (b * n_chunks + c) * dim + d, mask=m, other=0.0)
        hl = tl.load(hloc_ptr + (b * n_chunks + c) * dim * N + idx, mask=m, other=0.0)
        h = tl.exp2(A2 * s) * h + hl
        tl.store(ck_row + ((c + 1) * CK_PER_CHUNK).to(tl.int64) * dim * N, h, mask=m)


# ----------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bwd_state_kernel(
    dt_ptr, z_ptr, g_ptr, A_ptr, C_ptr, bias_ptr, lloc_ptr, sdt_ptr,
    s_tb, s_td, s_zb, s_zd, s_gb, s_gd, s_Cb, s_Cg, s_Cn,
    L, dim, cpg_C, CH,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    C_VAR: tl.constexpr, C_GRP: tl.constexpr,
):
    """Adjoint at the start of chunk c (c >= 1) from a zero carry at its end, and the decay exponent.

    lam_s = sum_t (prod_{r=s+1..t} a_r) C_t dy_t over the chunk; decay = sum_{r=s+1..e} delta_r, where
    e is the first step of the next chunk. Time runs backwards inside each register tile: position p
    holds step t0 + T-1-p, so a forward scan over positions is the reverse recurrence.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2) + 1
    n_chunks = tl.num_programs(2) + 1
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[None, None, :]
    n = tl.arange(0, NP)[None, :, None]
    tt = tl.arange(0, T)[:, None, None]
    dmask = d < dim
    nmask = n < N
    dn_mask = dmask & nmask
    d64 = d.to(tl.int64)
    A2 = tl.load(A_ptr + d * N + n, mask=dn_mask, other=0.0) * LOG2E
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    dt_row = dt_ptr + b * s_tb + d64 * s_td
    g_row = g_ptr + b * s_gb + d64 * s_gd
    if HAS_Z:
        z_row = z_ptr + b * s_zb + d64 * s_zd
    if C_VAR:
        if C_GRP:
            C_row = C_ptr + b * s_Cb + (d // cpg_C) * s_Cg + n * s_Cn
        else:
            C_row = C_ptr + b * s_Cb + n * s_Cn
    else:
        Ct = tl.load(C_ptr + d * N + n, mask=dn_mask, other=0.0)
    t_begin = c * CH
    t_end = tl.minimum(t_begin + CH, L)
    n_it = tl.cdiv(t_end - t_begin, T)
    lam = tl.zeros([1, NP, BLOCK_D], dtype=tl.float32)
    dsum = tl.zeros([T, 1, BLOCK_D], dtype=tl.float32)
    for i in range(0, n_it):
        t = t_begin + (n_it - 1 - i) * T + (T - 1 - tt)
        tmask = t < t_end
        m = tmask & dmask
        mn = (t + 1 < L) & dmask
        dtn, _ = _delta(dt_row, t + 1, mn, bias, HAS_BIAS, SOFTPLUS)
        g = tl.load(g_row + t, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + t, mask=m, other=0.0).to(tl.float32)
            g = g * zz * tl.sigmoid(zz)
        if C_VAR:
            if C_GRP:
                Ct = tl.load(C_row + t, mask=tmask & dn_mask, other=0.0)
            else:
                Ct = tl.load(C_row + t, mask=tmask & nmask, other=0.0)
        an = tl.exp2(dtn * A2)
        cx = Ct * g
        cx = tl.where(tt == 0, cx + an * lam, cx)
        _, lr = tl.associative_scan((an, cx), 0, _affine)
        lam = tl.sum(tl.where(tt == T - 1, lr, 0.0), axis=0, keep_dims=True)
        dsum += tl.where(tmask, dtn, 0.0)
    tl.store(lloc_ptr + ((b * n_chunks + c) * dim + d) * N + n, lam, mask=dn_mask)
    tl.store(sdt_ptr + (b * n_chunks + c) * dim + d, tl.sum(dsum, axis=0, keep_dims=True), mask=dmask)


@triton.jit
def _bwd_combine_kernel(lam_ptr, lloc_ptr, sdt_ptr, A_ptr, dim, n_chunks,
                        N: tl.constexpr, BLOCK: tl.constexpr):
    """Adjoint entering each chunk from its end: lam(c-1) = lloc(c) + exp(A decay(c)) * lam(c)."""
    b = tl.program_id(1).to(tl.int64)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < dim * N
    d = idx // N
    A2 = tl.load(A_ptr + idx, mask=m, other=0.0) * LOG2E
    row = b * n_chunks * dim * N + idx
    lam = tl.load(lam_ptr + row + (n_chunks - 1) * dim * N, mask=m, other=0.0)
    for i in range(0, n_chunks - 1):
        c = n_chunks - 1 - i
        s = tl.load(sdt_ptr + (b * n_chunks + c) * dim + d, mask=m, other=0.0)
        ll = tl.load(lloc_ptr + row + c * dim * N, mask=m, other=0.0)
        lam = ll + tl.exp2(A2 * s) * lam
        tl.store(lam_ptr + row + (c - 1) * dim * N, lam, mask=m)


@triton.jit
def _bwd_kernel(
    u_ptr, dt_ptr, z_ptr, g_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ck_ptr, lam_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_gb, s_gd, s_xb, s_xd,
    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn,
    L, dim, cpg_B, cpg_C, G, TILES, n_ck,
    N: tl.constexpr, NP: tl.constexpr, TB: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_INIT: tl.constexpr,
):
    # tiles are [NP (states), TB (time)]; program = (channel group of G, batch, chunk of TILES tiles).
    # du, ddelta, dz are contiguous (batch, dim, L): strides s_xb, s_xd.
    pid_g = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    n_chunks = tl.num_programs(2)
    d0 = pid_g * G
    n = tl.arange(0, NP)[:, None]
    tt = tl.arange(0, TB)[None, :]
    nmask = n < N
    dN = dim * N
    if B_VAR:
        B_row = B_ptr + b * s_Bb + (d0 // cpg_B) * s_Bg + n * s_Bn
        # partial sums over this program's channels: (cpg_B // G, batch, groups, N, L), contiguous
        dB_row = dB_ptr + (((d0 % cpg_B) // G) * tl.num_programs(1) * (dim // cpg_B)
                           + b * (dim // cpg_B) + d0 // cpg_B) * N * L + n * L
    if C_VAR:
        C_row = C_ptr + b * s_Cb + (d0 // cpg_C) * s_Cg + n * s_Cn
        dC_row = dC_ptr + (((d0 % cpg_C) // G) * tl.num_programs(1) * (dim // cpg_C)
                           + b * (dim // cpg_C) + d0 // cpg_C) * N * L + n * L
    # adjoint carry, double-buffered by tile parity: (2, batch, n_chunks, dim, N)
    lam_row = lam_ptr + (b * n_chunks + c) * dN + n
    lam_slot = tl.num_programs(1) * n_chunks * dN
    k_first = c * TILES
    k_last = tl.minimum(k_first + TILES, n_ck) - 1
    for kk in range(0, k_last - k_first + 1):
        k = k_last - kk
        rd = (kk % 2) * lam_slot
        wr = ((kk + 1) % 2) * lam_slot
        t = k * TB + tt
        tmask = t < L
        mn = t + 1 < L
        if B_VAR:
            Bt = tl.load(B_row + t, mask=nmask & tmask, other=0.0)
            dB_acc = tl.zeros([NP, TB], dtype=tl.float32)
        if C_VAR:
            Ct = tl.load(C_row + t, mask=nmask & tmask, other=0.0)
            dC_acc = tl.zeros([NP, TB], dtype=tl.float32)
        for j in range(0, G):
            d = d0 + j
            d64 = d.to(tl.int64)
            Arow = tl.load(A_ptr + d * N + n, mask=nmask, other=0.0)
            A2 = Arow * LOG2E
            bias = 0.0
            if HAS_BIAS:
                bias = tl.load(bias_ptr + d)
            dt_row = dt_ptr + b * s_tb + d64 * s_td
            dt, x = _delta(dt_row, t, tmask, bias, HAS_BIAS, SOFTPLUS)
            dtn, _ = _delta(dt_row, t + 1, mn, bias, HAS_BIAS, SOFTPLUS)
            uu = tl.load(u_ptr + b * s_ub + d64 * s_ud + t, mask=tmask, other=0.0).to(tl.float32)
            go = tl.load(g_ptr + b * s_gb + d64 * s_gd + t, mask=tmask, other=0.0).to(tl.float32)
            if not B_VAR:
                Bt = tl.load(B_ptr + d * N + n, mask=nmask, other=0.0)
            if not C_VAR:
                Ct = tl.load(C_ptr + d * N + n, mask=nmask, other=0.0)
            # states of this tile, recomputed from the checkpoint at its start
            a = tl.exp2(A2 * dt)
            dtu = dt * uu
            bx = Bt * dtu
            h0 = tl.load(ck_ptr + (b * (n_ck + 1) + k) * dN + d * N + n, mask=nmask, other=0.0)
            _, h = tl.associative_scan((a, tl.where(tt == 0, bx + a * h0, bx)), 1, _affine)
            # gate
            if HAS_D:
                Dd = tl.load(D_ptr + d)
            if HAS_Z:
                y = tl.sum(h * Ct, axis=0, keep_dims=True)
                if HAS_D:
                    y += Dd * uu
                zz = tl.load(z_ptr + b * s_zb + d64 * s_zd + t, mask=tmask, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zz)
                gz = go * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + b * s_xb + d64 * s_xd + t, gz.to(dz_ptr.dtype.element_ty), mask=tmask)
                dy = go * zz * sz
            else:
                dy = go
            # adjoint lam_t = C_t dy_t + a_{t+1} lam_{t+1}: reverse scan with carry from the next tile
            an = tl.exp2(A2 * dtn)
            lc = tl.load(lam_row + rd + d * N, mask=nmask, other=0.0)
            cx = Ct * dy
            _, lam = tl.associative_scan((an, tl.where(tt == TB - 1, cx + an * lc, cx)), 1, _affine,
                                         reverse=True)
            tl.store(lam_row + wr + d * N, tl.sum(tl.where(tt == 0, lam, 0.0), axis=1, keep_dims=True),
                     mask=nmask)
            if HAS_INIT:
                if k == 0:
                    di = tl.sum(tl.where(tt == 0, a * lam, 0.0), axis=1, keep_dims=True)
                    tl.store(dinit_ptr + b * dN + d * N + n, di, mask=nmask)
            # gradients
            if B_VAR:
                dB_acc += lam * dtu
            else:
                tl.atomic_add(dB_ptr + d * N + n, tl.sum(lam * dtu, axis=1, keep_dims=True), mask=nmask)
            if C_VAR:
                dC_acc += h * dy
            else:
                tl.atomic_add(dC_ptr + d * N + n, tl.sum(h * dy, axis=1, keep_dims=True), mask=nmask)
            lB = tl.sum(lam * Bt, axis=0, keep_dims=True)
            w = lam * (h - bx)  # lam_t * a_t * h_{t-1}: the gradient of a_t times a_t
            tl.atomic_add(dA_ptr + d * N + n, tl.sum(w * dt, axis=1, keep_dims=True), mask=nmask)
            gdt = lB * uu + tl.sum(w * Arow, axis=0, keep_dims=True)
            gu = lB * dt
            if HAS_D:
                gu += Dd * dy
                tl.atomic_add(dD_ptr + d, tl.sum(dy * uu))
            if SOFTPLUS:
                gdt = gdt * tl.sigmoid(x)
            gdt = tl.where(tmask, gdt, 0.0)
            tl.store(du_ptr + b * s_xb + d64 * s_xd + t, gu.to(du_ptr.dtype.element_ty), mask=tmask)
            tl.store(ddt_ptr + b * s_xb + d64 * s_xd + t, gdt.to(ddt_ptr.dtype.element_ty), mask=tmask)
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + d, tl.sum(gdt))
        if B_VAR:
            tl.store(dB_row + t, dB_acc, mask=nmask & tmask)
        if C_VAR:
            tl.store(dC_row + t, dC_acc, mask=nmask & tmask)
        tl.debug_barrier()  # this tile's adjoint carries are read by the next one


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanConfig:
    """Launch shape. ``plan_config`` picks one per problem; tests pass their own to reach every path."""
    T: int          # forward steps per register tile
    fwd_warps: int  # forward channels per program = 32 * fwd_warps
    fwd_chunk: int  # forward chunk length (multiple of tile_b); L <= fwd_chunk means one pass
    tile_b: int     # backward tile length = checkpoint spacing (power of 2)
    G: int          # channels per backward program (divides the channels of a B/C group)
    bwd_warps: int
    bwd_chunk: int  # backward chunk length (multiple of tile_b)


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: few programs run fastest


def _pow2_divisor_at_most(x: int, cap: int) -> int:
    g = 1
    while g * 2 <= cap and x % (g * 2) == 0:
        g *= 2
    return g


def plan_config(batch, dim, L, N, cpg, device) -> ScanConfig:
    """Heuristic launch shape: enough programs to fill the GPU, fewest chunk passes."""
    NP = triton.next_power_of_2(N)
    T = max(1, min(8, 64 // NP))
    sms = _sm_count(device)
    fwd_warps = 4 if dim >= 128 else (2 if dim >= 64 else 1)
    dblocks = triton.cdiv(dim, 32 * fwd_warps)
    tile_b = 128
    n_tiles = triton.cdiv(max(L, 1), tile_b)
    # forward: ~16 warps per SM
    want = max(1, (16 * sms) // (fwd_warps * dblocks * batch))
    n_chunks = min(want, n_tiles)
    fwd_chunk = triton.cdiv(n_tiles, n_chunks) * tile_b
    # backward: G channels per program, the rest of the parallelism from chunks
    bwd_warps = 4
    G = _pow2_divisor_at_most(cpg, 16)
    want = max(1, (6 * sms) // (batch * (dim // G)))
    n_chunks = min(want, n_tiles)
    bwd_chunk = triton.cdiv(n_tiles, n_chunks) * tile_b
    return ScanConfig(T, fwd_warps, fwd_chunk, tile_b, G, bwd_warps, bwd_chunk)


def _rows(x):
    """The kernels need unit stride along L; other strides are passed through."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


class _Problem:
    """Validated shapes, fp32 parameter copies and the B/C layouts shared by forward and backward."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias):
        if u.dim() != 3:
            raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
        self.batch, self.dim, self.L = u.shape
        if delta.shape != u.shape or (z is not None and z.shape != u.shape):
            raise ValueError("delta and z must have u's shape (batch, dim, L)")
        if A.dim() != 2 or A.shape[0] != self.dim or A.is_complex():
            raise ValueError(f"A must be real (dim, N) = ({self.dim}, N), got {tuple(A.shape)}")
        self.N = A.shape[1]
        self.NP = triton.next_power_of_2(self.N)
        self.A = A.detach().float().contiguous()
        self.B_var, self.Bf, self.gB = self._bc(B, "B")
        self.C_var, self.Cf, self.gC = self._bc(C, "C")
        self.cpg_B = self.dim // self.gB
        self.cpg_C = self.dim // self.gC
        self.D = None if D is None else D.detach().float().contiguous()
        self.bias = None if delta_bias is None else delta_bias.detach().float().contiguous()
        for name, v in (("D", self.D), ("delta_bias", self.bias)):
            if v is not None and v.shape != (self.dim,):
                raise ValueError(f"{name} must be ({self.dim},), got {tuple(v.shape)}")

    def _bc(self, X, name):
        if X.is_complex():
            raise ValueError(f"{name} must be real")
        if X.dim() == 2:
            if X.shape != (self.dim, self.N):
                raise ValueError(f"{name} (dim, N) must be ({self.dim}, {self.N}), got {tuple(X.shape)}")
            return False, X.detach().float().contiguous(), 1
        if X.dim() == 3:
            X = X.unsqueeze(1)
        if X.dim() != 4 or X.shape[0] != self.batch or X.shape[2:] != (self.N, self.L):
            raise ValueError(f"{name} must be (batch, N, L), (batch, groups, N, L) or (dim, N); "
                             f"got {tuple(X.shape)}")
        g = X.shape[1]
        if self.dim % g:
            raise ValueError(f"dim={self.dim} is not divisible by {name}'s groups={g}")
        return True, X.detach().float().contiguous(), g

    def config(self, device, cfg):
        cpg = math.gcd(self.cpg_B if self.B_var else self.dim, self.cpg_C if self.C_var else self.dim)
        cfg = cfg or plan_config(self.batch, self.dim, self.L, self.N, cpg, device)
        if cpg % cfg.G or cfg.fwd_chunk % cfg.tile_b or cfg.bwd_chunk % cfg.tile_b:
            raise ValueError(f"bad ScanConfig {cfg} for channels-per-group {cpg}")
        return cfg


def _bc_strides(P):
    sB = P.Bf.stride() if P.B_var else (0, 0, 0, 0)
    sC = P.Cf.stride() if P.C_var else (0, 0, 0, 0)
    return sB[0], sB[1], sB[2], sC[0], sC[1], sC[2]


def _forward(P, u, delta, z, initial_state, cfg):
    batch, dim, L, N, NP = P.batch, P.dim, P.L, P.N, P.NP
    dev = u.device
    out = torch.empty((batch, dim, L), device=dev, dtype=u.dtype)
    n_ck = triton.cdiv(L, cfg.tile_b)
    ck = torch.empty((batch, n_ck + 1, dim, N), device=dev, dtype=torch.float32)
    if initial_state is None:
        ck[:, 0].zero_()
    else:
        ck[:, 0].copy_(initial_state)
    if L == 0:
        ck[:, n_ck].copy_(ck[:, 0])
        return out, ck
    BLOCK_D = 32 * cfg.fwd_warps
    n_chunks = triton.cdiv(L, cfg.fwd_chunk)
    dummy = P.A
    zz = z if z is not None else u
    common = dict(
        N=N, NP=NP, BLOCK_D=BLOCK_D, T=cfg.T, HAS_Z=z is not None, HAS_D=P.D is not None,
        HAS_BIAS=P.bias is not None, B_VAR=P.B_var, C_VAR=P.C_var,
        B_GRP=P.B_var and P.gB > 1, C_GRP=P.C_var and P.gC > 1, num_warps=cfg.fwd_warps)
    args = (u, delta, zz, out, P.A, P.Bf, P.Cf, dummy if P.D is None else P.D,
            dummy if P.bias is None else P.bias)
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
               out.stride(0), out.stride(1), *_bc_strides(P))
    sizes = (L, dim, P.cpg_B, P.cpg_C, cfg.fwd_chunk, cfg.tile_b, n_ck)
    if n_chunks > 1:
        hloc = torch.empty((batch, n_chunks, dim, N), device=dev, dtype=torch.float32)
        sdt = torch.empty((batch, n_chunks, dim), device=dev, dtype=torch.float32)
        grid = (triton.cdiv(dim, BLOCK_D), batch, n_chunks - 1)
        _fwd_kernel[grid](*args, ck, hloc, sdt, *strides, *sizes, STATE_ONLY=True,
                          SOFTPLUS=P.softplus, **common)
        BLOCK = 256
        _fwd_combine_kernel[(triton.cdiv(dim * N, BLOCK), batch)](
            ck, hloc, sdt, P.A, dim, n_ck, n_chunks, cfg.fwd_chunk // cfg.tile_b, N=N, BLOCK=BLOCK,
            num_warps=4)
    grid = (triton.cdiv(dim, BLOCK_D), batch, n_chunks)
    _fwd_kernel[grid](*args, ck, ck, ck, *strides, *sizes, STATE_ONLY=False, SOFTPLUS=P.softplus,
                      **common)
    return out, ck


def _backward(P, u, delta, z, dout, ck, dlast, need_dinit, cfg):
    batch, dim, L, N, NP = P.batch, P.dim, P.L, P.N, P.NP
    dev = u.device
    f32 = dict(device=dev, dtype=torch.float32)
    du = torch.empty((batch, dim, L), device=dev, dtype=u.dtype)
    ddelta = torch.empty((batch, dim, L), device=dev, dtype=delta.dtype)
    dz = torch.empty((batch, dim, L), device=dev, dtype=z.dtype) if z is not None else None
    dA = torch.zeros((dim, N), **f32)
    dD = torch.zeros((dim,), **f32) if P.D is not None else None
    dbias = torch.zeros((dim,), **f32) if P.bias is not None else None
    dinit = torch.zeros((batch, dim, N), **f32) if need_dinit else None
    G = cfg.G
    if P.B_var:
        dB = torch.empty((P.cpg_B // G, batch, P.gB, N, L), **f32)
    else:
        dB = torch.zeros((dim, N), **f32)
    if P.C_var:
        dC = torch.empty((P.cpg_C // G, batch, P.gC, N, L), **f32)
    else:
        dC = torch.zeros((dim, N), **f32)
    n_ck = triton.cdiv(L, cfg.tile_b)
    n_chunks = triton.cdiv(L, cfg.bwd_chunk)
    lam = torch.empty((2, batch, n_chunks, dim, N), **f32)
    if dlast is None:
        lam[0, :, n_chunks - 1].zero_()
    else:
        lam[0, :, n_chunks - 1].copy_(dlast)
    zz = z if z is not None else u
    dummy = P.A
    if n_chunks > 1:
        BLOCK_D = 32 * cfg.fwd_warps
        lloc = torch.empty((batch, n_chunks, dim, N), **f32)
        sdt = torch.empty((batch, n_chunks, dim), **f32)
        sC = _bc_strides(P)[3:]
        _bwd_state_kernel[(triton.cdiv(dim, BLOCK_D), batch, n_chunks - 1)](
            delta, zz, dout, P.A, P.Cf, dummy if P.bias is None else P.bias, lloc, sdt,
            delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1), dout.stride(0),
            dout.stride(1), *sC, L, dim, P.cpg_C, cfg.bwd_chunk,
            N=N, NP=NP, BLOCK_D=BLOCK_D, T=cfg.T, HAS_Z=z is not None,
            HAS_BIAS=P.bias is not None, SOFTPLUS=P.softplus, C_VAR=P.C_var,
            C_GRP=P.C_var and P.gC > 1, num_warps=cfg.fwd_warps)
        BLOCK = 256
        _bwd_combine_kernel[(triton.cdiv(dim * N, BLOCK), batch)](
            lam[0], lloc, sdt, P.A, dim, n_chunks, N=N, BLOCK=BLOCK, num_warps=4)
    grid = (dim // G, batch, n_chunks)
    _bwd_kernel[grid](
        u, delta, zz, dout, P.A, P.Bf, P.Cf, dummy if P.D is None else P.D,
        dummy if P.bias is None else P.bias, ck, lam,
        du, ddelta, dz if dz is not None else du, dA, dB, dC,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        dinit if dinit is not None else dA,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        dout.stride(0), dout.stride(1), dim * L, L, *_bc_strides(P),
        L, dim, P.cpg_B, P.cpg_C, G, cfg.bwd_chunk // cfg.tile_b, n_ck,
        N=N, NP=NP, TB=cfg.tile_b, HAS_Z=z is not None, HAS_D=P.D is not None,
        HAS_BIAS=P.bias is not None, SOFTPLUS=P.softplus, B_VAR=P.B_var, C_VAR=P.C_var,
        HAS_INIT=need_dinit, num_warps=cfg.bwd_warps)
    if P.B_var:
        dB = dB.sum(0) if dB.shape[0] > 1 else dB[0]
    if P.C_var:
        dC = dC.sum(0) if dC.shape[0] > 1 else dC[0]
    return du, ddelta, dz, dA, dB, dC, dD, dbias, dinit


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cfg):
        P = _Problem(u, delta, A, B, C, D, z, delta_bias)
        P.softplus = bool(delta_softplus)
        cfg = P.config(u.device, cfg)
        u, delta, z = _rows(u), _rows(delta), _rows(z)
        init = None
        if initial_state is not None:
            if initial_state.shape != (P.batch, P.dim, P.N):
                raise ValueError(f"initial_state must be ({P.batch}, {P.dim}, {P.N}), "
                                 f"got {tuple(initial_state.shape)}")
            init = initial_state.detach().float()
        out, ck = _forward(P, u, delta, z, init, cfg)
        last_state = ck[:, -1].clone()
        ctx.save_for_backward(u, delta, z, ck)
        ctx.P, ctx.cfg = P, cfg
        ctx.shapes = (B.shape, C.shape)
        ctx.dtypes = (A.dtype, B.dtype, C.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype,
                      None if initial_state is None else initial_state.dtype)
        ctx.has_init = initial_state is not None
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, z, ck = ctx.saved_tensors
        P, cfg = ctx.P, ctx.cfg
        dout = _rows(dout)
        need_dinit = ctx.has_init and ctx.needs_input_grad[9]
        du, ddelta, dz, dA, dB, dC, dD, dbias, dinit = _backward(
            P, u, delta, z, dout, ck, None if dlast is None else dlast.float(), need_dinit, cfg)
        tA, tB, tC, tD, tbias, tinit = ctx.dtypes
        Bs, Cs = ctx.shapes
        dB = dB.reshape(Bs).to(tB)
        dC = dC.reshape(Cs).to(tC)
        return (du, ddelta, dA.to(tA), dB, dC, None if dD is None else dD.to(tD),
                dz, None if dbias is None else dbias.to(tbias), None,
                None if dinit is None else dinit.to(tinit), None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, config: ScanConfig | None = None):
    """Fused selective scan; same arguments and results as ``selective_scan_fn``.

    Returns out (batch, dim, L) in u's dtype, and with ``return_last_state`` also the final state
    (batch, dim, N) in fp32. Every input that requires grad gets one, initial_state included, and a
    gradient flowing into last_state is propagated. ``config`` overrides the launch heuristics.
    """
    if A.shape[-1] > _MAX_N:
        from .selective_scan_torch import selective_scan_chunked
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      return_last_state, initial_state)
    out, last_state = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                             initial_state, config)
    return (out, last_state) if return_last_state else out
