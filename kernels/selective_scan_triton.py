"""Fused Triton selective scan, forward and backward (mamba_ssm semantics, see selective_scan_ref).

    x_t = exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t,   y_t = <x_t, C_t> + D u_t,   out = y * silu(z)

The expanded state (batch, L, dim, N) never reaches HBM. Time never crosses lanes: a thread
holds whole recurrences (in the forward one channel and all its N states; in the backward Triton
lays the state tiles out 4 states x 4 channels a thread), lanes and warps span channels. The
forward kernels also hold a register tile of 4 time steps (``_split4`` gives the per-step
slices), the backward goes step by step (2-D tensors only). The recurrence is then plain
in-thread arithmetic (per state and step: one exp2 and a few multiply-adds), with no cross-lane
scans; Triton's own scan lowering put time across lanes and cost ~15x more instructions.

* Forward (``_fwd_kernel``): walks its chunk of time tile by tile and writes the state every CKPT
  steps (fp32 "checkpoints", N values per channel) when a backward will follow. Few channels and a
  long sequence give too few threads, so the sequence is cut into chunks scanned in parallel: pass 1
  (same kernel, STATE_ONLY) scans each chunk from a zero state, keeping its end state and delta sum;
  ``_fwd_combine_kernel`` chains the carries (h_next = exp(A sum delta) h + h_local); pass 3 rescans
  each chunk from its true start.
* Backward (``_bwd_kernel`` and its helpers in selective_scan_bwd_triton): walks
  its chunk from the end, one checkpoint block at a time: rescan the block forward from its
  checkpoint, keeping the state entering each tile of 2 steps in a per-program scratch (L2), then
  run the tiles in reverse: recompute the tile's states, run the adjoint
  lam_t = C_t dy_t + exp(delta_{t+1} A) lam_{t+1} step by step, and form every gradient. dA, dD,
  d(delta_bias) and time-invariant dB/dC accumulate per thread over the whole chunk; variable dB/dC
  sum over channels, i.e. across lanes, by warp shuffles (``_put_chan_sum``). The
  adjoint carry between chunks comes from ``_bwd_state_kernel`` (each chunk's adjoint at its start
  from a zero carry) and ``_bwd_combine_kernel``, mirroring the forward. On a GPU the same
  algorithm runs by default as ``_bwd_kernel_gluon`` (selective_scan_bwd_gluon), written in
  Gluon so that per-channel data move a 32-step window at a time: 1.2-1.6x faster. This module's
  kernel is the fallback (other launch shapes, Triton without Gluon) and what the interpreter
  runs; ``ScanConfig.gluon`` chooses.

exp is computed as exp2 with log2(e) folded into A. State and accumulation are fp32 for every input
dtype. Needs Triton with tl.join/tl.split (3.0+); tested with 3.6 on an H100 and 3.8's interpreter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# approximate-math inline PTX on the GPU; the interpreter (TRITON_INTERPRET=1) runs plain Triton ops
FAST_MATH = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")
_MAX_N = 64  # states per channel held in registers; larger N goes to the chunked PyTorch path
_PARTIALS_MAX_BYTES = 1 << 32  # see plan_config


# ----------------------------------------------------------------------------------------------
# small helpers. A tile is [NP (states), BD (channels), 4 (steps)]: one thread owns one channel,
# its NP states and the 4 steps, so the recurrence never leaves the thread. Per-channel tiles are
# [1, BD, 4], per-state tiles (B, C) [NP, 1, 4]; _split4 turns a tile into its 4 step slices.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _split4(x):
    e, o = tl.split(tl.reshape(x, [x.shape[0], x.shape[1], 2, 2]))  # step = 2 * i + j
    x0, x2 = tl.split(e)
    x1, x3 = tl.split(o)
    return x0, x1, x2, x3


@triton.jit
def _join4(x0, x1, x2, x3):
    return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [x0.shape[0], x0.shape[1], 4])


@triton.jit
def _softplus(x, FAST: tl.constexpr):
    # log(1 + e^x), x above 20 passed through as mamba_ssm does. FAST: the GPU's approximate
    # ex2/lg2 (relative error ~2^-22) instead of Triton's precise log, ~25 instructions per call;
    # off in the interpreter, which cannot run inline PTX.
    if FAST:
        e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x * LOG2E],
                                      dtype=tl.float32, is_pure=True, pack=1)
        sp = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [1.0 + e],
                                       dtype=tl.float32, is_pure=True, pack=1) * 0.6931471805599453
    else:
        sp = tl.log(1.0 + tl.exp(x))
    return tl.where(x <= 20.0, sp, x)


@triton.jit
def _load_delta(ptr, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                FAST: tl.constexpr = FAST_MATH):
    """delta' = softplus(delta + bias) and the pre-softplus value; 0 where masked (exp(0 A) = 1)."""
    return _delta(tl.load(ptr, mask=mask, other=0.0), mask, bias, HAS_BIAS, SOFTPLUS, FAST)


@triton.jit
def _delta(x, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
           FAST: tl.constexpr = FAST_MATH):
    """_load_delta on a delta already loaded (x, masked loads giving 0)."""
    x = x.to(tl.float32)
    if HAS_BIAS:
        x = x + bias
    dt = x
    if SOFTPLUS:
        dt = _softplus(x, FAST)
    return tl.where(mask, dt, 0.0), x


@triton.jit
def _fwd_step(h, dt, dtu, Bs, A2):
    return tl.exp2(dt * A2) * h + dtu * Bs


# ----------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tile_program(A_ptr, bias_ptr, D_ptr, pid_d, dim, N: tl.constexpr, NP: tl.constexpr,
                  BD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """The index tiles of a program over channels [pid_d * BD, + BD): n [NP, 1, 1], d [1, BD, 1]
    (and d64), tt [1, 1, 4] steps, n2 [NP, 1], d2 [1, BD], their masks, and the channels' A
    (times log2 e, [NP, BD]), delta bias and D ([1, BD, 1], or 0.0 when absent)."""
    n = tl.arange(0, NP)[:, None, None]
    d = pid_d * BD + tl.arange(0, BD)[None, :, None]
    tt = tl.arange(0, 4)[None, None, :]
    n2 = tl.arange(0, NP)[:, None]
    d2 = pid_d * BD + tl.arange(0, BD)[None, :]
    dmask = d < dim
    nmask = n < N
    dn2 = (d2 < dim) & (n2 < N)
    d64 = d.to(tl.int64)
    A2, bias, Dd = _channel_params(A_ptr, bias_ptr, D_ptr, d, d2, n2, dn2, dmask, N, HAS_BIAS,
                                   HAS_D)
    return n, d, tt, n2, d2, dmask, nmask, dn2, d64, A2, bias, Dd


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, d, d2, n2, dn2, dmask, N: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A program's A (times log2 e, [NP, BD] at d2 / n2), delta bias and D (loaded at d, in the
    shape the caller keeps per-channel values, or 0.0 when absent)."""
    A2 = tl.load(A_ptr + d2 * N + n2, mask=dn2, other=0.0) * LOG2E
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    Dd = 0.0
    if HAS_D:
        Dd = tl.load(D_ptr + d, mask=dmask, other=0.0)
    return A2, bias, Dd


@triton.jit
def _fixed_bc(B_ptr, C_ptr, d2, n2, dn2, N: tl.constexpr, B_VAR: tl.constexpr,
              C_VAR: tl.constexpr):
    """Time-invariant B / C of the program's channels ([NP, BD], from (dim, N)); 0.0 for the
    time-varying ones, which are loaded step by step."""
    Bd = 0.0
    if not B_VAR:
        Bd = tl.load(B_ptr + d2 * N + n2, mask=dn2, other=0.0)
    Cd = 0.0
    if not C_VAR:
        Cd = tl.load(C_ptr + d2 * N + n2, mask=dn2, other=0.0)
    return Bd, Cd


@triton.jit
def _fwd_tile(h, t0, tmask, dmask, nmask, A2, bias, Bd, Cd, Dd, dt_row, u_row, z_row, out_row,
              B_row, C_row, N: tl.constexpr, MASKED: tl.constexpr, STATE_ONLY: tl.constexpr,
              HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
              SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr):
    """4 steps for BD channels from state h; returns (state after the tile, delta' tile).

    Full tiles are masked along channels only, so each thread's 4 steps stay one vector load and
    Triton keeps time inside the thread; MASKED handles the last, partial tile.
    Per-channel rows (*_row) advance by t0, B/C rows ((L, N) layout) by t0 * N.
    """
    if MASKED:
        m = tmask & dmask
        mb = tmask & nmask
    else:
        m = dmask
        mb = nmask
    dt, _ = _load_delta(dt_row + t0, m, bias, HAS_BIAS, SOFTPLUS)
    uu = tl.load(u_row + t0, mask=m, other=0.0).to(tl.float32)
    dtu = dt * uu
    if B_VAR:
        b0, b1, b2, b3 = _split4(tl.load(B_row + t0 * N, mask=mb, other=0.0))
    else:
        b0, b1, b2, b3 = Bd, Bd, Bd, Bd
    d0, d1, d2, d3 = _split4(dt)
    e0, e1, e2, e3 = _split4(dtu)
    h0 = _fwd_step(h, d0, e0, b0, A2)
    h1 = _fwd_step(h0, d1, e1, b1, A2)
    h2 = _fwd_step(h1, d2, e2, b2, A2)
    h3 = _fwd_step(h2, d3, e3, b3, A2)
    if not STATE_ONLY:
        if C_VAR:
            c0, c1, c2, c3 = _split4(tl.load(C_row + t0 * N, mask=mb, other=0.0))
        else:
            c0, c1, c2, c3 = Cd, Cd, Cd, Cd
        y = _join4(tl.sum(h0 * c0, axis=0, keep_dims=True), tl.sum(h1 * c1, axis=0, keep_dims=True),
                   tl.sum(h2 * c2, axis=0, keep_dims=True), tl.sum(h3 * c3, axis=0, keep_dims=True))
        if HAS_D:
            y += Dd * uu
        if HAS_Z:
            zz = tl.load(z_row + t0, mask=m, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_row + t0, y.to(out_row.dtype.element_ty), mask=m)
    return h3, dt


@triton.jit
def _fwd_kernel(
    u_ptr, dt_ptr, z_ptr, out_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr,
    ck_ptr, hloc_ptr, sdt_ptr,
    s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_ob, s_od,
    s_Bb, s_Bg, s_Cb, s_Cg,
    L, dim, cpg_B, cpg_C, CH, CKPT, n_ck,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr,
    STATE_ONLY: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
    B_GRP: tl.constexpr, C_GRP: tl.constexpr,
):
    """Scan chunk c (steps [c*CH, c*CH + CH)) of BD channels of one batch row.

    STATE_ONLY (pass 1): from a zero state; writes the end state to hloc and the delta' sum to sdt.
    Otherwise (pass 3): from checkpoint c*CH/CKPT; writes out, the checkpoints inside the chunk
    and, for the last chunk, the final state. Checkpoints are (batch, n_ck + 1, dim, N) fp32.
    """
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    n, d, tt, n2, d2, dmask, nmask, dn2, d64, A2, bias, Dd = _tile_program(
        A_ptr, bias_ptr, D_ptr, pid_d, dim, N, NP, BD, HAS_BIAS, HAS_D)
    # pointer tiles are built once; the loop adds a scalar offset
    dt_row = dt_ptr + b * s_tb + d64 * s_td + tt
    u_row = u_ptr + b * s_ub + d64 * s_ud + tt
    out_row = out_ptr + b * s_ob + d64 * s_od + tt
    z_row = z_ptr + b * s_zb + d64 * s_zd + tt
    if B_GRP:  # B/C as (batch, groups, L, N) fp32
        B_row = B_ptr + b * s_Bb + tl.minimum(d // cpg_B, dim // cpg_B - 1) * s_Bg + tt * N + n
    else:
        B_row = B_ptr + b * s_Bb + tt * N + n
    if C_GRP:
        C_row = C_ptr + b * s_Cb + tl.minimum(d // cpg_C, dim // cpg_C - 1) * s_Cg + tt * N + n
    else:
        C_row = C_ptr + b * s_Cb + tt * N + n
    Bd, Cd = _fixed_bc(B_ptr, C_ptr, d2, n2, dn2, N, B_VAR, C_VAR)
    t_begin = c * CH
    t_end = tl.minimum(t_begin + CH, L)
    t_full = t_begin + ((t_end - t_begin) // 4) * 4
    ck_row = ck_ptr + b * (n_ck + 1) * dim * N + d2 * N + n2  # + k * dim * N
    if STATE_ONLY:
        h = tl.zeros([NP, BD], dtype=tl.float32)
        dsum = tl.zeros([1, BD, 4], dtype=tl.float32)
    else:
        h = tl.load(ck_row + (t_begin // CKPT).to(tl.int64) * dim * N, mask=dn2, other=0.0)
    for t0 in range(t_begin, t_full, 4):
        h, dt = _fwd_tile(h, t0, tt >= 0, dmask, nmask, A2, bias, Bd, Cd, Dd, dt_row, u_row, z_row,
                          out_row, B_row, C_row, N, False, STATE_ONLY, HAS_Z, HAS_D, HAS_BIAS,
                          SOFTPLUS, B_VAR, C_VAR)
        if STATE_ONLY:
            dsum += dt
        else:
            if ((t0 + 4) % CKPT == 0) & (t0 + 4 < t_end):
                tl.store(ck_row + ((t0 + 4) // CKPT).to(tl.int64) * dim * N, h, mask=dn2)
    if t_full < t_end:  # partial last tile of the sequence
        h, dt = _fwd_tile(h, t_full, t_full + tt < t_end, dmask, nmask, A2, bias, Bd, Cd, Dd,
                          dt_row, u_row, z_row, out_row, B_row, C_row, N, True, STATE_ONLY, HAS_Z,
                          HAS_D, HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
        if STATE_ONLY:
            dsum += dt
    if STATE_ONLY:
        n_chunks = tl.num_programs(2) + 1  # the last chunk needs no pass 1
        tl.store(hloc_ptr + ((b * n_chunks + c) * dim + d2) * N + n2, h, mask=dn2)
        tl.store(sdt_ptr + (b * n_chunks + c) * dim + d, tl.sum(dsum, axis=2, keep_dims=True),
                 mask=dmask)
    else:
        if t_end == L:
            tl.store(ck_row + n_ck * dim * N, h, mask=dn2)


@triton.jit
def _combine_program(A_ptr, dim, N: tl.constexpr, BLOCK: tl.constexpr):
    """A carry-combine program's batch row, its BLOCK flat (channel, state) indices, their mask,
    channels and A (times log2 e)."""
    b = tl.program_id(1).to(tl.int64)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (d, n)
    m = idx < dim * N
    A2 = tl.load(A_ptr + idx, mask=m, other=0.0) * LOG2E
    return b, idx, m, idx // N, A2


@triton.jit
def _fwd_combine_kernel(ck_ptr, hloc_ptr, sdt_ptr, A_ptr, dim, n_ck, n_chunks, CK_PER_CHUNK,
                        N: tl.constexpr, BLOCK: tl.constexpr):
    """Chain chunk carries: state entering chunk c+1 = exp(A sum(delta'_c)) * state entering c + local."""
    b, idx, m, d, A2 = _combine_program(A_ptr, dim, N, BLOCK)
    ck_row = ck_ptr + b * (n_ck + 1) * dim * N + idx
    h = tl.load(ck_row, mask=m, other=0.0)
    for c in range(0, n_chunks - 1):
        s = tl.load(sdt_ptr + (b * n_chunks + c) * dim + d, mask=m, other=0.0)
        hl = tl.load(hloc_ptr + (b * n_chunks + c) * dim * N + idx, mask=m, other=0.0)
        h = tl.exp2(A2 * s) * h + hl
        tl.store(ck_row + ((c + 1) * CK_PER_CHUNK).to(tl.int64) * dim * N, h, mask=m)


# ----------------------------------------------------------------------------------------------
# backward
#   lam_t = C_t dy_t + a_{t+1} lam_{t+1}            (adjoint of the state, dy = dout * silu(z))
#   du_t = delta_t sum_n lam B + D dy,  ddelta'_t = u_t sum_n lam B + sum_n lam a_t h_{t-1} A
#   dA += lam a_t h_{t-1} delta_t,  dB_t += lam delta_t u_t,  dC_t += dy_t h_t,  dh_init = a_0 lam_0
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bwd_state_kernel(
    dt_ptr, z_ptr, g_ptr, A_ptr, C_ptr, bias_ptr, lloc_ptr, sdt_ptr,
    s_tb, s_td, s_zb, s_zd, s_gb, s_gd, s_Cb, s_Cg,
    L, dim, cpg_C, CH,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    C_VAR: tl.constexpr, C_GRP: tl.constexpr,
):
    """Adjoint at the first step s of chunk c (c >= 1) from a zero adjoint after its end e, and the
    decay exponent sum_{r=s+1..e} delta'_r (e = first step of the next chunk; delta'_L = 0)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2) + 1
    n_chunks = tl.num_programs(2) + 1
    n, d, tt, n2, d2, dmask, nmask, dn2, d64, A2, bias, _ = _tile_program(
        A_ptr, bias_ptr, A_ptr, pid_d, dim, N, NP, BD, HAS_BIAS, False)
    dt_row = dt_ptr + b * s_tb + d64 * s_td + tt
    g_row = g_ptr + b * s_gb + d64 * s_gd + tt
    z_row = z_ptr + b * s_zb + d64 * s_zd + tt
    if C_GRP:
        C_row = C_ptr + b * s_Cb + tl.minimum(d // cpg_C, dim // cpg_C - 1) * s_Cg + tt * N + n
    else:
        C_row = C_ptr + b * s_Cb + tt * N + n
    Cd = 0.0
    if not C_VAR:
        Cd = tl.load(C_ptr + d2 * N + n2, mask=dn2, other=0.0)
    t_begin = c * CH
    t_end = tl.minimum(t_begin + CH, L)
    n_t = tl.cdiv(t_end - t_begin, 4)
    # delta' at the first step after the chunk: its decay links this chunk to the next one
    d_nx, _ = _load_delta(dt_row + t_end, (tt == 0) & (t_end < L) & dmask, bias, HAS_BIAS, SOFTPLUS)
    dsum = d_nx
    lam = tl.zeros([NP, BD], dtype=tl.float32)
    a_nx = tl.exp2(A2 * tl.reshape(tl.sum(d_nx, axis=2), [1, BD]))
    for i in range(0, n_t):
        t0 = t_begin + (n_t - 1 - i) * 4
        tm = t0 + tt < t_end
        m = tm & dmask
        dt, _ = _load_delta(dt_row + t0, m, bias, HAS_BIAS, SOFTPLUS)
        dsum += dt
        gg = tl.load(g_row + t0, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + t0, mask=m, other=0.0).to(tl.float32)
            gg = gg * zz * tl.sigmoid(zz)
        if C_VAR:
            c0, c1, c2, c3 = _split4(tl.load(C_row + t0 * N, mask=tm & nmask, other=0.0))
        else:
            c0, c1, c2, c3 = Cd, Cd, Cd, Cd
        d0, d1, d2_, d3 = _split4(dt)
        g0, g1, g2, g3 = _split4(gg)
        lam = c3 * g3 + a_nx * lam
        a_nx = tl.exp2(A2 * d3)
        lam = c2 * g2 + a_nx * lam
        a_nx = tl.exp2(A2 * d2_)
        lam = c1 * g1 + a_nx * lam
        a_nx = tl.exp2(A2 * d1)
        lam = c0 * g0 + a_nx * lam
        a_nx = tl.exp2(A2 * d0)
    # the first step's own delta' does not decay the adjoint at that step
    d_first, _ = _load_delta(dt_row + t_begin, (tt == 0) & dmask, bias, HAS_BIAS, SOFTPLUS)
    tl.store(lloc_ptr + ((b * n_chunks + c) * dim + d2) * N + n2, lam, mask=dn2)
    tl.store(sdt_ptr + (b * n_chunks + c) * dim + d,
             tl.sum(dsum - d_first, axis=2, keep_dims=True), mask=dmask)


@triton.jit
def _bwd_combine_kernel(lam_ptr, lloc_ptr, sdt_ptr, A_ptr, dim, n_chunks,
                        N: tl.constexpr, BLOCK: tl.constexpr):
    """Adjoint after each chunk, from the last: lam(c-1) = lloc(c) + exp(A decay(c)) * lam(c)."""
    b, idx, m, d, A2 = _combine_program(A_ptr, dim, N, BLOCK)
    row = b * n_chunks * dim * N + idx
    lam = tl.load(lam_ptr + row + (n_chunks - 1) * dim * N, mask=m, other=0.0)
    for i in range(0, n_chunks - 1):
        c = n_chunks - 1 - i
        s = tl.load(sdt_ptr + (b * n_chunks + c) * dim + d, mask=m, other=0.0)
        ll = tl.load(lloc_ptr + row + c * dim * N, mask=m, other=0.0)
        lam = ll + tl.exp2(A2 * s) * lam
        tl.store(lam_ptr + row + (c - 1) * dim * N, lam, mask=m)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanConfig:
    """Launch shape. ``plan_config`` picks one per problem; tests pass their own to reach every path."""
    fwd_warps: int  # forward channels per program = 32 * fwd_warps
    fwd_chunk: int  # forward chunk length (multiple of ckpt); L <= fwd_chunk means a single pass
    ckpt: int       # checkpoint spacing for the backward (multiple of 4)
    bwd_warps: int  # backward channels per program = 32 * bwd_warps (fewer if B/C groups need it)
    bwd_chunk: int  # backward chunk length (multiple of ckpt)
    # backward channels per program when fewer than a warp's 32 (a power of 2): the lanes of a
    # warp then share a channel's states, so each thread holds fewer of them; None: 32 * bwd_warps
    bwd_channels: Optional[int] = None
    # backward tile: steps whose decays stay in registers between the tile's forward and adjoint
    # passes (1 or 2; more steps, fewer scratch states, more registers)
    bwd_steps: int = 2
    # variable dB/dC summed over channel blocks with atomic adds into one buffer instead of one
    # partial sum per block (dim / channels of them): less memory, run-to-run rounding differences
    bwd_bc_atomic: bool = False
    # backward kernel: the Gluon one (selective_scan_bwd_gluon: per-channel data moved in 32-step
    # windows) where it covers the launch and this Triton has Gluon, else the Triton one. None:
    # that choice; True: Gluon (an error where it cannot run); False: always the Triton kernel.
    # (A Gluon forward built the same way was slower than the Triton one; BENCHMARKS.md)
    gluon: Optional[bool] = None


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: few programs run fastest


def _chunk(L, ckpt, programs_per_chunk, want_programs):
    n_blocks = triton.cdiv(max(L, 1), ckpt)
    n_chunks = max(1, min(n_blocks, want_programs // max(programs_per_chunk, 1)))
    return triton.cdiv(n_blocks, n_chunks) * ckpt


def plan_config(batch, dim, L, N, device, *, fwd_warps=1, fwd_warps_per_sm=24, ckpt=None,
                bwd_warps=1, bwd_programs_per_sm=8, bwd_channels=None,
                bwd_steps=2, bwd_bc_atomic=None, gluon=None) -> ScanConfig:
    """Heuristic launch shape (measured on an H100 with Triton 3.6, see BENCHMARKS.md).

    Forward: one-warp programs and enough chunks for ~24 warps per SM; more chunks cost a state
    pass, fewer leave the exp units idle. Backward: one-warp programs of 32 channels, 2-step
    tiles, enough chunks for ~8 programs per SM (the kernel takes ~255 registers): 6-16% faster
    than the best of 2-16 channels a program at four of the five benchmark shapes, 1% slower at
    1 x 256 x 2^20 (sweep of 2026-11-25). Variable dB/dC are summed through one (batch, L, N)
    fp32 partial per channel block; past 4 GiB of them (e.g. dim 8192 at L = 2^20) atomic adds
    into one buffer take over (``bwd_bc_atomic=None``).
    """
    sms = _sm_count(device)
    ckpt = ckpt or (64 if L >= 65536 else 32)
    fwd_chunk = _chunk(L, ckpt, batch * triton.cdiv(dim, 32 * fwd_warps),
                       fwd_warps_per_sm * sms // fwd_warps)
    channels = bwd_channels or 32 * bwd_warps
    if bwd_bc_atomic is None:
        bwd_bc_atomic = triton.cdiv(dim, channels) * batch * L * N * 4 > _PARTIALS_MAX_BYTES
    bwd_chunk = _chunk(L, ckpt, batch * triton.cdiv(dim, channels), bwd_programs_per_sm * sms)
    return ScanConfig(fwd_warps, fwd_chunk, ckpt, bwd_warps, bwd_chunk, bwd_channels, bwd_steps,
                      bwd_bc_atomic, gluon)


def _rows(x):
    """The kernels need unit stride along L; other strides are passed through."""
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


class _Problem:
    """Validated shapes, fp32 parameter copies and the B/C layouts shared by forward and backward."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        if u.dim() != 3:
            raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
        self.batch, self.dim, self.L = u.shape
        if delta.shape != u.shape or (z is not None and z.shape != u.shape):
            raise ValueError("delta and z must have u's shape (batch, dim, L)")
        if A.dim() != 2 or A.shape[0] != self.dim or A.is_complex():
            raise ValueError(f"A must be real (dim, N) = ({self.dim}, N), got {tuple(A.shape)}")
        self.N = A.shape[1]
        self.NP = triton.next_power_of_2(self.N)
        self.softplus = bool(delta_softplus)
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
        """fp32 copy: (dim, N) if time-invariant, else (batch, groups, L, N) (state-contiguous)."""
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
        return True, X.detach().transpose(-1, -2).float().contiguous(), g

    def bc_strides(self):
        sB = self.Bf.stride() if self.B_var else (0, 0)
        sC = self.Cf.stride() if self.C_var else (0, 0)
        return sB[0], sB[1], sC[0], sC[1]

    def bwd_block(self, warps, channels=None):
        """Channels per backward program (``channels``, else 32 * warps, halved until the B/C
        groups fit) and channels per group inside it (for the dB/dC sums)."""
        cpgs = [g for g, var in ((self.cpg_B, self.B_var), (self.cpg_C, self.C_var)) if var]

        def fits(bd):
            return all(g % bd == 0 or (bd % g == 0 and g & (g - 1) == 0) for g in cpgs)
        bd = channels or 32 * warps
        while bd > 1 and not fits(bd):
            bd //= 2
        gsub = [bd if (not var or g % bd == 0) else g
                for g, var in ((self.cpg_B, self.B_var), (self.cpg_C, self.C_var))]
        return bd, gsub[0], gsub[1]


def _check_config(cfg):
    if cfg.ckpt % 4 or cfg.fwd_chunk % cfg.ckpt or cfg.bwd_chunk % cfg.ckpt:
        raise ValueError(f"bad ScanConfig {cfg}: ckpt must be a multiple of 4 and divide the chunks")
    ch = cfg.bwd_channels
    if ch is not None and (not isinstance(ch, int) or ch < 1 or ch > 32 * cfg.bwd_warps
                           or ch & (ch - 1)):
        raise ValueError(f"bad ScanConfig {cfg}: bwd_channels must be a power of 2 <= 32 * bwd_warps")
    if cfg.bwd_steps not in (1, 2):
        raise ValueError(f"bad ScanConfig {cfg}: bwd_steps must be 1 or 2")


def _forward(P, u, delta, z, initial_state, cfg, ckpt):
    """ckpt: checkpoint spacing; cfg.ckpt when a backward follows, else the chunk length."""
    batch, dim, L, N, NP = P.batch, P.dim, P.L, P.N, P.NP
    dev = u.device
    out = torch.empty((batch, dim, L), device=dev, dtype=u.dtype)
    n_ck = triton.cdiv(L, ckpt)
    ck = torch.empty((batch, n_ck + 1, dim, N), device=dev, dtype=torch.float32)
    if initial_state is None:
        ck[:, 0].zero_()
    else:
        ck[:, 0].copy_(initial_state)
    if L == 0:
        ck[:, n_ck].copy_(ck[:, 0])
        return out, ck
    BD = 32 * cfg.fwd_warps
    n_chunks = triton.cdiv(L, cfg.fwd_chunk)
    dummy = P.A
    zz = z if z is not None else u
    common = dict(
        N=N, NP=NP, BD=BD, HAS_Z=z is not None, HAS_D=P.D is not None, HAS_BIAS=P.bias is not None,
        SOFTPLUS=P.softplus, B_VAR=P.B_var, C_VAR=P.C_var,
        B_GRP=P.B_var and P.gB > 1, C_GRP=P.C_var and P.gC > 1, num_warps=cfg.fwd_warps)
    args = (u, delta, zz, out, P.A, P.Bf, P.Cf, dummy if P.D is None else P.D,
            dummy if P.bias is None else P.bias)
    strides = (u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
               out.stride(0), out.stride(1), *P.bc_strides())
    sizes = (L, dim, P.cpg_B, P.cpg_C, cfg.fwd_chunk, ckpt, n_ck)
    if n_chunks > 1:
        hloc = torch.empty((batch, n_chunks, dim, N), device=dev, dtype=torch.float32)
        sdt = torch.empty((batch, n_chunks, dim), device=dev, dtype=torch.float32)
        grid = (triton.cdiv(dim, BD), batch, n_chunks - 1)
        _fwd_kernel[grid](*args, ck, hloc, sdt, *strides, *sizes, STATE_ONLY=True, **common)
        BLOCK = 256
        _fwd_combine_kernel[(triton.cdiv(dim * N, BLOCK), batch)](
            ck, hloc, sdt, P.A, dim, n_ck, n_chunks, cfg.fwd_chunk // ckpt, N=N, BLOCK=BLOCK,
            num_warps=4)
    grid = (triton.cdiv(dim, BD), batch, n_chunks)
    _fwd_kernel[grid](*args, ck, ck, ck, *strides, *sizes, STATE_ONLY=False, **common)
    return out, ck


_GLUON_FAILED: list = []  # the first Gluon compile error seen in this process, if any


def _bwd_kernel_for(P, BD, gsub_B, gsub_C, cfg, device):
    """The backward kernel for a launch: the Gluon one where it covers it, else the Triton one
    (see ScanConfig.gluon)."""
    from .selective_scan_bwd_triton import _bwd_kernel  # it imports this module's helpers
    if cfg.gluon is False:
        return _bwd_kernel
    why = None
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        why = "Gluon kernels need a GPU (the interpreter runs the Triton kernels)"
    elif _GLUON_FAILED:
        why = f"it failed to compile in this process ({_GLUON_FAILED[0]})"
    else:
        try:
            from . import selective_scan_bwd_gluon as G
        except Exception as e:  # no triton.experimental.gluon (before 3.5), or its API moved
            why = f"no usable Gluon in this Triton ({type(e).__name__}: {e})"
        else:
            if not G.supported(P.N, P.NP, BD, gsub_B, gsub_C, cfg.bwd_steps, cfg.ckpt, P.B_var,
                               P.C_var):
                why = f"the Gluon backward covers {G.COVERS}"
    if why is None:
        return G._bwd_kernel_gluon
    if cfg.gluon:
        raise ValueError(f"ScanConfig.gluon=True, but {why}")
    return _bwd_kernel


def _launch_or_fall_back(kernel, triton_kernel, cfg, grid, args, kwargs):
    """Launch ``kernel``; if it is a Gluon kernel that this Triton cannot compile (Gluon is
    experimental and its API moves between releases), warn once and run the Triton kernel,
    which then serves every later call. A compile error happens before anything is written."""
    from triton.compiler.errors import CompilationError
    try:
        kernel[grid](*args, **kwargs)
    except CompilationError as e:
        if kernel is triton_kernel or cfg.gluon:
            raise
        text = str(e).strip()
        first = text.splitlines()[-1] if text else type(e).__name__
        _GLUON_FAILED.append(first)
        import warnings
        warnings.warn(f"seqmamba: the Gluon scan backward does not compile with Triton "
                      f"{triton.__version__} ({first}); using the Triton kernel", RuntimeWarning)
        triton_kernel[grid](*args, **kwargs)


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
    dinit = torch.empty((batch, dim, N), **f32) if need_dinit else None
    BD, gsub_B, gsub_C = P.bwd_block(cfg.bwd_warps, cfg.bwd_channels)
    # variable dB/dC: one partial sum per channel block, summed below, or with bwd_bc_atomic one
    # buffer every program adds into (less memory and traffic, run-to-run rounding differences)
    parts_B = 1 if cfg.bwd_bc_atomic else max(P.cpg_B // BD, 1)
    parts_C = 1 if cfg.bwd_bc_atomic else max(P.cpg_C // BD, 1)
    new = torch.zeros if cfg.bwd_bc_atomic else torch.empty
    dB = new((parts_B, batch, P.gB, L, N), **f32) if P.B_var else torch.zeros((dim, N), **f32)
    dC = new((parts_C, batch, P.gC, L, N), **f32) if P.C_var else torch.zeros((dim, N), **f32)
    n_ck = triton.cdiv(L, cfg.ckpt)
    n_chunks = triton.cdiv(L, cfg.bwd_chunk)
    lam = torch.empty((batch, n_chunks, dim, N), **f32)
    if dlast is None:
        lam[:, n_chunks - 1].zero_()
    else:
        lam[:, n_chunks - 1].copy_(dlast)
    zz = z if z is not None else u
    dummy = P.A
    bias = dummy if P.bias is None else P.bias
    if n_chunks > 1:
        BDs = 32 * cfg.fwd_warps
        lloc = torch.empty((batch, n_chunks, dim, N), **f32)
        sdt = torch.empty((batch, n_chunks, dim), **f32)
        _bwd_state_kernel[(triton.cdiv(dim, BDs), batch, n_chunks - 1)](
            delta, zz, dout, P.A, P.Cf, bias, lloc, sdt,
            delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1), dout.stride(0),
            dout.stride(1), *P.bc_strides()[2:], L, dim, P.cpg_C, cfg.bwd_chunk,
            N=N, NP=NP, BD=BDs, HAS_Z=z is not None, HAS_BIAS=P.bias is not None,
            SOFTPLUS=P.softplus, C_VAR=P.C_var, C_GRP=P.C_var and P.gC > 1,
            num_warps=cfg.fwd_warps)
        BLOCK = 256
        _bwd_combine_kernel[(triton.cdiv(dim * N, BLOCK), batch)](
            lam, lloc, sdt, P.A, dim, n_chunks, N=N, BLOCK=BLOCK, num_warps=4)
    n_dblk = triton.cdiv(dim, BD)
    from .selective_scan_bwd_triton import _bwd_kernel
    kernel = _bwd_kernel_for(P, BD, gsub_B, gsub_C, cfg, dev)
    tile = cfg.bwd_steps  # steps per tile; scratch holds the state entering each
    scratch = torch.empty((n_dblk * batch * n_chunks * triton.cdiv(cfg.ckpt, tile) * BD * NP,),
                          **f32)
    args = (
        u, delta, zz, dout, P.A, P.Bf, P.Cf, dummy if P.D is None else P.D, bias, ck, lam, scratch,
        du, ddelta, dz if dz is not None else du, dA, dB, dC,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        dinit if dinit is not None else dA,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), zz.stride(0), zz.stride(1),
        dout.stride(0), dout.stride(1), dim * L, L, *P.bc_strides(),
        L, dim, P.cpg_B, P.cpg_C, cfg.bwd_chunk, cfg.ckpt, n_ck)
    kwargs = dict(
        N=N, NP=NP, BD=BD, GSUB_B=gsub_B, GSUB_C=gsub_C, BC_ATOMIC=cfg.bwd_bc_atomic,
        HAS_Z=z is not None,
        HAS_D=P.D is not None, HAS_BIAS=P.bias is not None, SOFTPLUS=P.softplus, B_VAR=P.B_var,
        C_VAR=P.C_var, HAS_INIT=need_dinit, TILE=tile,
        num_warps=max(1, BD // 32))
    _launch_or_fall_back(kernel, _bwd_kernel, cfg, (n_dblk, batch, n_chunks), args, kwargs)
    if P.B_var:  # partial sums over channel blocks -> (batch, groups, N, L)
        dB = (dB.sum(0) if dB.shape[0] > 1 else dB[0]).transpose(-1, -2)
    if P.C_var:
        dC = (dC.sum(0) if dC.shape[0] > 1 else dC[0]).transpose(-1, -2)
    return du, ddelta, dz, dA, dB, dC, dD, dbias, dinit


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cfg):
        P = _Problem(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        cfg = cfg or plan_config(P.batch, P.dim, P.L, P.N, u.device)
        _check_config(cfg)
        u, delta, z = _rows(u), _rows(delta), _rows(z)
        init = None
        if initial_state is not None:
            if initial_state.shape != (P.batch, P.dim, P.N):
                raise ValueError(f"initial_state must be ({P.batch}, {P.dim}, {P.N}), "
                                 f"got {tuple(initial_state.shape)}")
            init = initial_state.detach().float()
        # without a backward to feed, only the chunk starts need checkpoints
        grad = any(ctx.needs_input_grad[:8]) or ctx.needs_input_grad[9]
        out, ck = _forward(P, u, delta, z, init, cfg, cfg.ckpt if grad else cfg.fwd_chunk)
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
        return (du, ddelta, dA.to(tA), dB.reshape(Bs).to(tB), dC.reshape(Cs).to(tC),
                None if dD is None else dD.to(tD), dz, None if dbias is None else dbias.to(tbias),
                None, None if dinit is None else dinit.to(tinit), None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, config: ScanConfig | None = None):
    """Fused selective scan; same arguments and results as ``selective_scan_fn``.

    Returns out (batch, dim, L) in u's dtype, and with ``return_last_state`` also the final state
    (batch, dim, N) in fp32. Every input that requires grad gets one, initial_state included, and a
    gradient flowing into last_state is propagated. ``config`` overrides the launch heuristics.
    """
    if A.shape[-1] > _MAX_N or u.shape[-1] == 0:  # too many states for registers, or nothing to scan
        from .selective_scan_torch import selective_scan_chunked
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      return_last_state, initial_state)
    out, last_state = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                             initial_state, config)
    return (out, last_state) if return_last_state else out
