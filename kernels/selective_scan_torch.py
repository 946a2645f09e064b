"""Fast pure-PyTorch selective scan: the CPU path of ``selective_scan_fn`` (mamba_ssm semantics).

See ``selective_scan_ref`` for the definition. Design, chosen by measurement on a 2-core CPU
(``kernels/bench_cpu_scan.py``):

* The recurrence x_t = a_t * x_{t-1} + b_t runs as a plain loop over time, one in-place ``addcmul_``
  per step on a contiguous (batch, dim, N) slice. That does the minimum arithmetic (a T x T
  "decay matrix" per chunk costs T/2 times more exps and multiplies, and lost on CPU); the Python cost
  is a few microseconds per step.
* Everything that is not the recurrence (exp(delta*A), delta*u*B, the C contraction, every gradient
  reduction) is a vectorised op over a chunk of ``chunk`` time steps, laid out time-first so that
  the step slices are contiguous and the chunk stays in cache.
* Backward is written by hand (``_ScanCore``): the adjoint of a linear recurrence is the same
  recurrence run backwards. Autograd over a per-step loop would record ~4 nodes per step; this
  records one. Forward keeps only the state at each chunk boundary and the backward recomputes a
  chunk's states from it (activation checkpointing): memory is O(L/chunk) states instead of
  O(L) and no (batch, dim, L, N) tensor ever exists.
* softplus/delta_bias, the D skip and the z gate are (batch, dim, L) ops done outside the core with
  ordinary autograd, as are the dtype casts: the core always computes in float32 (float64 when the
  inputs are float64), so bf16/fp16 inputs accumulate in fp32.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .selective_scan_ref import gate_and_skip, prepare_delta

DEFAULT_CHUNK = 64


def _compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) \
        else torch.float32


def _time_first_bc(BC: torch.Tensor, batch: int, dim: int, L: int, name: str):
    """View B or C as (L or 1, batch or 1, groups, 1, N), to broadcast against a state laid out as
    (T, batch, groups, dim // groups, N). Returns (view, groups, time_varying)."""
    if BC.dim() == 2:  # (dim, N): time-invariant, one "group" per channel
        if BC.shape[0] != dim:
            raise ValueError(f"{name} of shape {tuple(BC.shape)} must be (dim={dim}, N)")
        return BC[None, None, :, None, :], dim, False
    if BC.dim() == 3:  # (batch, N, L)
        if BC.shape[0] != batch or BC.shape[2] != L:
            raise ValueError(f"{name} of shape {tuple(BC.shape)} must be (batch={batch}, N, L={L})")
        return BC.permute(2, 0, 1)[:, :, None, None, :], 1, True
    if BC.dim() == 4:  # (batch, groups, N, L)
        groups = BC.shape[1]
        if BC.shape[0] != batch or BC.shape[3] != L or groups == 0 or dim % groups:
            raise ValueError(f"{name} of shape {tuple(BC.shape)} must be (batch={batch}, groups, N, "
                             f"L={L}) with dim={dim} divisible by groups")
        return BC.permute(3, 0, 1, 2)[:, :, :, None, :], groups, True
    raise ValueError(f"{name} must have 2, 3 or 4 dims, got shape {tuple(BC.shape)}")


def _bc_grad_to_input(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bring a gradient laid out as (L, batch, groups, N) (or (dim, N) when fixed) back to B/C's shape."""
    if like.dim() == 2:
        return g
    if like.dim() == 3:
        return g[:, :, 0, :].permute(1, 2, 0).contiguous()
    return g.permute(1, 2, 3, 0).contiguous()


class _ScanCore(torch.autograd.Function):
    """y_t = <x_t, C_t>, x_t = exp(delta_t A) x_{t-1} + delta_t u_t B_t, on time-first inputs.

    u, delta: (L, batch, dim) contiguous, compute dtype. A: (dim, N). B, C: original layouts.
    Returns y (L, batch, dim) and the last state (batch, dim, N).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, x0, chunk):
        L, batch, dim = u.shape
        N = A.shape[1]
        Bv, gB, B_varies = _time_first_bc(B, batch, dim, L, "B")
        Cv, gC, C_varies = _time_first_bc(C, batch, dim, L, "C")
        x = (u.new_zeros(batch, dim, N) if x0 is None else x0.to(u.dtype).clone())
        y = u.new_empty(L, batch, dim)
        n_chunks = (L + chunk - 1) // chunk
        starts = u.new_empty(n_chunks, batch, dim, N)  # state entering each chunk, for backward
        for c in range(n_chunks):
            t0, t1 = c * chunk, min(L, (c + 1) * chunk)
            starts[c].copy_(x)
            a, xs, _ = _chunk_states(u, delta, A, Bv, gB, B_varies, t0, t1, x)
            x = xs[-1]
            _contract_c(xs, Cv, gC, C_varies, t0, t1, out=y[t0:t1])
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.chunk = chunk
        ctx.x0_given = x0 is not None
        ctx.set_materialize_grads(False)
        return y, x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):
        u, delta, A, B, C, starts = ctx.saved_tensors
        chunk = ctx.chunk
        L, batch, dim = u.shape
        N = A.shape[1]
        Bv, gB_groups, B_varies = _time_first_bc(B, batch, dim, L, "B")
        Cv, gC_groups, C_varies = _time_first_bc(C, batch, dim, L, "C")
        if gy is None:
            gy = u.new_zeros(L, batch, dim)
        gu = torch.empty_like(u)
        gdelta = torch.empty_like(u)
        gA = torch.zeros_like(A)
        gB = (u.new_empty(L, batch, gB_groups, N) if B_varies else u.new_zeros(dim, N))
        gC = (u.new_empty(L, batch, gC_groups, N) if C_varies else u.new_zeros(dim, N))
        # carry = a_{t1} * h_{t1}: what the chunk after this one sends back into its last state.
        carry = g_last.to(u.dtype) if g_last is not None else None
        for c in reversed(range(starts.shape[0])):
            t0, t1 = c * chunk, min(L, (c + 1) * chunk)
            T = t1 - t0
            x_start = starts[c]
            a, xs, du = _chunk_states(u, delta, A, Bv, gB_groups, B_varies, t0, t1, x_start)
            gy_c = gy[t0:t1]
            # h_t = dLoss/dx_t = C_t gy_t + a_{t+1} h_{t+1}: the recurrence, reversed.
            hs = _outer_bc(gy_c, Cv, gC_groups, C_varies, t0, t1)
            h_steps, a_steps = hs.unbind(0), a.unbind(0)
            if carry is not None:
                h_steps[T - 1].add_(carry)
            for t in range(T - 2, -1, -1):
                h_steps[t].addcmul_(a_steps[t + 1], h_steps[t + 1])
            carry = a_steps[0] * h_steps[0]
            # dLoss/da_t * a_t = h_t * a_t * x_{t-1}; reuse a's storage.
            p = a.mul_(hs)
            p[1:].mul_(xs[:-1])
            p[0].mul_(x_start)
            d_c, u_c = delta[t0:t1], u[t0:t1]
            gd = torch.einsum("tbdn,dn->tbd", p, A)
            gA.add_(torch.einsum("tbdn,tbd->dn", p, d_c))
            g_du = _contract_c(hs, Bv, gB_groups, B_varies, t0, t1)  # sum_n h_t B_t
            gd.addcmul_(g_du, u_c)
            gdelta[t0:t1] = gd
            torch.mul(g_du, d_c, out=gu[t0:t1])
            _reduce_bc(hs, du, gB_groups, B_varies, gB, t0, t1)
            _reduce_bc(xs, gy_c, gC_groups, C_varies, gC, t0, t1)
        gx0 = carry if ctx.x0_given else None
        return (gu, gdelta, gA, _bc_grad_to_input(gB, B), _bc_grad_to_input(gC, C), gx0, None)


def _chunk_states(u, delta, A, Bv, groups, varies, t0, t1, x_prev):
    """Run the recurrence over steps [t0, t1) from state x_prev.

    Returns a = exp(delta A) and the states x, both (T, batch, dim, N), and delta*u (T, batch, dim)."""
    d_c = delta[t0:t1]
    a = torch.exp(d_c.unsqueeze(-1) * A)
    du = d_c * u[t0:t1]
    xs = _outer_bc(du, Bv, groups, varies, t0, t1)  # b_t = delta_t u_t B_t, overwritten by x_t
    x_steps, a_steps = xs.unbind(0), a.unbind(0)
    prev = x_prev
    for t in range(t1 - t0):
        prev = x_steps[t].addcmul_(a_steps[t], prev)
    return a, xs, du


def _outer_bc(v, BCv, groups, varies, t0, t1):
    """(T, batch, dim) x B/C -> (T, batch, dim, N): v[t,b,d] * BC[t,b,group(d),n]."""
    T, batch, dim = v.shape
    bc = BCv[t0:t1] if varies else BCv
    out = v.view(T, batch, groups, dim // groups, 1) * bc
    return out.view(T, batch, dim, -1)


def _contract_c(xs, BCv, groups, varies, t0, t1, out=None):
    """(T, batch, dim, N) . B/C over N -> (T, batch, dim)."""
    T, batch, dim, N = xs.shape
    bc = BCv[t0:t1] if varies else BCv
    x5 = xs.view(T, batch, groups, dim // groups, N)
    r = torch.matmul(x5, bc.transpose(-1, -2)).view(T, batch, dim)
    if out is not None:
        out.copy_(r)
        return out
    return r


def _reduce_bc(src, w, groups, varies, acc, t0, t1):
    """Gradient of B/C over steps [t0, t1): sum over the channels of a group of src * w.

    src (T, batch, dim, N), w (T, batch, dim). Writes acc[t0:t1] (time-varying) or adds to acc (dim, N)."""
    T, batch, dim, N = src.shape
    if not varies:
        acc.add_(torch.einsum("tbdn,tbd->dn", src, w))
        return
    s5 = src.view(T, batch, groups, dim // groups, N)
    w5 = w.view(T, batch, groups, 1, dim // groups)
    acc[t0:t1] = torch.matmul(w5, s5)[:, :, :, 0, :]


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
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    cdt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_c = u.to(cdt)
    delta_c = prepare_delta(delta.to(cdt), None if delta_bias is None else delta_bias.to(cdt),
                            delta_softplus)
    if L == 0:
        y = u_c.new_zeros(batch, dim, 0)
        last = (u_c.new_zeros(batch, dim, A.shape[1]) if initial_state is None
                else initial_state.to(cdt).clone())
    else:
        x0 = None if initial_state is None else initial_state.to(cdt)
        y_t, last = _ScanCore.apply(u_c.permute(2, 0, 1).contiguous(),
                                    delta_c.permute(2, 0, 1).contiguous(),
                                    A.to(cdt), B.to(cdt), C.to(cdt), x0, int(chunk))
        y = y_t.permute(1, 2, 0)
    out = gate_and_skip(y, u_c, None if D is None else D.to(cdt), None if z is None else z.to(cdt))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
