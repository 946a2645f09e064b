"""Scan backward in Gluon (``triton.experimental.gluon``): the algorithm of selective_scan_bwd_triton
with every register layout, and the way per-channel data reach HBM, chosen here.

What made the Triton kernel slow was neither its arithmetic nor its layout conversions but its
per-channel traffic: each step it loaded delta, u, dout, z and stored du, ddelta, dz one channel
a lane, so every one of those instructions touched 32 rows of memory. Giving every lane the same
row instead (a timing probe, wrong results) took the LM shape's forward + backward from 3.15 to
1.93 ms (BENCHMARKS.md, session 13). Here:

* per-channel tensors move a window of WIN = 32 steps at a time: [BD, WIN] loads and stores of
  16 contiguous bytes a lane, staged in shared memory one row a step, which the step reads back
  one channel a lane;
* one lane holds one channel and all its states (layout ``S``): sums over states (<h, C>,
  <lam, B>, <lam a h, A>) are in-thread adds, per-channel values meet the state tiles without a
  layout conversion, B/C rows and the scratch state are 16-byte vector loads;
* the dB/dC sums over the block's channels are the only cross-lane work: each step's [NP, BD]
  terms go to shared memory, and once a tile, after a barrier, each lane adds up half a state
  row in-thread (layout ``T``), one shuffle joining the halves.

Covers the plans' common case: one warp of 32 channels whose B/C rows are one group (or fixed
B/C), N <= 16, 2-step tiles, checkpoints every multiple of 32 steps. Everything else runs
selective_scan_bwd_triton's kernel, which is also what Triton builds without Gluon (before 3.5)
and what the interpreter runs. Same arguments, scratch layout and results as ``_bwd_kernel``.
Uses ``shared_memory_descriptor._reinterpret`` (Triton 3.6 and 3.8) to view a window both by
row and as a whole.
"""
from __future__ import annotations

import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .gluon_windows import (WIN, _cta_barrier, _flush_out, _get, _put, _stage_in, supports,
                            window, window_rows, window_steps)
from .selective_scan_bwd_triton import (LN2, _bc_sum_row, _bwd_param_grads, _ld_bc,
                                        _step_masks)
from .selective_scan_triton import _channel_params, _delta, _fwd_step, _load_delta

LANES = 32  # channels a program: one warp, one channel a lane
MAX_NP = 16  # states a lane holds; more would not fit the registers next to the tile's decays
COVERS = ("32-channel blocks of one B/C group (or fixed B/C), N <= 16, 2-step tiles and "
          "checkpoints every multiple of 32 steps")


def supported(N, NP, BD, gsub_B, gsub_C, tile, ckpt, B_var, C_var) -> bool:
    """Whether this kernel covers a launch (else the Triton kernel runs)."""
    return (BD == LANES and NP <= MAX_NP and tile == 2 and supports(ckpt)
            and (gsub_B == BD or not B_var) and (gsub_C == BD or not C_var))


@gluon.jit
def _put_sums(buf, slot: gl.constexpr, row, t, tend, nT, N: gl.constexpr, T: gl.constexpr,
              ATOMIC: gl.constexpr, MASKED: gl.constexpr):
    """Sum staging slot ``slot`` ([NP, BD]) over the channels and store (or add) it as step t's
    row of dB or dC."""
    s = gl.sum(buf.index(slot).load(T), axis=1)
    m = nT < N
    if MASKED:
        m = m & (t < tend)
    if ATOMIC:
        gl.atomic_add(row + t * N + nT, s, mask=m, sem="relaxed")
    else:
        gl.store(row + t * N + nT, s, mask=m)


@gluon.jit
def _in_step(h, xr, ur, gr, zr, t, i, m, mb, A2, bias, Bd, Cd, Dd, dz_w, B_row, C_row, buf,
             slot: gl.constexpr, dCf, N: gl.constexpr, HAS_Z: gl.constexpr, HAS_D: gl.constexpr,
             HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr, B_VAR: gl.constexpr,
             C_VAR: gl.constexpr):
    """Step t (row i of the window) forward from the state h entering it: h_t and what the way
    back needs (a_t, a_t h_{t-1}, delta'_t, its pre-softplus value, u_t, dy_t); puts dz_t in
    the window's dz rows, stages dC_t's terms h_t dy_t in ``slot`` (or adds them to dCf for a
    fixed C)."""
    dt, x = _delta(xr, m, bias, HAS_BIAS, SOFTPLUS)
    uu = ur.to(gl.float32)
    gg = gr.to(gl.float32)
    if HAS_Z:
        zz = zr.to(gl.float32)
        sz = tl.sigmoid(zz)
        dy = gg * zz * sz
    else:
        dy = gg
    a = gl.exp2(A2 * dt[None, :])
    ha = a * h
    h = ha + (dt * uu)[None, :] * _ld_bc(B_row, t * N, mb, Bd, B_VAR)
    zc = h * dy[None, :]
    if C_VAR:
        buf.index(slot).store(zc)
    else:
        dCf += zc
    if HAS_Z:
        y = gl.sum(h * _ld_bc(C_row, t * N, mb, Cd, C_VAR), axis=0)
        if HAS_D:
            y += Dd * uu
        _put(dz_w, i, gg * sz * (1.0 + zz * (1.0 - sz)) * y)
    return h, a, ha, dt, x, uu, dy, dCf


@gluon.jit
def _out_step(lam, a_nx, a, ha, dt, x, uu, dy, dA_acc, dBf, dD_acc, db_acc, t, i, m, mb, A2, Bd,
              Cd, Dd, du_w, ddt_w, B_row, C_row, buf, slot: gl.constexpr, N: gl.constexpr,
              HAS_D: gl.constexpr, SOFTPLUS: gl.constexpr, B_VAR: gl.constexpr,
              C_VAR: gl.constexpr):
    """Step t (row i of the window) backward: lam_t = C_t dy_t + a_{t+1} lam_{t+1}, the
    accumulators, dB_t's terms lam delta' u staged in ``slot`` (or added to dBf), du_t and
    ddelta_t put in the window's rows. Returns lam_t and a_t (the decay for step t - 1)."""
    lam = _ld_bc(C_row, t * N, mb, Cd, C_VAR) * dy[None, :] + a_nx * lam
    zb = lam * (dt * uu)[None, :]
    if B_VAR:
        buf.index(slot).store(zb)
    else:
        dBf += zb
    w = lam * ha
    dA_acc += w * dt[None, :]
    q = gl.sum(lam * _ld_bc(B_row, t * N, mb, Bd, B_VAR), axis=0)
    r = gl.sum(w * A2, axis=0)
    ddt = q * uu + r * LN2  # A2 = A log2(e)
    du = q * dt
    if HAS_D:
        du += Dd * dy
    if SOFTPLUS:
        ddt = ddt * tl.sigmoid(x)
    ddt = gl.where(m, ddt, 0.0)
    _put(du_w, i, du)
    _put(ddt_w, i, ddt)
    return lam, a, dA_acc, dBf, dD_acc + dy * uu, db_acc + ddt


@gluon.jit
def _bwd_tile(h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, t0, w0, tend, dmask, nmask2, nT,
              A2, bias, Bd, Cd, Dd, x_w, u_w, g_w, z_w, du_w, ddt_w, dz_w, B_row, C_row, dB_row,
              dC_row, buf, N: gl.constexpr, PL: gl.constexpr, T: gl.constexpr,
              BC_ATOMIC: gl.constexpr, MASKED: gl.constexpr, HAS_Z: gl.constexpr,
              HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
              B_VAR: gl.constexpr, C_VAR: gl.constexpr):
    """Steps t0, t0 + 1 (those < tend if MASKED) of the window starting at w0: forward from h
    keeping each step's decay in registers, back from lam (d_nx: delta' of step t0 + 2), then
    the steps' dB/dC channel sums. Returns lam, the tile's first delta' and the accumulators."""
    i0 = t0 - w0
    m0, k0 = _step_masks(t0, tend, dmask, nmask2, MASKED)
    m1, k1 = _step_masks(t0 + 1, tend, dmask, nmask2, MASKED)
    x0r = _get(x_w, i0, PL)
    u0r = _get(u_w, i0, PL)
    g0r = _get(g_w, i0, PL)
    x1r = _get(x_w, i0 + 1, PL)
    u1r = _get(u_w, i0 + 1, PL)
    g1r = _get(g_w, i0 + 1, PL)
    z0r = x0r
    z1r = x1r
    if HAS_Z:
        z0r = _get(z_w, i0, PL)
        z1r = _get(z_w, i0 + 1, PL)
    h, a0, ha0, d0, x0, u0, y0, dCf = _in_step(
        h, x0r, u0r, g0r, z0r, t0, i0, m0, k0, A2, bias, Bd, Cd, Dd, dz_w, B_row, C_row, buf, 0,
        dCf, N, HAS_Z, HAS_D, HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
    h, a1, ha1, d1, x1, u1, y1, dCf = _in_step(
        h, x1r, u1r, g1r, z1r, t0 + 1, i0 + 1, m1, k1, A2, bias, Bd, Cd, Dd, dz_w, B_row, C_row,
        buf, 1, dCf, N, HAS_Z, HAS_D, HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
    a_nx = gl.exp2(A2 * d_nx[None, :])
    lam, a_nx, dA_acc, dBf, dD_acc, db_acc = _out_step(
        lam, a_nx, a1, ha1, d1, x1, u1, y1, dA_acc, dBf, dD_acc, db_acc, t0 + 1, i0 + 1, m1, k1,
        A2, Bd, Cd, Dd, du_w, ddt_w, B_row, C_row, buf, 3, N, HAS_D, SOFTPLUS, B_VAR, C_VAR)
    lam, a_nx, dA_acc, dBf, dD_acc, db_acc = _out_step(
        lam, a_nx, a0, ha0, d0, x0, u0, y0, dA_acc, dBf, dD_acc, db_acc, t0, i0, m0, k0, A2, Bd,
        Cd, Dd, du_w, ddt_w, B_row, C_row, buf, 2, N, HAS_D, SOFTPLUS, B_VAR, C_VAR)
    if B_VAR or C_VAR:
        _cta_barrier()  # the slots written above, read across lanes below
        if C_VAR:
            _put_sums(buf, 0, dC_row, t0, tend, nT, N, T, BC_ATOMIC, MASKED)
            _put_sums(buf, 1, dC_row, t0 + 1, tend, nT, N, T, BC_ATOMIC, MASKED)
        if B_VAR:
            _put_sums(buf, 2, dB_row, t0, tend, nT, N, T, BC_ATOMIC, MASKED)
            _put_sums(buf, 3, dB_row, t0 + 1, tend, nT, N, T, BC_ATOMIC, MASKED)
        _cta_barrier()  # read before the next tile overwrites them
    return lam, d0, dA_acc, dBf, dCf, dD_acc, db_acc


@gluon.jit
def _state_step(h, x_w, u_w, i, t, m, mb, A2, bias, Bd, B_row, PL: gl.constexpr,
                N: gl.constexpr, HAS_BIAS: gl.constexpr, SOFTPLUS: gl.constexpr,
                B_VAR: gl.constexpr):
    dt, _ = _delta(_get(x_w, i, PL), m, bias, HAS_BIAS, SOFTPLUS)
    uu = _get(u_w, i, PL).to(gl.float32)
    return _fwd_step(h, dt[None, :], (dt * uu)[None, :], _ld_bc(B_row, t * N, mb, Bd, B_VAR), A2)


@gluon.jit
def _bwd_kernel_gluon(
    u_ptr, dt_ptr, z_ptr, g_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ck_ptr, lam_ptr, scr_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_gb, s_gd, s_xb, s_xd,
    s_Bb, s_Bg, s_Cb, s_Cg,
    L, dim, cpg_B, cpg_C, CH, CKPT, n_ck,
    N: gl.constexpr, NP: gl.constexpr, BD: gl.constexpr, GSUB_B: gl.constexpr,
    GSUB_C: gl.constexpr, BC_ATOMIC: gl.constexpr,
    HAS_Z: gl.constexpr, HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr,
    SOFTPLUS: gl.constexpr, B_VAR: gl.constexpr, C_VAR: gl.constexpr, HAS_INIT: gl.constexpr,
    TILE: gl.constexpr = 2,
):
    """Backward of chunk c of BD = 32 channels of one batch row (see ``supported``); arguments,
    scratch and outputs as selective_scan_bwd_triton._bwd_kernel. CKPT and CH are multiples of
    WIN."""
    # S: a lane holds one channel's NP states (tiles [NP, BD]); PL: per-channel values [BD], one
    # a lane, meeting the tiles as [None, :] (a [1, BD] tensor in S would hold NP copies in every
    # lane). T: dB/dC channel sums read back, a lane holds BD * NP / 32 channels of one state row.
    S: gl.constexpr = gl.BlockedLayout([NP, 1], [1, 32], [1, 1], [0, 1])
    PL: gl.constexpr = gl.SliceLayout(0, S)
    T: gl.constexpr = gl.BlockedLayout([1, BD * NP // 32], [NP, 32 // NP], [1, 1], [1, 0])
    SM: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [1, 0])
    buf = gl.allocate_shared_memory(gl.float32, [4, NP, BD], SM)
    x_w = window(dt_ptr.dtype.element_ty, BD)
    u_w = window(u_ptr.dtype.element_ty, BD)
    g_w = window(g_ptr.dtype.element_ty, BD)
    z_w = window(z_ptr.dtype.element_ty, BD)
    du_w = window(du_ptr.dtype.element_ty, BD)
    ddt_w = window(ddt_ptr.dtype.element_ty, BD)
    dz_w = window(dz_ptr.dtype.element_ty, BD)
    pid_d = gl.program_id(0)
    b = gl.program_id(1).to(gl.int64)
    c = gl.program_id(2)
    n_chunks = gl.num_programs(2)
    n_b = gl.num_programs(1)
    n2 = gl.arange(0, NP, layout=gl.SliceLayout(1, S))[:, None]
    d0 = pid_d * BD
    d1 = d0 + gl.arange(0, BD, layout=PL)
    d2 = d1[None, :]
    nT = gl.arange(0, NP, layout=gl.SliceLayout(1, T))
    dmask = d1 < dim
    nmask2 = n2 < N
    dn2 = (d2 < dim) & nmask2
    A2, bias, Dd = _channel_params(A_ptr, bias_ptr, D_ptr, d1, d2, n2, dn2, dmask, N, HAS_BIAS,
                                   HAS_D)
    tw = window_steps()
    dt_rows, dc = window_rows(dt_ptr + b * s_tb, d0, s_td, BD)
    cmask = dc < dim
    u_rows, _ = window_rows(u_ptr + b * s_ub, d0, s_ud, BD)
    z_rows, _ = window_rows(z_ptr + b * s_zb, d0, s_zd, BD)
    g_rows, _ = window_rows(g_ptr + b * s_gb, d0, s_gd, BD)
    du_rows, _ = window_rows(du_ptr + b * s_xb, d0, s_xd, BD)
    ddt_rows, _ = window_rows(ddt_ptr + b * s_xb, d0, s_xd, BD)
    dz_rows, _ = window_rows(dz_ptr + b * s_xb, d0, s_xd, BD)
    # the block's B/C group rows ([NP, 1], every lane the same 16 values), fixed B/C ([NP, BD]),
    # and its dB/dC rows: part (d0 % cpg) // BD of (parts, batch, groups, L, N), or the one
    # buffer every program adds into (BC_ATOMIC)
    B_row = B_ptr + b * s_Bb + (d0 // cpg_B) * s_Bg + n2
    C_row = C_ptr + b * s_Cb + (d0 // cpg_C) * s_Cg + n2
    Bd = 0.0
    Cd = 0.0
    if not B_VAR:
        Bd = gl.load(B_ptr + d2 * N + n2, mask=dn2, other=0.0)
    if not C_VAR:
        Cd = gl.load(C_ptr + d2 * N + n2, mask=dn2, other=0.0)
    dB_row = _bc_sum_row(dB_ptr, b, d0, 0, dim, L, n_b, cpg_B, N, BD, BC_ATOMIC)
    dC_row = _bc_sum_row(dC_ptr, b, d0, 0, dim, L, n_b, cpg_C, N, BD, BC_ATOMIC)
    ck_row = ck_ptr + b * (n_ck + 1) * dim * N + d2 * N + n2
    # scratch as the Triton kernel lays it out: per tile [BD, NP], a lane's states contiguous.
    # The lane that stores a state is the one that loads it back, so no barrier is needed.
    SROW: gl.constexpr = BD * NP
    scr_row = scr_ptr + ((pid_d * n_b + b) * n_chunks + c).to(gl.int64) * (CKPT // 2) * SROW
    scr_row = scr_row + (d2 - d0) * NP + n2
    t_begin = c * CH
    t_end = gl.minimum(t_begin + CH, L)
    lam = gl.load(lam_ptr + ((b * n_chunks + c) * dim + d2) * N + n2, mask=dn2, other=0.0)
    d_nx, _ = _load_delta(dt_ptr + b * s_tb + d1.to(gl.int64) * s_td + t_end,
                          (t_end < L) & dmask, bias, HAS_BIAS, SOFTPLUS)
    dA_acc = gl.zeros([NP, BD], gl.float32, S)
    dBf = gl.zeros([NP, BD], gl.float32, S)
    dCf = gl.zeros([NP, BD], gl.float32, S)
    dD_acc = gl.zeros([BD], gl.float32, PL)
    db_acc = gl.zeros([BD], gl.float32, PL)
    n_blk = gl.cdiv(t_end - t_begin, CKPT)
    for ib in range(0, n_blk):
        s0 = t_begin + (n_blk - 1 - ib) * CKPT
        s1 = gl.minimum(s0 + CKPT, t_end)
        s_full = s0 + ((s1 - s0) // 2) * 2
        n_win = gl.cdiv(s1 - s0, WIN)
        h = gl.load(ck_row + (s0 // CKPT).to(gl.int64) * dim * N, mask=dn2, other=0.0)
        # forward over the block, window by window, the state entering every tile to scratch
        for wi in range(0, n_win):
            w0 = gl.multiple_of(s0 + wi * WIN, WIN)
            _cta_barrier()  # the window before has been read
            _stage_in(x_w, dt_rows, w0, s1, cmask, tw)
            _stage_in(u_w, u_rows, w0, s1, cmask, tw)
            _cta_barrier()
            for t0 in range(w0, gl.minimum(w0 + WIN, s_full), 2):
                gl.store(scr_row + ((t0 - s0) // 2) * SROW, h)
                h = _state_step(h, x_w, u_w, t0 - w0, t0, dmask, nmask2, A2, bias, Bd, B_row,
                                PL, N, HAS_BIAS, SOFTPLUS, B_VAR)
                h = _state_step(h, x_w, u_w, t0 + 1 - w0, t0 + 1, dmask, nmask2, A2, bias, Bd,
                                B_row, PL, N, HAS_BIAS, SOFTPLUS, B_VAR)
        if s_full < s1:
            gl.store(scr_row + ((s_full - s0) // 2) * SROW, h)
        # backward over the block's windows and their tiles from the last, the partial last
        # tile first; outputs go out a window at a time
        for wr in range(0, n_win):
            w0 = gl.multiple_of(s0 + (n_win - 1 - wr) * WIN, WIN)
            w1 = gl.minimum(w0 + WIN, s1)
            _cta_barrier()
            _stage_in(x_w, dt_rows, w0, s1, cmask, tw)
            _stage_in(u_w, u_rows, w0, s1, cmask, tw)
            _stage_in(g_w, g_rows, w0, s1, cmask, tw)
            if HAS_Z:
                _stage_in(z_w, z_rows, w0, s1, cmask, tw)
            _cta_barrier()
            w_full = gl.minimum(w1, s_full)
            if w_full < w1:
                h = gl.load(scr_row + ((s_full - s0) // 2) * SROW)
                lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc = _bwd_tile(
                    h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, s_full, w0, s1, dmask,
                    nmask2, nT, A2, bias, Bd, Cd, Dd, x_w, u_w, g_w, z_w, du_w, ddt_w, dz_w,
                    B_row, C_row, dB_row, dC_row, buf, N, PL, T, BC_ATOMIC, True, HAS_Z, HAS_D,
                    HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
            for j in range(0, (w_full - w0) // 2):
                t0 = w_full - 2 - 2 * j
                h = gl.load(scr_row + ((t0 - s0) // 2) * SROW)
                lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc = _bwd_tile(
                    h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, t0, w0, s1, dmask, nmask2,
                    nT, A2, bias, Bd, Cd, Dd, x_w, u_w, g_w, z_w, du_w, ddt_w, dz_w, B_row,
                    C_row, dB_row, dC_row, buf, N, PL, T, BC_ATOMIC, False, HAS_Z, HAS_D,
                    HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
            _cta_barrier()  # the window's outputs are in shared memory
            _flush_out(du_w, du_rows, w0, w1, cmask, tw)
            _flush_out(ddt_w, ddt_rows, w0, w1, cmask, tw)
            if HAS_Z:
                _flush_out(dz_w, dz_rows, w0, w1, cmask, tw)
    _bwd_param_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr, dA_acc, dBf,
                     dCf, dD_acc, db_acc, dmask, lam, gl.exp2(A2 * d_nx[None, :]), b, c, d2, n2,
                     dn2, dim, N, False, False, B_VAR, C_VAR, HAS_INIT)
    # dD and d(delta_bias) from the 1-D per-channel accumulators (one atomic a lane)
    if HAS_D:
        gl.atomic_add(dD_ptr + d1, dD_acc, mask=dmask)
    if HAS_BIAS:
        gl.atomic_add(dbias_ptr + d1, db_acc, mask=dmask)
