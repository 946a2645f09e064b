"""Fast pure-PyTorch selective scan: the CPU path of ``selective_scan_fn`` (mamba_ssm semantics).

See ``selective_scan_ref`` for the definition. Design, chosen by measurement on a 2-core CPU
(``kernels/bench_cpu_scan.py``):

* The recurrence x_t = a_t * x_{t-1} + b_t runs as a plain loop over time, one in-place ``addcmul_``
  per step on a contiguous (batch, dim, N) slice. That is the least arithmetic possible; an
  intra-chunk (T x T) decay matrix exp(S_t - S_s) costs T/2 times more exps and multiplies and was
  several times slower on CPU. The Python cost is a few microseconds per step.
* Everything else (exp(delta*A), delta*u*B, the C contraction, every gradient reduction) is a
  vectorised op over a chunk of ``chunk`` time steps, written into work buffers allocated once per
  call: a fresh multi-MB tensor per op costs page faults that took longer than the op itself.
* The state is laid out (time, batch, groups, N, dim // groups): a step's slice is contiguous, the
  contractions with B/C over N and the reductions over channels are small matmuls, and the
  reductions over N run across the contiguous channel axis.
* Backward is written by hand (``_ScanCore``, plain torch ops): the adjoint of a linear recurrence
  is the same recurrence run backwards. Autograd over a per-step loop records several nodes per
  step and is far slower. Forward keeps only the state entering each chunk; backward recomputes a
  chunk's states from it (activation checkpointing), so no (batch, dim, L, N) tensor is ever stored.
* softplus/delta_bias, the D skip and the z gate are (batch, dim, L) ops done outside the core with
  ordinary autograd, as are the dtype casts: the core computes in float32 (float64 when any input
  is float64), so bf16/fp16 inputs accumulate in fp32.
* exp(delta*A) is computed as exp2(delta * A*log2(e)): torch's exp2 kernel is ~3x faster on CPU.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .selective_scan_ref import gate_and_skip, prepare_delta

DEFAULT_CHUNK = 64


class _Layout:
    """Shapes and B/C views shared by forward and backward.

    The state is (batch, G, N, dim // G). G is the number of B/C groups: 1 for (batch, N, L),
    ``groups`` for (batch, groups, N, L), and dim for a time-invariant (dim, N) B/C (one "group" per
    channel). B and C must then agree on G; when they do not, the coarser one is expanded.
    """

    def __init__(self, u, A, B, C):
        self.L, self.batch, self.dim = u.shape
        self.N = A.shape[1]
        gB, gC = _groups_of(B, self.dim), _groups_of(C, self.dim)
        self.G = max(gB, gC)  # both divide dim; a mismatch is resolved by expanding the coarser one
        if self.G % min(gB, gC):
            raise ValueError(f"B and C group counts {gB} and {gC} are incompatible")
        self.dg = self.dim // self.G

    def state(self, T=None):
        shape = (self.batch, self.G, self.N, self.dg)
        return shape if T is None else (T,) + shape

    def to_state(self, x):  # (batch, dim, N) -> (batch, G, N, dg)
        return x.reshape(self.batch, self.G, self.dg, self.N).transpose(-1, -2).contiguous()

    def from_state(self, x):  # (batch, G, N, dg) -> (batch, dim, N)
        return x.transpose(-1, -2).reshape(self.batch, self.dim, self.N)

    def time_first_bc(self, BC):
        """B or C as (L, batch, G, N) contiguous, or (G, N) when time-invariant."""
        if BC.dim() == 2:
            return BC.contiguous()
        bc = BC.permute(2, 0, 1)[:, :, None, :] if BC.dim() == 3 else BC.permute(3, 0, 1, 2)
        if bc.shape[2] != self.G:
            bc = bc.repeat_interleave(self.G // bc.shape[2], dim=2)
        return bc.contiguous()

    def bc_grad_to_input(self, g, like):
        """Inverse of time_first_bc for a gradient, summing expanded groups back."""
        if like.dim() == 2:
            return g
        groups = 1 if like.dim() == 3 else like.shape[1]
        if groups != self.G:
            g = g.view(self.L, self.batch, groups, self.G // groups, self.N).sum(3)
        if like.dim() == 3:
            return g[:, :, 0, :].permute(1, 2, 0).contiguous()
        return g.permute(1, 2, 3, 0).contiguous()


def _groups_of(BC, dim):
    if BC.dim() == 2:
        if BC.shape[0] != dim:
            raise ValueError(f"time-invariant B/C must be (dim={dim}, N), got {tuple(BC.shape)}")
        return dim
    if BC.dim() == 3:
        return 1
    if BC.dim() == 4:
        groups = BC.shape[1]
        if groups == 0 or dim % groups:
            raise ValueError(f"dim={dim} is not divisible by B/C groups={groups}")
        return groups
    raise ValueError(f"B/C must have 2, 3 or 4 dims, got shape {tuple(BC.shape)}")


class _Chunk:
    """Views of chunk [t0, t1) of the time-first inputs, shaped to broadcast against the state."""

    def __init__(self, lay, u, delta, Bt, Ct, t0, t1):
        T = t1 - t0
        self.T = T
        shape = (T, lay.batch, lay.G, 1, lay.dg)
        self.u = u[t0:t1].view(shape)
        self.delta = delta[t0:t1].view(shape)
        if Bt.dim() == 2:  # (G=dim, N) time-invariant
            self.B_col = Bt.view(1, 1, lay.G, lay.N, 1)
            self.B_varies = False
        else:
            self.B_col = Bt[t0:t1].unsqueeze(-1)  # (T, batch, G, N, 1)
            self.B_varies = True
        if Ct.dim() == 2:
            self.C_col = Ct.view(1, 1, lay.G, lay.N, 1)
            self.C_varies = False
        else:
            self.C_col = Ct[t0:t1].unsqueeze(-1)
            self.C_varies = True


def _contract_n(BC_col, varies, s):
    """sum_n BC[..., n] * s[..., n, :]: (T, batch, G, N, dg) -> (T, batch, G, 1, dg)."""
    if varies:
        return torch.matmul(BC_col.transpose(-1, -2), s)
    return (s * BC_col).sum(-2, keepdim=True)


def _chunk_states(ch, A2, x_prev, a, xs):
    """Fill a = exp(delta*A) and xs = the chunk's states, starting from x_prev. Returns delta*u."""
    torch.mul(ch.delta, A2, out=a).exp2_()
    du = ch.delta * ch.u
    torch.mul(du, ch.B_col, out=xs)  # b_t = delta_t u_t B_t, turned into x_t in place below
    x_steps, a_steps = xs.unbind(0), a.unbind(0)
    prev = x_prev
    for t in range(ch.T):
        prev = x_steps[t].addcmul_(a_steps[t], prev)
    return du


def _channels_inner(x) -> bool:
    """Whether a (batch, dim, L) tensor is stored (batch, L, dim): a transposed Linear output."""
    return x.shape[1] > 1 and x.stride(1) == 1 and x.shape[2] > 1 and x.stride(2) >= x.shape[1]


def _time_first(x):
    """(batch, dim, L) of any layout -> (L, batch, dim) contiguous.

    Channels-inner inputs are copied row by row (cheap); time-inner ones are transposed as one
    2D matrix, for which torch has a blocked kernel ~4x faster than copying a 3D permute."""
    b, d, L = x.shape
    if _channels_inner(x):
        return x.permute(2, 0, 1).contiguous()
    return x.reshape(b * d, L).t().contiguous().view(L, b, d)


def _time_last(x, channels_inner: bool):
    """(L, batch, dim) contiguous -> (batch, dim, L), stored channels-inner or time-inner."""
    L, b, d = x.shape
    if channels_inner:
        return x.permute(1, 0, 2).contiguous().transpose(1, 2)
    return x.reshape(L, b * d).t().contiguous().view(b, d, L)


class _ScanCore(torch.autograd.Function):
    """y_t = <x_t, C_t>, x_t = exp(delta_t A) x_{t-1} + delta_t u_t B_t.

    u, delta: (batch, dim, L), compute dtype; A (dim, N); B, C as given to selective_scan_chunked;
    x0 (batch, dim, N) or None. Returns y (batch, dim, L) and the last state (batch, dim, N).
    Inside, u, delta, y and their gradients are time-first (L, batch, dim).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0, chunk):
        # y and delta's gradient take delta's layout, u's gradient u's: no relayout downstream.
        ctx.channels_inner = (_channels_inner(u), _channels_inner(delta))
        u, delta = _time_first(u), _time_first(delta)
        lay = _Layout(u, A, B, C)
        A_sd = A.view(lay.G, lay.dg, lay.N).transpose(1, 2).contiguous()  # (G, N, dg)
        A2 = A_sd * math.log2(math.e)
        Bt, Ct = lay.time_first_bc(B), lay.time_first_bc(C)
        x = u.new_zeros(lay.state()) if x0 is None else lay.to_state(x0)
        y = u.new_empty(lay.L, lay.batch, lay.dim)
        n_chunks = (lay.L + chunk - 1) // chunk
        starts = u.new_empty((n_chunks,) + lay.state())  # state entering each chunk, for backward
        T_max = min(chunk, lay.L)
        a_buf, x_buf = u.new_empty(lay.state(T_max)), u.new_empty(lay.state(T_max))
        for c in range(n_chunks):
            t0, t1 = c * chunk, min(lay.L, (c + 1) * chunk)
            ch = _Chunk(lay, u, delta, Bt, Ct, t0, t1)
            a, xs = a_buf[:ch.T], x_buf[:ch.T]
            starts[c].copy_(x)  # also frees x, a view of x_buf, from being overwritten below
            _chunk_states(ch, A2, starts[c], a, xs)
            x = xs[-1]
            y[t0:t1] = _contract_n(ch.C_col, ch.C_varies, xs).view(ch.T, lay.batch, lay.dim)
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.chunk = chunk
        ctx.x0_given = x0 is not None
        ctx.set_materialize_grads(False)
        return _time_last(y, ctx.channels_inner[1]), lay.from_state(x).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk = ctx.chunk
        lay = _Layout(u, A, B, C)
        L, batch, G, N, dg = lay.L, lay.batch, lay.G, lay.N, lay.dg
        A_sd = A.view(G, dg, N).transpose(1, 2).contiguous()
        A2 = A_sd * math.log2(math.e)
        Bt, Ct = lay.time_first_bc(B), lay.time_first_bc(C)
        gy = u.new_zeros(L, batch, lay.dim) if gy is None else _time_first(gy)
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gA = torch.zeros_like(A_sd)
        gB = u.new_empty(L, batch, G, N) if Bt.dim() == 4 else torch.zeros_like(Bt)
        gC = u.new_empty(L, batch, G, N) if Ct.dim() == 4 else torch.zeros_like(Ct)
        T_max = min(chunk, L)
        a_buf, x_buf, h_buf = (u.new_empty(lay.state(T_max)) for _ in range(3))
        # carry = a_{t1} * h_{t1}: what the next chunk feeds back into this chunk's last state.
        carry = lay.to_state(g_last.to(u.dtype)) if g_last is not None else None
        for c in reversed(range(starts.shape[0])):
            t0, t1 = c * chunk, min(L, (c + 1) * chunk)
            ch = _Chunk(lay, u, delta, Bt, Ct, t0, t1)
            T = ch.T
            a, xs, hs = a_buf[:T], x_buf[:T], h_buf[:T]
            x_start = starts[c]
            du = _chunk_states(ch, A2, x_start, a, xs)
            gy_c = gy[t0:t1].view(T, batch, G, 1, dg)
            # h_t = dLoss/dx_t = C_t gy_t + a_{t+1} h_{t+1}: the recurrence, run backwards.
            torch.mul(gy_c, ch.C_col, out=hs)
            h_steps, a_steps = hs.unbind(0), a.unbind(0)
            if carry is not None:
                h_steps[T - 1].add_(carry)
            for t in range(T - 2, -1, -1):
                h_steps[t].addcmul_(a_steps[t + 1], h_steps[t + 1])
            carry = a_steps[0] * h_steps[0]
            _reduce_channels(xs, gy_c, ch.C_varies, gC, t0, t1)       # dLoss/dC_t = sum_d gy x_t
            _reduce_channels(hs, du, ch.B_varies, gB, t0, t1)         # dLoss/dB_t = sum_d h_t du_t
            g_du = _contract_n(ch.B_col, ch.B_varies, hs)             # sum_n h_t B_t
            # p_t = dLoss/da_t * a_t = h_t * a_t * x_{t-1}, built in a's buffer.
            p = a.mul_(hs)
            p[1:].mul_(xs[:-1])
            p[0].mul_(x_start)
            gd = torch.mul(p, A_sd, out=hs).sum(-2, keepdim=True)   # sum_n p_t A  (hs is free now)
            gA.add_(p.mul_(ch.delta).sum((0, 1)))
            gd.addcmul_(g_du, ch.u)
            gdelta[t0:t1] = gd.view(T, batch, lay.dim)
            gu[t0:t1] = (g_du * ch.delta).view(T, batch, lay.dim)
        gx0 = lay.from_state(carry) if ctx.x0_given else None
        gA = gA.transpose(1, 2).reshape(lay.dim, N)
        u_ci, delta_ci = ctx.channels_inner
        return (_time_last(gu, u_ci), _time_last(gdelta, delta_ci), gA, lay.bc_grad_to_input(gB, B),
                lay.bc_grad_to_input(gC, C), gx0, None)


def _reduce_channels(src, w, varies, acc, t0, t1):
    """Gradient of B/C over steps [t0, t1): sum over the channels of a group of src * w.

    src (T, batch, G, N, dg), w (T, batch, G, 1, dg). Writes acc[t0:t1] (time-varying B/C, acc is
    (L, batch, G, N)) or adds to acc (time-invariant, acc is (G, N), summed over time and batch)."""
    if varies:
        acc[t0:t1] = torch.matmul(src, w.transpose(-1, -2)).squeeze(-1)
    else:
        acc.add_((src * w).sum((0, 1, 4)))


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, initial_state=None, chunk: int = DEFAULT_CHUNK):
    """mamba_ssm's ``selective_scan_fn`` in pure PyTorch (see module docstring for the design).

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L) | (batch, groups, N, L) |
    (dim, N); D, delta_bias: (dim,); initial_state: (batch, dim, N).
    Returns out (batch, dim, L) in u's dtype, and with ``return_last_state`` the last state
    (batch, dim, N) in float32 (float64 for float64 inputs). Differentiable in every tensor input.
    """
    if A.is_complex():
        raise ValueError("selective_scan_chunked supports real A only")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N); got {tuple(A.shape)}")
    N = A.shape[1]
    for name, BC in (("B", B), ("C", C)):
        groups = BC.shape[1] if BC.dim() == 4 else 0
        expect = {2: (dim, N), 3: (batch, N, L), 4: (batch, groups, N, L)}
        if BC.dim() not in expect or tuple(BC.shape) != expect[BC.dim()]:
            raise ValueError(f"{name} must be (batch, N, L), (batch, groups, N, L) or (dim, N) "
                             f"with batch={batch}, N={N}, L={L}, dim={dim}; got {tuple(BC.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, N):
        raise ValueError(f"initial_state must be (batch={batch}, dim={dim}, N={N}); "
                         f"got {tuple(initial_state.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    cdt = (torch.float64 if any(t is not None and t.dtype == torch.float64
                                for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
           else torch.float32)
    u_c = u.to(cdt)
    delta_c = prepare_delta(delta.to(cdt), None if delta_bias is None else delta_bias.to(cdt),
                            delta_softplus)
    if L == 0:
        y = u_c.new_zeros(batch, dim, 0)
        last = (u_c.new_zeros(batch, dim, N) if initial_state is None
                else initial_state.to(cdt).clone())
    else:
        x0 = None if initial_state is None else initial_state.to(cdt)
        y, last = _ScanCore.apply(u_c, delta_c, A.to(cdt), B.to(cdt), C.to(cdt), x0, int(chunk))
    out = gate_and_skip(y, u_c, None if D is None else D.to(cdt), None if z is None else z.to(cdt))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
