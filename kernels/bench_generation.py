"""Decode speed of a small Mamba LM at batch 1: eager ``model.step`` vs CUDA-graph replays.

    python -m seqmamba.kernels.bench_generation [--d-model 256 --n-layer 8 --vocab 256]

The default model (d_model 256, 8 layers, vocab 256: ~3.5M parameters) is the size of a mu-law
audio LM. Correctness comes first: the fused step's logits against ``model.step``, and greedy
graph generation against the model's own ``generate``. Throughput is generated tokens per second
over back-to-back steps (CUDA events around 2000 steps, median of 5 runs).
"""
from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl

from seqmamba.config import ModelConfig
from seqmamba.heads import MambaLM, sample_next
from seqmamba.kernels.decode_graph import GraphedStep
from seqmamba.kernels.mamba_decode_triton import FusedMambaStep


def steps_per_second(fn, steps_per_call: int, calls: int, reps: int = 5) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    rates = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        rates.append(calls * steps_per_call / (start.elapsed_time(end) / 1e3))
    return statistics.median(rates)


@triton.jit
def _empty_kernel(ptr):
    tl.store(ptr, 1.0)


def per_kernel_times(model, reps: int = 100) -> None:
    """Each fused kernel launched ``reps`` times inside one CUDA graph: time per launch in a
    graph, next to an empty kernel's (the floor any launch pays)."""
    fused = FusedMambaStep(model, 1)
    cache = model.allocate_cache(1)
    ids = torch.zeros(1, dtype=torch.long, device="cuda")
    tokens = torch.zeros(1, 8, dtype=torch.long, device="cuda")
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    scratch = torch.zeros(1, device="cuda")
    fused(ids, cache)
    launches = {
        "empty kernel": lambda: _empty_kernel[(1,)](scratch),
        "layer_in (first layer)": lambda: fused.layer_in(0, ids, cache),
        "layer_in": lambda: fused.layer_in(1, ids, cache),
        "layer_ssm": lambda: fused.layer_ssm(1, cache),
        "head (norm_f + lm_head)": fused.head,
        "sample (Gumbel-max)": lambda: fused.sample(ids, tokens, counter, 1.0, 0),
        "head + sample in one launch": lambda: fused.head((ids, tokens, counter, 1.0, 0)),
    }
    for name, fn in launches.items():
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        rate = steps_per_second(graph.replay, reps, 20)
        print(f"  in-graph time per launch, {name:28s} {1e6 / rate:6.2f} us", flush=True)


def check_fused(model, steps=32) -> float:
    """Max relative error of the fused step's logits against model.step over a random walk."""
    cache_ref, cache = model.allocate_cache(1), model.allocate_cache(1)
    fused = FusedMambaStep(model, 1)
    ids = torch.randint(0, model.config.vocab_size, (1,), device="cuda")
    worst = 0.0
    with torch.inference_mode():
        for _ in range(steps):
            ref = model.step(ids, cache_ref).float()
            got = fused(ids, cache)
            worst = max(worst, ((got - ref).norm() / ref.norm()).item())
            ids = torch.multinomial(ref.softmax(-1), 1)[:, 0]
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_generation needs a CUDA GPU")
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab)
    model = MambaLM(cfg).cuda().eval()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"params {model.num_parameters() / 1e6:.2f}M  d_model {cfg.d_model} n_layer {cfg.n_layer} "
          f"vocab {cfg.vocab_size}")
    with torch.no_grad():  # a trained-looking model: the init leaves logits near-uniform
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))

    print(f"fused step vs model.step, fp32, 32 steps: max rel err {check_fused(model):.2e}")
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), device="cuda")
    try:  # the prompt pass runs the selective scan: report, rather than stop, if it fails
        ref = model.generate(prompt, 128, temperature=0)[:, 16:]
        for fused in (False, True):
            g = GraphedStep(model, 1, fused=fused, temperature=0)
            got = g.generate(prompt, 128)
            agree = (got == ref).float().mean().item()
            first_diff = (got != ref).nonzero()[:, 1].min().item() if agree < 1 else None
            print(f"greedy generate, graphed fused={fused}: {agree:.3f} of 128 tokens equal to "
                  f"model.generate (first difference at {first_diff})")
    except Exception as err:
        print(f"greedy generate check FAILED: {type(err).__name__}: {err}")

    rows = []
    ids = torch.zeros(1, dtype=torch.long, device="cuda")
    print("fused kernels, fp32 model, batch 1:")
    per_kernel_times(model)

    def add(name, fn, steps_per_call=1, calls=args.calls):
        try:
            rate = steps_per_second(fn, steps_per_call, calls)
            rows.append((name, rate))
            print(f"{name:64s} {rate:10.0f} steps/s  {1e6 / rate:7.1f} us/step", flush=True)
        except Exception as err:  # report the variant that does not run and go on
            print(f"{name:64s} FAILED: {type(err).__name__}: {err}", flush=True)

    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        tag = str(dtype)[6:]
        cache = m.allocate_cache(1)
        with torch.inference_mode():
            add(f"[{tag}] eager model.step (logits)", lambda: m.step(ids, cache), calls=200)
            add(f"[{tag}] eager model.step + sample_next(T=1)",
                lambda: sample_next(m.step(ids, cache), 1.0), calls=200)
            for fused in (False, True):
                name = "fused Triton step" if fused else "model.step"
                g = GraphedStep(m, 1, fused=fused)
                add(f"[{tag}] graph {name} (logits)", lambda g=g: g.step(ids))
                g = GraphedStep(m, 1, fused=fused, temperature=1.0)
                add(f"[{tag}] graph {name} + sample T=1", g.replay)
                g = GraphedStep(m, 1, fused=fused, temperature=1.0, top_p=0.9)
                add(f"[{tag}] graph {name} + sample T=1 top_p=0.9", g.replay)
                if fused:
                    for k in (4, 16):
                        g = GraphedStep(m, 1, fused=True, temperature=1.0, steps_per_replay=k)
                        add(f"[{tag}] graph {name} + sample T=1, {k} steps/replay", g.replay,
                            steps_per_call=k, calls=args.calls // k)
    model.float()
    print("\nsteps/s at batch 1 (median of 5 x back-to-back steps)")
    for name, rate in rows:
        print(f"  {name:64s} {rate:10.0f}")


if __name__ == "__main__":
    main()
