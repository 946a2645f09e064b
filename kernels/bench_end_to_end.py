"""End-to-end GPU numbers for the whole model: training throughput, long-context memory, and the
Triton path against the pure-PyTorch path on the same weights.

    python -m seqmamba.kernels.bench_end_to_end            (CUDA only; prints one table)
    python -m seqmamba.kernels.bench_end_to_end --profile  (where a training step's time goes)

Rows:
  train  3.5M LM (d_model 256, 8 layers), bf16 autocast, AdamW step: tokens/s at the anchor shapes
         (DNA 16 x 4096 vocab 16; audio 8 x 16384 vocab 256); mamba_ssm anchors: 1.75 M / 1.69 M.
  long   7M LM (d_model 256, 16 layers) at batch 1 x 2^20 with gradient checkpointing: step time
         and peak memory.
  parity logits / gradients of the Triton path against SEQMAMBA_KERNELS=torch on one batch.
"""
from __future__ import annotations

import argparse
import os

import torch

from seqmamba import ModelConfig, build_model


def make_lm(d_model, n_layer, vocab, device):
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab)
    return build_model(cfg).to(device)


def train_step_fn(model, batch, seqlen, vocab):
    """One AdamW training step on random tokens, bf16 autocast; returns the loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    ids = torch.randint(0, vocab, (batch, seqlen + 1), device="cuda")
    inp, tgt = ids[:, :-1], ids[:, 1:]

    def one():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(inp)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return one


def time_train_steps(model, batch, seqlen, vocab, steps=8, warmup=3):
    one = train_step_fn(model, batch, seqlen, vocab)
    for _ in range(warmup):
        one()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        loss = one()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    if not torch.isfinite(loss):
        raise RuntimeError("non-finite loss in benchmark")
    return ms, torch.cuda.max_memory_allocated() / 2**30


def parity(device):
    torch.manual_seed(0)
    model = make_lm(256, 4, 16, device)
    ids = torch.randint(0, 16, (2, 2048), device=device)
    out = {}
    for mode in ("triton", "torch"):
        os.environ["SEQMAMBA_KERNELS"] = mode
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids)
        logits.float().logsumexp(-1).mean().backward()
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        out[mode] = (logits.float(), grads)
    os.environ["SEQMAMBA_KERNELS"] = "auto"
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    return rel(out["triton"][0], out["torch"][0]), rel(out["triton"][1], out["torch"][1])


def profile_train_step(batch=16, seqlen=4096, vocab=16, top=30):
    """Where a 3.5M-LM training step's GPU time goes: torch.profiler over 3 steps after warm-up,
    kernels sorted by total device time (Triton kernels appear under their own names)."""
    from torch.profiler import ProfilerActivity, profile
    model = make_lm(256, 8, vocab, torch.device("cuda"))
    one = train_step_fn(model, batch, seqlen, vocab)
    for _ in range(3):
        one()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            one()
        torch.cuda.synchronize()
    print(f"3.5M LM, {batch}x{seqlen} vocab {vocab}, 3 training steps (device time):")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top,
                                    max_name_column_width=70))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="only print where the DNA-shape training step spends its GPU time")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_end_to_end needs a CUDA GPU")
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}  torch {torch.__version__}")
    if args.profile:
        profile_train_step()
        return
    rows = []
    lg, gr = parity(dev)
    rows.append(("parity triton vs torch (bf16, 4L d256, 2x2048)", f"logits rel {lg:.2e}", f"grads rel {gr:.2e}", ""))
    for name, batch, seqlen, vocab, anchor in (("DNA 16x4096 v16", 16, 4096, 16, 1.75),
                                               ("audio 8x16384 v256", 8, 16384, 256, 1.69)):
        model = make_lm(256, 8, vocab, dev)
        n_params = sum(p.numel() for p in model.parameters())
        ms, mem = time_train_steps(model, batch, seqlen, vocab)
        tps = batch * seqlen / ms * 1e3 / 1e6
        rows.append((f"train 3.5M LM {name} ({n_params/1e6:.2f}M)", f"{ms:.1f} ms/step",
                     f"{tps:.2f} M tok/s (mamba_ssm {anchor})", f"peak {mem:.1f} GiB"))
        del model
        torch.cuda.empty_cache()
    if not args.skip_long:
        model = make_lm(256, 16, 16, dev)
        model.backbone.gradient_checkpointing = True
        n_params = sum(p.numel() for p in model.parameters())
        ms, mem = time_train_steps(model, 1, 2**20, 16, steps=2, warmup=1)
        rows.append((f"train 7M LM 1x2^20 checkpointed ({n_params/1e6:.2f}M)", f"{ms:.0f} ms/step",
                     f"{2**20/ms*1e3/1e6:.2f} M tok/s", f"peak {mem:.1f} GiB"))
    print()
    for r in rows:
        print(" | ".join(r))


if __name__ == "__main__":
    main()
