"""Linear layers between the token-major residual stream and the mixer's channel-major inside.

The residual stream is (batch, L, d_model), like any sequence model's. The scan and conv kernels
want (batch, channels, L) with unit stride along L. ``nn.Linear`` followed by ``.transpose(1, 2)``
gives that shape with stride d_inner along L, so every kernel input and every gradient on the way
back was a transposing copy: 9 full-size copies a layer, ~20% of a GPU training step (profile of
2026-11-25, kernels/BENCHMARKS.md). mamba_ssm avoids most of them inside one hand-written autograd
function for the whole mixer; here one small autograd function covers the mixer's four linear layers:

    to_channels(hidden (B, L, in), W)   -> (B, out, L)   in_proj
    channel_linear(x (B, in, L), W)     -> (B, out, L)   x_proj, dt_proj
    from_channels(y (B, in, L), W)      -> (B, L, out)   out_proj

Each is a batched matmul whose operands are transposed views or a stride-0 broadcast weight
(cuBLAS reads them in place), and its backward returns the input's gradient in the input's own
layout, contiguous. Plain autograd of ``torch.matmul(W, hidden.mT)`` does neither: matmul folds
the batch into rows (a copy) and hands back a transposed gradient that the next kernel copies.

Precision: the matmuls run in the autocast dtype when autocast is on (as ``nn.Linear`` would); the
weight gradient is summed over batch rows in float32 from per-row products in that dtype.
"""
from __future__ import annotations

from typing import Optional

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would compute in here: the autocast dtype if autocast is on."""
    dev = x.device.type
    if dev not in ("cuda", "cpu"):
        return x.dtype
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4's device-generic API
        on, dtype = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
    elif dev == "cuda":  # older spellings, kept in case a 2.4 pre-release lacks the above
        on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    else:
        on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if on else x.dtype


def _bmm(a: torch.Tensor, b: torch.Tensor, acc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batched matmul (plus ``acc`` when given) where one side may be a 2-D weight: it is
    broadcast with stride 0, so neither operand is copied (``torch.matmul`` of a 2-D by a 3-D
    tensor folds, and copies)."""
    if a.dim() == 2:
        a = a.expand(b.shape[0], *a.shape)
    if b.dim() == 2:
        b = b.expand(a.shape[0], *b.shape)
    return torch.bmm(a, b) if acc is None else torch.baddbmm(acc, a, b)


class _Linear(torch.autograd.Function):
    """out = weight @ x per batch row, in channel-major terms: x as (B, in, L), out as (B, out, L).
    ``x_tokens`` / ``out_tokens``: that side is token-major (B, L, features) in memory instead.
    ``parts`` (channel-major output only): return the output split into channel groups of these
    sizes. Their gradients then arrive separately and are used as they are: no concatenation."""

    @staticmethod
    def forward(ctx, x, weight, bias, x_tokens, out_tokens, parts):
        dt = _compute_dtype(x)
        xx, w = x.to(dt), weight.to(dt)
        xc = xx.mT if x_tokens else xx
        if out_tokens:
            out = _bmm(xc.mT, w.t())
            if bias is not None:
                out = out + bias.to(dt)
        else:
            out = _bmm(w, xc)
            if bias is not None:
                out = out + bias.to(dt)[:, None]
        ctx.save_for_backward(xx, w, bias)
        ctx.flags = (x_tokens, out_tokens)
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.parts = parts or (weight.shape[0],)
        ctx.set_materialize_grads(False)  # an unused part's gradient stays None, not zeros
        return out.split(parts, dim=1) if parts else out

    @staticmethod
    def backward(ctx, *grads):
        xx, w, bias = ctx.saved_tensors
        x_tokens, out_tokens = ctx.flags
        xc = xx.mT if x_tokens else xx
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        dx = None
        dws, dbs = [], []
        row = 0
        for g, n in zip(grads, ctx.parts):  # one output part: rows [row, row + n) of the weight
            wp = w[row:row + n]
            row += n
            if g is None:  # this part never reached the loss: zero rows where they are needed
                if need_w:
                    dws.append(wp.new_zeros(wp.shape, dtype=torch.float32))
                if need_b:
                    dbs.append(wp.new_zeros((n,), dtype=torch.float32))
                continue
            g = g.to(xx.dtype)
            gc = g.mT if out_tokens else g  # (B, n, L)
            if need_x:  # in x's own layout, contiguous; later parts accumulate into it
                dx = _bmm(gc.mT, wp, dx) if x_tokens else _bmm(wp.t(), gc, dx)
            if need_w:  # sum_b g_b @ x_b^T: one product per row, summed in fp32
                dws.append(_bmm(gc, xc.mT).sum(0, dtype=torch.float32))
            if need_b:
                dbs.append(gc.sum((0, 2), dtype=torch.float32))
        dx = None if dx is None else dx.to(ctx.dtypes[0])
        dw = torch.cat(dws).to(ctx.dtypes[1]) if need_w else None
        db = torch.cat(dbs).to(bias.dtype) if need_b else None
        return dx, dw, db, None, None, None


def to_channels(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                parts: Optional[tuple] = None):
    """(B, L, in) -> (B, out, L): ``F.linear(hidden, weight, bias).transpose(1, 2)``, stored
    with unit stride along L; with ``parts`` (sizes summing to out) the tuple of its channel
    groups, like ``.split(parts, dim=1)`` but without concatenating their gradients."""
    return _Linear.apply(hidden, weight, bias, True, False, tuple(parts) if parts else None)


def channel_linear(x: torch.Tensor, weight: torch.Tensor,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, in, L) -> (B, out, L), for any strides of x with unit stride along L."""
    return _Linear.apply(x, weight, bias, False, False, None)


def from_channels(y: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, in, L) -> (B, L, out): ``F.linear(y.transpose(1, 2), weight, bias)`` without copying y."""
    return _Linear.apply(y, weight, bias, False, True, None)
