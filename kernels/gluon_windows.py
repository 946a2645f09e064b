"""Per-channel windows for the Gluon scan backward (selective_scan_bwd_gluon).

A scan program holds one channel a lane, so a step's per-channel value (delta, u, z, dout, out,
du, ...) is one element a lane, and loading or storing it step by step makes every instruction
touch 32 rows of memory (one per channel). That traffic, not the arithmetic, bounded the Triton
backward (BENCHMARKS.md, session 13). These helpers move a window of WIN steps of 32 channels as
one [32, WIN] tile instead, 16 contiguous bytes a lane and 4 lanes a channel row, through shared
memory that holds the window one row a step ([WIN, 32]); the step loop reads and writes its
rows one channel a lane.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

WIN = gl.constexpr(32)  # steps a window holds
# Triton 3.8 renamed the CTA barrier (3.6: thread_barrier)
_cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
# a window [32 channels, WIN steps] as it moves to and from HBM: 8 steps (16 bytes of bf16) a
# lane, 4 lanes along a channel's row; and the same placement seen as [WIN, 32]
WINDOW_IO = gl.constexpr(gl.BlockedLayout([1, 8], [8, 4], [1, 1], [1, 0]))
WINDOW_IO_T = gl.constexpr(gl.BlockedLayout([8, 1], [4, 8], [1, 1], [0, 1]))
# shared memory of a window, row-major [WIN, 32]: indexed by step (ROWS) or moved whole (BULK)
ROWS = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [0]))
BULK = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))


def supports(ckpt: int) -> bool:
    """Windows tile the checkpoint blocks (and so the chunks) exactly."""
    return ckpt % WIN.value == 0


@gluon.jit
def window(dtype, BD: gl.constexpr):
    """Shared memory for one window of a per-channel tensor of element type ``dtype``."""
    return gl.allocate_shared_memory(dtype, [WIN, BD], ROWS)


@gluon.jit
def window_rows(base, d0, stride, BD: gl.constexpr):
    """Pointers to the program's channel rows ([BD, 1], WINDOW_IO) of a per-channel tensor
    (base: its batch row; stride: its channel stride), and the channel indices, for the caller's
    mask against dim."""
    dc = d0 + gl.arange(0, BD, layout=gl.SliceLayout(1, WINDOW_IO))[:, None]
    return base + dc.to(gl.int64) * stride, dc


@gluon.jit
def window_steps():
    """Step offsets within a window ([1, WIN], WINDOW_IO)."""
    return gl.arange(0, WIN, layout=gl.SliceLayout(0, WINDOW_IO))[None, :]


@gluon.jit
def _bulk(rows):
    """A window ([WIN, BD], addressed by row) as one 2-D view of the same bytes. Uses
    ``_reinterpret`` (Triton 3.6 and 3.8): a row-indexed buffer needs a 1-D layout, a whole-tile
    store a 2-D one."""
    return rows._reinterpret(rows.dtype, rows.shape, BULK)


@gluon.jit
def _get(rows, i, PL: gl.constexpr):
    """Row i (one step) of a staged window: [BD], one value a lane."""
    return rows.index(i).load(PL)


@gluon.jit
def _put(rows, i, v):
    """Store v ([BD], one value a lane) as row i of a staged window."""
    rows.index(i).store(v.to(rows.dtype))


@gluon.jit
def _stage_in(rows, src, w0, tend, cmask, tw):
    """Window [w0, w0 + WIN) of a per-channel input ([BD, WIN] from channel rows ``src``,
    coalesced along time, masked past tend) into ``rows`` ([WIN, BD], one row a step)."""
    v = gl.load(src + (w0 + tw), mask=cmask & (w0 + tw < tend), other=0.0)
    _bulk(rows).store(gl.permute(v, [1, 0]))


@gluon.jit
def _flush_out(rows, dst, w0, tend, cmask, tw):
    """The window's steps < tend of a per-channel output, from ``rows`` to its channel rows."""
    v = gl.permute(_bulk(rows).load(WINDOW_IO_T), [1, 0])
    gl.store(dst + (w0 + tw), v, mask=cmask & (w0 + tw < tend))
