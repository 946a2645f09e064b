"""Fused Triton selective scan, backward: ``_bwd_kernel`` (launched by selective_scan_triton).

On a GPU with Gluon the same algorithm runs as selective_scan_bwd_gluon's kernel, 1.2-1.6x
faster (its per-channel loads and stores move whole 32-step windows; this kernel's touch 32 rows
of memory per instruction). This one serves the launches that kernel does not cover, Tritons
without Gluon, and the interpreter.

Algorithm (selective_scan_triton's docstring has the whole picture): each program walks its chunk
of time from the end, one checkpoint block at a time. It rescans the block forward from its
checkpoint, storing the state entering every tile of TILE steps in its scratch (L2-resident),
then runs the tiles in reverse: forward through the tile from its stored state, keeping each
step's decay in registers, then the adjoint back through it, writing du, ddelta, dz and the
channel sums of dB/dC step by step. Both loops load a tile's per-channel inputs (delta, u, dout,
z) one tile ahead, so their memory latency overlaps the tile before.

Written one time step at a time with 2-D tensors only: states [NP, BD], per-channel values
[1, BD], B/C rows [NP, BD] (one row broadcast over the block's channels). An earlier kernel
loaded 4 steps of a channel as one [1, BD, 4] vector; Triton then spread the 4 steps over lanes,
each lane repeated the whole recurrence, and the kernel needed 2-3x the instructions
(BENCHMARKS.md, session 9). Triton lays the state tiles out 4 states x 4 channels a thread and
the per-channel values one channel a lane. The plan runs 32 channels a program (one warp) with
2-step tiles: fastest of 1/2/4-step tiles at 2-32 channels on four of the five benchmark shapes
(sweep of 2026-11-25; 4-step tiles spilled at 32 channels and ran 3-4x slower, so they were
dropped).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .selective_scan_triton import _channel_params, _delta, _fixed_bc, _fwd_step, _load_delta

LN2 = tl.constexpr(0.6931471805599453)  # turns the exp2 exponents' gradients back into exp's


# ----------------------------------------------------------------------------------------------
# per-program setup, per-step pieces and epilogue
# ----------------------------------------------------------------------------------------------
@triton.jit
def _put_chan_sum(ptr, z, GSUB: tl.constexpr, ATOMIC: tl.constexpr, mask):
    """Store the sums of z [NP, BD] over each group of GSUB consecutive channels (lanes) at ptr
    ([NP, groups]), or with ATOMIC add them into it (every program adds into one buffer rather
    than its own partial). A shuffle reduction, exact in fp32: it ran 0.3-4% faster on the H100
    than the tensor-core sum it replaced (z @ ones through shared memory, tf32 operands).
    One group a block, not ATOMIC: the sum is stored from the first channel's lanes through a
    pointer broadcast over the block, so the store takes the layout the sum already has (a
    [NP, 1] store gets its own layout and a conversion through shared memory: 2 barriers a tile
    fewer, 0.4-0.7% faster, BENCHMARKS.md session 12)."""
    if GSUB == z.shape[1] and not ATOMIC:
        zs = tl.sum(z, axis=1, keep_dims=True)
        lane = tl.arange(0, z.shape[1])[None, :]
        tl.store(ptr + lane * 0, tl.broadcast_to(zs, z.shape), mask=mask & (lane == 0))
    else:
        zs = tl.sum(tl.reshape(z, [z.shape[0], z.shape[1] // GSUB, GSUB]), axis=2)
        if ATOMIC:
            tl.atomic_add(ptr, zs, mask=mask, sem="relaxed")
        else:
            tl.store(ptr, zs, mask=mask)


@triton.jit
def _ld_bc(row2, off, m2, fixed, VAR: tl.constexpr):
    """B or C at one step as [NP, BD] (one row broadcast over the channels, or per-channel rows
    when groups split the block), or the time-invariant [NP, BD] value. Reloaded per step (L1
    hits) so only one step of it is live."""
    if VAR:
        r = tl.load(row2 + off, mask=m2, other=0.0)
    else:
        r = fixed
    return r


@triton.jit
def _bc_sum_row(ptr, b, d0, g, dim, L, n_b, cpg, N: tl.constexpr, BD: tl.constexpr,
                ATOMIC: tl.constexpr):
    """Step 0 of the dB or dC row that the channel sums of group d0 // cpg + g (g: the group
    within the program's block, scalar or tensor) go to: in part (d0 % cpg) // BD of
    (parts, batch, groups, L, N), or with ATOMIC in the one buffer every program adds into.
    Shared by the Triton and Gluon backwards, so both follow _backward's buffer layout."""
    if ATOMIC:
        return ptr + (b * (dim // cpg) + d0 // cpg + g) * L * N
    return ptr + (((d0 % cpg) // BD * n_b + b) * (dim // cpg) + d0 // cpg + g) * L * N


@triton.jit
def _bwd_bc_rows(B_ptr, C_ptr, dB_ptr, dC_ptr, b, d0, d2, n2, dn2, dim, L, n_b, cpg_B, cpg_C,
                 s_Bb, s_Bg, s_Cb, s_Cg, N: tl.constexpr, BD: tl.constexpr, GSUB_B: tl.constexpr,
                 GSUB_C: tl.constexpr, BC_ATOMIC: tl.constexpr, B_VAR: tl.constexpr,
                 C_VAR: tl.constexpr):
    """A backward program's B/C single-step row pointers ([NP, BD]: one group's row broadcast
    over the channels, or per channel when the block holds several groups), time-invariant B/C
    ([NP, BD]), and its partial dB/dC rows: the program adds its channels of groups
    d0 // cpg + g (g < BD // GSUB) into part (d0 % cpg) // BD of (parts, batch, groups, L, N)
    (one part when BC_ATOMIC: atomic sums); [NP, GP] pointers at step 0 (GP = BD // GSUB groups
    in the block) and their masks."""
    # One group's row is loaded through a pointer broadcast over the channels rather than an
    # [NP, 1] one: Triton then gives the load the 4 states x 4 channels a thread layout of the
    # state tiles (16-byte vectors). From an [NP, 1] load it computed the adjoint, the decay and
    # <lam, B> a second time in another layout, and summed dB over 32 lanes there. sm_90
    # compile: main loop 972 instructions a 2-step tile against 1360, 96 shuffles against 224,
    # 60 exp2 against 76; 3-7% faster (BENCHMARKS.md, session 12).
    if GSUB_B < BD:
        B_row2 = B_ptr + b * s_Bb + tl.minimum(d2 // cpg_B, dim // cpg_B - 1) * s_Bg + n2
    else:
        B_row2 = B_ptr + b * s_Bb + (d0 // cpg_B) * s_Bg + n2 + 0 * (d2 - d0)
    if GSUB_C < BD:
        C_row2 = C_ptr + b * s_Cb + tl.minimum(d2 // cpg_C, dim // cpg_C - 1) * s_Cg + n2
    else:
        C_row2 = C_ptr + b * s_Cb + (d0 // cpg_C) * s_Cg + n2 + 0 * (d2 - d0)
    gB = tl.arange(0, BD // GSUB_B)[None, :]
    gC = tl.arange(0, BD // GSUB_C)[None, :]
    dB_row = _bc_sum_row(dB_ptr, b, d0, gB, dim, L, n_b, cpg_B, N, BD, BC_ATOMIC) + n2
    dC_row = _bc_sum_row(dC_ptr, b, d0, gC, dim, L, n_b, cpg_C, N, BD, BC_ATOMIC) + n2
    gmask_B = d0 + gB * GSUB_B < dim
    gmask_C = d0 + gC * GSUB_C < dim
    Bd, Cd = _fixed_bc(B_ptr, C_ptr, d2, n2, dn2, N, B_VAR, C_VAR)
    return B_row2, C_row2, Bd, Cd, dB_row, dC_row, gmask_B, gmask_C


@triton.jit
def _bwd_param_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr, dA_acc, dBf, dCf,
                     dD_acc, db_acc, dmask, lam, a_nx, b, c, d2, n2, dn2, dim, N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, B_VAR: tl.constexpr,
                     C_VAR: tl.constexpr, HAS_INIT: tl.constexpr):
    """A backward program's end: its dA, dD, d(delta_bias) and time-invariant dB/dC added in
    (per-channel accumulators [1, BD] at channels d2), and for the first chunk the initial state's
    gradient (the adjoint before step 0)."""
    tl.atomic_add(dA_ptr + d2 * N + n2, dA_acc, mask=dn2)
    if not B_VAR:
        tl.atomic_add(dB_ptr + d2 * N + n2, dBf, mask=dn2)
    if not C_VAR:
        tl.atomic_add(dC_ptr + d2 * N + n2, dCf, mask=dn2)
    if HAS_D:
        tl.atomic_add(dD_ptr + d2, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + d2, db_acc, mask=dmask)
    if HAS_INIT:
        if c == 0:
            tl.store(dinit_ptr + (b * dim + d2) * N + n2, a_nx * lam, mask=dn2)


@triton.jit
def _tile_step_fwd(h, A2, d, e, y, k, m, Bd, Cd, B_row2, C_row2, dC_row, dCf, gmask_C,
                   GSUB_C: tl.constexpr, BC_ATOMIC: tl.constexpr, B_VAR: tl.constexpr,
                   C_VAR: tl.constexpr):
    """One step of _bwd_tile's forward pass (delta' d, delta' u e, dy y, B/C offset k): the new
    state, its decay a and a h_prev, the step's <h, C>, and dC (written, or accumulated)."""
    a = tl.exp2(A2 * d)
    ha = a * h
    h = ha + e * _ld_bc(B_row2, k, m, Bd, B_VAR)
    c = _ld_bc(C_row2, k, m, Cd, C_VAR)
    s = tl.sum(h * c, axis=0, keep_dims=True)
    zc = h * y
    if C_VAR:
        _put_chan_sum(dC_row + k, zc, GSUB_C, BC_ATOMIC, m & gmask_C)
    else:
        dCf += zc
    return h, a, ha, s, dCf


@triton.jit
def _tile_step_bwd(lam, a_nx, ha, A2, d, e, y, k, m, Bd, Cd, B_row2, C_row2, dB_row, dA_acc, dBf,
                   gmask_B, GSUB_B: tl.constexpr, BC_ATOMIC: tl.constexpr,
                   B_VAR: tl.constexpr, C_VAR: tl.constexpr):
    """One step of _bwd_tile's adjoint pass: lam, the accumulators, dB (written, or
    accumulated), and the step's <lam, B> and <lam a h_prev, A> (for du and ddelta)."""
    lam = _ld_bc(C_row2, k, m, Cd, C_VAR) * y + a_nx * lam
    zb = lam * e
    if B_VAR:
        _put_chan_sum(dB_row + k, zb, GSUB_B, BC_ATOMIC, m & gmask_B)
    else:
        dBf += zb
    w = lam * ha
    dA_acc += w * d
    q = tl.sum(lam * _ld_bc(B_row2, k, m, Bd, B_VAR), axis=0, keep_dims=True)
    r = tl.sum(w * A2, axis=0, keep_dims=True)
    return lam, dA_acc, dBf, q, r


@triton.jit
def _load_rows(t, m, dt_row, u_row, g_row, z_row, HAS_Z: tl.constexpr):
    """Step t's per-channel inputs as stored (delta, u, dout and z, or a copy of delta). The
    loops load them a tile ahead of their use: each lane reads its own channel row, and a load
    used at once stalled the kernel on memory latency (ncu: ~27% of its stall samples)."""
    xr, ur = _load_xu(t, m, dt_row, u_row)
    gr = tl.load(g_row + t, mask=m, other=0.0)
    zr = xr
    if HAS_Z:
        zr = tl.load(z_row + t, mask=m, other=0.0)
    return xr, ur, gr, zr


@triton.jit
def _load_xu(t, m, dt_row, u_row):
    """Step t's delta and u as stored."""
    return tl.load(dt_row + t, mask=m, other=0.0), tl.load(u_row + t, mask=m, other=0.0)


@triton.jit
def _state_step(h, xr, ur, t, m, mn, A2, bias, Bd, B_row2, N: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr):
    dt, _ = _delta(xr, m, bias, HAS_BIAS, SOFTPLUS)
    return _fwd_step(h, dt, dt * ur.to(tl.float32), _ld_bc(B_row2, t * N, mn, Bd, B_VAR), A2)


@triton.jit
def _in_step(h, xr, ur, gr, zr, t, m, mn, A2, bias, Bd, Cd, Dd, dz_row, B_row2,
             C_row2, dC_row, dCf, gmask_C, N: tl.constexpr, GSUB_C: tl.constexpr,
             BC_ATOMIC: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr,
             HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr,
             C_VAR: tl.constexpr):
    """Step t forward from the state h entering it (_tile_step_fwd, from the step's inputs as
    loaded by _load_rows): h_t and what the way back needs (a_t, a_t h_{t-1}, delta'_t, its
    pre-softplus value, u_t, dy_t); writes dz_t and dC_t."""
    dt, x = _delta(xr, m, bias, HAS_BIAS, SOFTPLUS)
    uu = ur.to(tl.float32)
    gg = gr.to(tl.float32)
    if HAS_Z:
        zz = zr.to(tl.float32)
        sz = tl.sigmoid(zz)
        dy = gg * zz * sz
    else:
        dy = gg
    h, a, ha, y, dCf = _tile_step_fwd(h, A2, dt, dt * uu, dy, t * N, mn, Bd, Cd, B_row2, C_row2,
                                      dC_row, dCf, gmask_C, GSUB_C, BC_ATOMIC, B_VAR, C_VAR)
    if HAS_Z:
        if HAS_D:
            y += Dd * uu
        tl.store(dz_row + t, (gg * sz * (1.0 + zz * (1.0 - sz)) * y).to(dz_row.dtype.element_ty),
                 mask=m)
    return h, a, ha, dt, x, uu, dy, dCf


@triton.jit
def _out_step(lam, a_nx, a, ha, dt, x, uu, dy, dA_acc, dBf, t, m, mn, A2, Bd, Cd, Dd, du_row,
              ddt_row, B_row2, C_row2, dB_row, gmask_B, N: tl.constexpr,
              GSUB_B: tl.constexpr, BC_ATOMIC: tl.constexpr, HAS_D: tl.constexpr,
              SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr):
    """Step t backward (_tile_step_bwd, then du_t and ddelta_t): writes du_t, ddelta_t and dB_t;
    returns lam_t, a_t (the decay for step t - 1), the accumulators, dy_t u_t and ddelta_t."""
    lam, dA_acc, dBf, q, r = _tile_step_bwd(lam, a_nx, ha, A2, dt, dt * uu, dy, t * N, mn, Bd, Cd,
                                            B_row2, C_row2, dB_row, dA_acc, dBf, gmask_B,
                                            GSUB_B, BC_ATOMIC, B_VAR, C_VAR)
    ddt = q * uu + r * LN2  # A2 = A log2(e)
    du = q * dt
    if HAS_D:
        du += Dd * dy
    if SOFTPLUS:
        ddt = ddt * tl.sigmoid(x)
    ddt = tl.where(m, ddt, 0.0)
    tl.store(du_row + t, du.to(du_row.dtype.element_ty), mask=m)
    tl.store(ddt_row + t, ddt.to(ddt_row.dtype.element_ty), mask=m)
    return lam, a, dA_acc, dBf, dy * uu, ddt


@triton.jit
def _step_masks(t, tend, dmask, nmask2, MASKED: tl.constexpr):
    if MASKED:
        return dmask & (t < tend), nmask2 & (t < tend)
    return dmask, nmask2


@triton.jit
def _bwd_tile(h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, x0r, u0r, g0r, z0r, x1r, u1r, g1r,
              z1r, t0, tend, dmask, nmask2, A2, bias, Bd, Cd, Dd, du_row, ddt_row, dz_row,
              B_row2, C_row2, dB_row, dC_row, gmask_B, gmask_C, N: tl.constexpr,
              GSUB_B: tl.constexpr, GSUB_C: tl.constexpr, BC_ATOMIC: tl.constexpr,
              TILE: tl.constexpr, MASKED: tl.constexpr, HAS_Z: tl.constexpr, HAS_D: tl.constexpr,
              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr,
              C_VAR: tl.constexpr):
    """Steps [t0, t0 + TILE) (those < tend if MASKED), TILE 1 or 2, with their inputs as loaded
    by _load_rows (x0r.. step t0, x1r.. step t0 + 1): forward from h, keeping each step's decay
    and inputs in registers, then back from lam (d_nx: delta' of step t0 + TILE; returns the
    tile's first delta' for the tile before). A longer tile stores fewer states to scratch but
    keeps more values live (sm_90, 32 channels: ~255 registers at 1 and 2 steps; 4-step tiles
    spilled and were dropped)."""
    m0, k0 = _step_masks(t0, tend, dmask, nmask2, MASKED)
    h, a0, ha0, d0, x0, u0, y0, dCf = _in_step(
        h, x0r, u0r, g0r, z0r, t0, m0, k0, A2, bias, Bd, Cd, Dd, dz_row, B_row2, C_row2, dC_row,
        dCf, gmask_C, N, GSUB_C, BC_ATOMIC, HAS_Z, HAS_D, HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
    if TILE >= 2:
        m1, k1 = _step_masks(t0 + 1, tend, dmask, nmask2, MASKED)
        h, a1, ha1, d1, x1, u1, y1, dCf = _in_step(
            h, x1r, u1r, g1r, z1r, t0 + 1, m1, k1, A2, bias, Bd, Cd, Dd, dz_row, B_row2, C_row2,
            dC_row, dCf, gmask_C, N, GSUB_C, BC_ATOMIC, HAS_Z, HAS_D, HAS_BIAS,
            SOFTPLUS, B_VAR, C_VAR)
    # the decay of step t0 + TILE, recomputed from its delta' d_nx: carrying the per-channel
    # delta' between tiles instead of the [NP, BD] decay ran 0.5-1% faster (BENCHMARKS.md)
    a_nx = tl.exp2(A2 * d_nx)
    if TILE >= 2:
        lam, a_nx, dA_acc, dBf, pd, pb = _out_step(
            lam, a_nx, a1, ha1, d1, x1, u1, y1, dA_acc, dBf, t0 + 1, m1, k1, A2, Bd, Cd, Dd,
            du_row, ddt_row, B_row2, C_row2, dB_row, gmask_B, N, GSUB_B, BC_ATOMIC, HAS_D,
            SOFTPLUS, B_VAR, C_VAR)
        dD_acc += pd
        db_acc += pb
    lam, a_nx, dA_acc, dBf, pd, pb = _out_step(
        lam, a_nx, a0, ha0, d0, x0, u0, y0, dA_acc, dBf, t0, m0, k0, A2, Bd, Cd, Dd, du_row,
        ddt_row, B_row2, C_row2, dB_row, gmask_B, N, GSUB_B, BC_ATOMIC, HAS_D, SOFTPLUS,
        B_VAR, C_VAR)
    dD_acc += pd
    db_acc += pb
    return lam, d0, dA_acc, dBf, dCf, dD_acc, db_acc


@triton.jit
def _bwd_kernel(
    u_ptr, dt_ptr, z_ptr, g_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ck_ptr, lam_ptr, scr_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_gb, s_gd, s_xb, s_xd,
    s_Bb, s_Bg, s_Cb, s_Cg,
    L, dim, cpg_B, cpg_C, CH, CKPT, n_ck,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, GSUB_B: tl.constexpr,
    GSUB_C: tl.constexpr, BC_ATOMIC: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_INIT: tl.constexpr,
    TILE: tl.constexpr = 2,
):
    """Backward of chunk c of BD channels of one batch row; arguments and outputs as _bwd_kernel,
    with the scratch holding the state entering each TILE-step tile ((CKPT // TILE) tiles of
    BD x NP)."""
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    n_chunks = tl.num_programs(2)
    n2 = tl.arange(0, NP)[:, None]
    d2 = pid_d * BD + tl.arange(0, BD)[None, :]
    dmask = d2 < dim
    nmask2 = n2 < N
    dn2 = dmask & nmask2
    d64 = d2.to(tl.int64)
    A2, bias, Dd = _channel_params(A_ptr, bias_ptr, D_ptr, d2, d2, n2, dn2, dmask, N, HAS_BIAS,
                                   HAS_D)
    dt_row = dt_ptr + b * s_tb + d64 * s_td
    u_row = u_ptr + b * s_ub + d64 * s_ud
    z_row = z_ptr + b * s_zb + d64 * s_zd
    g_row = g_ptr + b * s_gb + d64 * s_gd
    du_row = du_ptr + b * s_xb + d64 * s_xd
    ddt_row = ddt_ptr + b * s_xb + d64 * s_xd
    dz_row = dz_ptr + b * s_xb + d64 * s_xd
    n_b = tl.num_programs(1)
    d0 = pid_d * BD
    B_row2, C_row2, Bd, Cd, dB_row, dC_row, gmask_B, gmask_C = _bwd_bc_rows(
        B_ptr, C_ptr, dB_ptr, dC_ptr, b, d0, d2, n2, dn2, dim, L, n_b, cpg_B, cpg_C, s_Bb, s_Bg,
        s_Cb, s_Cg, N, BD, GSUB_B, GSUB_C, BC_ATOMIC, B_VAR, C_VAR)
    ck_row = ck_ptr + b * (n_ck + 1) * dim * N + d2 * N + n2
    # Scratch tiles channel-major: each tile is contiguous as a whole and moves as 16-byte
    # vectors. (A state-major tile with padded rows, whose loads take the arithmetic's layout,
    # ran 4-13% slower on the H100; BENCHMARKS.md, session 12.)
    SROW: tl.constexpr = BD * NP
    scr_row = scr_ptr + ((pid_d * n_b + b) * n_chunks + c).to(tl.int64) * (CKPT // TILE) * SROW
    scr_row = scr_row + (d2 - d0) * NP + n2
    t_begin = c * CH
    t_end = tl.minimum(t_begin + CH, L)
    lam = tl.load(lam_ptr + ((b * n_chunks + c) * dim + d2) * N + n2, mask=dn2, other=0.0)
    d_nx, _ = _load_delta(dt_row + t_end, (t_end < L) & dmask, bias, HAS_BIAS, SOFTPLUS)
    dA_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dBf = tl.zeros([NP, BD], dtype=tl.float32)
    dCf = tl.zeros([NP, BD], dtype=tl.float32)
    dD_acc = tl.zeros([1, BD], dtype=tl.float32)
    db_acc = tl.zeros([1, BD], dtype=tl.float32)
    n_blk = tl.cdiv(t_end - t_begin, CKPT)
    for ib in range(0, n_blk):
        s0 = t_begin + (n_blk - 1 - ib) * CKPT
        s1 = tl.minimum(s0 + CKPT, t_end)
        s_full = s0 + ((s1 - s0) // TILE) * TILE
        h = tl.load(ck_row + (s0 // CKPT).to(tl.int64) * dim * N, mask=dn2, other=0.0)
        # forward over the block: the state entering every tile goes to scratch. Each tile's
        # delta and u (x0r, u0r: its first step, x1r, u1r: its second) are loaded during the
        # tile before, masked past L
        x0r, u0r = _load_xu(s0, dmask, dt_row, u_row)
        x1r, u1r = _load_xu(s0 + 1, dmask & (s0 + 1 < L), dt_row, u_row)
        for t0 in range(s0, s_full, TILE):
            tl.store(scr_row + ((t0 - s0) // TILE) * SROW, h)
            c0x, c0u, c1x, c1u = x0r, u0r, x1r, u1r
            x0r, u0r = _load_xu(t0 + TILE, dmask & (t0 + TILE < L), dt_row, u_row)
            if TILE >= 2:
                x1r, u1r = _load_xu(t0 + TILE + 1, dmask & (t0 + TILE + 1 < L), dt_row, u_row)
            h = _state_step(h, c0x, c0u, t0, dmask, nmask2, A2, bias, Bd, B_row2, N, HAS_BIAS,
                            SOFTPLUS, B_VAR)
            if TILE >= 2:
                h = _state_step(h, c1x, c1u, t0 + 1, dmask, nmask2, A2, bias, Bd, B_row2, N,
                                HAS_BIAS, SOFTPLUS, B_VAR)
        if s_full < s1:
            tl.store(scr_row + ((s_full - s0) // TILE) * SROW, h)
        tl.debug_barrier()
        # backward over the block's tiles, the partial last one first
        if s_full < s1:
            h = tl.load(scr_row + ((s_full - s0) // TILE) * SROW)
            m0 = dmask & (s_full < s1)
            m1 = dmask & (s_full + 1 < s1)
            x0r, u0r, g0r, z0r = _load_rows(s_full, m0, dt_row, u_row, g_row, z_row, HAS_Z)
            x1r, u1r, g1r, z1r = _load_rows(s_full + 1, m1, dt_row, u_row, g_row, z_row, HAS_Z)
            lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc = _bwd_tile(
                h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, x0r, u0r, g0r, z0r, x1r, u1r,
                g1r, z1r, s_full, s1, dmask, nmask2, A2, bias, Bd, Cd, Dd, du_row, ddt_row,
                dz_row, B_row2, C_row2, dB_row, dC_row, gmask_B, gmask_C, N,
                GSUB_B, GSUB_C, BC_ATOMIC, TILE, True, HAS_Z, HAS_D, HAS_BIAS, SOFTPLUS, B_VAR,
                C_VAR)
        n_t = (s_full - s0) // TILE
        # the full tiles from the last; each loads the next one's inputs before its own work
        tn = s_full - TILE
        x0r, u0r, g0r, z0r = _load_rows(tn, dmask & (tn >= 0), dt_row, u_row, g_row, z_row, HAS_Z)
        x1r, u1r, g1r, z1r = _load_rows(tn + 1, dmask & (tn >= 0), dt_row, u_row, g_row, z_row,
                                        HAS_Z)
        for j in range(0, n_t):
            t0 = s_full - TILE - TILE * j
            c0x, c0u, c0g, c0z, c1x, c1u, c1g, c1z = x0r, u0r, g0r, z0r, x1r, u1r, g1r, z1r
            mn = dmask & (t0 - TILE >= 0)
            x0r, u0r, g0r, z0r = _load_rows(t0 - TILE, mn, dt_row, u_row, g_row, z_row, HAS_Z)
            if TILE >= 2:
                x1r, u1r, g1r, z1r = _load_rows(t0 - TILE + 1, mn, dt_row, u_row, g_row, z_row,
                                                HAS_Z)
            h = tl.load(scr_row + ((t0 - s0) // TILE) * SROW)
            lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc = _bwd_tile(
                h, lam, d_nx, dA_acc, dBf, dCf, dD_acc, db_acc, c0x, c0u, c0g, c0z, c1x, c1u,
                c1g, c1z, t0, s1, dmask, nmask2, A2, bias, Bd, Cd, Dd, du_row, ddt_row, dz_row,
                B_row2, C_row2, dB_row, dC_row, gmask_B, gmask_C, N, GSUB_B,
                GSUB_C, BC_ATOMIC, TILE, False, HAS_Z, HAS_D, HAS_BIAS, SOFTPLUS, B_VAR, C_VAR)
        tl.debug_barrier()  # scratch is rewritten by the next block
    _bwd_param_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dinit_ptr, dA_acc, dBf,
                     dCf, dD_acc, db_acc, dmask, lam, tl.exp2(A2 * d_nx), b, c, d2, n2, dn2, dim,
                     N, HAS_D, HAS_BIAS, B_VAR, C_VAR, HAS_INIT)
