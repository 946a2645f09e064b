"""Micro-benchmark of the CPU selective scan: forward and forward+backward per call.

    python kernels/bench_cpu_scan.py [--lengths 512 4096] [--repeats 3] [--variants ...]

Compares ``selective_scan_chunked`` (several chunk sizes) with two alternatives it was chosen over:
  loop   the naive sequential loop under autograd (mamba_ssm's reference formulation, fp32)
  tmat   chunks with an intra-chunk (T x T) decay matrix exp(S_t - S_s) under autograd
Shapes default to one Mamba layer of a d_model 256 model: batch 2, dim 512, N 16, B/C (batch, N, L).
Timings are the minimum over repeats (the machine is shared; the minimum is the least noisy).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from seqmamba.kernels.selective_scan_torch import selective_scan_chunked


def scan_loop(u, delta, A, B, C, D, z, delta_bias):
    """Naive sequential loop in fp32 (mamba_ssm's reference formulation), recorded by autograd step
    by step. Steps are taken with unbind: indexing dA[:, :, i] would make every step's backward
    allocate a full-size gradient, which is quadratic in L."""
    delta = F.softplus(delta + delta_bias[:, None])
    dA = torch.exp(delta[..., None] * A[:, None, :]).unbind(2)  # L tensors (b, d, N)
    dBu = ((delta * u)[..., None] * B.transpose(1, 2)[:, None]).unbind(2)
    Cs = C.unbind(2)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = dA[i] * x + dBu[i]
        ys.append((x * Cs[i][:, None, :]).sum(-1))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def scan_tmat(u, delta, A, B, C, D, z, delta_bias, chunk=32):
    """Intra-chunk decay matrix, states carried between chunks, all under autograd."""
    delta = F.softplus(delta + delta_bias[:, None])
    batch, dim, L = u.shape
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t0 in range(0, L, chunk):
        t1 = min(L, t0 + chunk)
        d_c = delta[:, :, t0:t1]
        S = torch.cumsum(d_c, dim=-1)  # (b, d, T); S*A <= 0, exp never overflows
        seg = (S[..., :, None] - S[..., None, :])[..., None] * A[:, None, None, :]  # (b,d,T,T,N)
        causal = torch.ones(t1 - t0, t1 - t0, dtype=torch.bool).tril()
        decay = seg.masked_fill(~causal[:, :, None], float("-inf")).exp()  # mask before exp
        dBu = torch.einsum("bdt,bnt->bdtn", d_c * u[:, :, t0:t1], B[:, :, t0:t1])
        xs = (torch.einsum("bdtsn,bdsn->bdtn", decay, dBu)
              + torch.exp(S[..., None] * A[:, None]) * x[:, :, None])
        ys.append(torch.einsum("bdtn,bnt->bdt", xs, C[:, :, t0:t1]))
        x = xs[:, :, -1]
    y = torch.cat(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def make_inputs(batch, dim, N, L, requires_grad):
    u = torch.randn(batch, dim, L)
    delta = torch.randn(batch, dim, L) * 0.5
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1)  # Mamba's S4D-real init
    B, C = torch.randn(batch, N, L), torch.randn(batch, N, L)
    D, z = torch.ones(dim), torch.randn(batch, dim, L)
    delta_bias = torch.log(torch.expm1(torch.empty(dim).uniform_(1e-3, 1e-1)))  # softplus^-1(dt)
    ts = (u, delta, A, B, C, D, z, delta_bias)
    return [t.requires_grad_(requires_grad) for t in ts]


def time_call(fn, args, backward, repeats):
    best = float("inf")
    for _ in range(repeats):
        for a in args:
            a.grad = None
        t = time.perf_counter()
        if backward:
            out = fn(*args)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--variants", nargs="+",
                   default=["chunked32", "chunked64", "chunked128", "loop", "tmat32"],
                   help="chunkedT (T = chunk size), loop, tmatT")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; batch {args.batch}, "
          f"dim {args.dim}, N {args.N}; min of {args.repeats}")
    for L in args.lengths:
        for name in args.variants:
            if name.startswith("chunked"):
                T = int(name[len("chunked"):])
                def fn(u, delta, A, B, C, D, z, db, T=T):
                    return selective_scan_chunked(u, delta, A, B, C, D, z, db, delta_softplus=True,
                                                  chunk=T)
            elif name.startswith("tmat"):
                T = int(name[len("tmat"):])
                def fn(*a, T=T):
                    return scan_tmat(*a, chunk=T)
            elif name == "loop":
                fn = scan_loop
            else:
                raise SystemExit(f"unknown variant {name!r}")
            ins = make_inputs(args.batch, args.dim, args.N, L, requires_grad=True)
            fwd = time_call(fn, ins, False, args.repeats)
            fb = time_call(fn, ins, True, args.repeats)
            print(f"L={L:5d} {name:12s} forward {fwd * 1e3:8.1f} ms   "
                  f"forward+backward {fb * 1e3:8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
