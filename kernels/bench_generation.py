"""Decode speed at batch 1: eager ``model.step`` vs CUDA-graph replays, plain Mamba LM or U-Net.

    python -m seqmamba.kernels.bench_generation [--d-model 256 --n-layer 8 --vocab 256]
    python -m seqmamba.kernels.bench_generation --unet [--d-model 64 --n-layer 15 --pool 16 16]

The default plain model (d_model 256, 8 layers, vocab 256: ~3.5M parameters) is the size of a
mu-law audio LM; ``--unet`` benchmarks the Mamba paper's YouTubeMix U-Net instead (d_model 64,
pools [16, 16], expand 2, 15 blocks: 3.5M parameters). Correctness comes first: the fused step's
logits against ``model.step``, graphed steps and greedy graph generation against the eager
path (the U-Net also checks the in-graph log-likelihood against the parallel forward). Throughput
is generated tokens (samples) per second over back-to-back steps (CUDA events, median of 5 runs);
16,000 samples/s is real time for 16 kHz audio.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import triton
import triton.language as tl

from seqmamba.config import ModelConfig
from seqmamba.heads import MambaLM, sample_next
from seqmamba.kernels.decode_graph import DeviceSampler, GraphedStep
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


def add_eager_rows(add, m, ids, cache, tag, calls):
    """The rows both tables start with: eager ``model.step``, alone and with sampling."""
    add(f"[{tag}] eager model.step (logits)", lambda: m.step(ids, cache), calls=calls)
    add(f"[{tag}] eager model.step + sample_next(T=1)",
        lambda: sample_next(m.step(ids, cache), 1.0), calls=calls)


def timed_row(rows, name, fn, steps_per_call, calls, unit, width):
    """Time ``fn`` (steps_per_call steps a call), print one row and keep (name, rate); a variant
    that does not run is reported and skipped."""
    try:
        rate = steps_per_second(fn, steps_per_call, calls)
        rows.append((name, rate))
        print(f"{name:{width}s} {rate:10.0f} {unit}s/s  {1e6 / rate:7.1f} us/{unit}", flush=True)
    except Exception as err:  # noqa: BLE001 - report and go on
        print(f"{name:{width}s} FAILED: {type(err).__name__}: {err}", flush=True)


@triton.jit
def _empty_kernel(ptr):
    tl.store(ptr, 1.0)


def per_kernel_times(model, reps: int = 100) -> None:
    """Each fused kernel launched ``reps`` times inside one CUDA graph: time per launch in a
    graph, next to an empty kernel's (the floor any launch pays)."""
    fused = FusedMambaStep(model, 1)
    cache = model.allocate_cache(1)
    ids = torch.zeros(1, dtype=torch.long, device="cuda")
    sampler = DeviceSampler(model.config.vocab_size, ids, temperature=1.0, max_tokens=8)
    scratch = torch.zeros(1, device="cuda")
    fused(ids, cache)
    launches = {
        "empty kernel": lambda: _empty_kernel[(1,)](scratch),
        "layer_in (first layer)": lambda: fused.layer_in(0, ids, cache),
        "layer_in": lambda: fused.layer_in(1, ids, cache),
        "layer_ssm": lambda: fused.layer_ssm(1, cache),
        "head (norm_f + lm_head)": fused.head,
        "sample (Gumbel-max)": lambda: sampler.sample(fused.logits),
        "head + sample in one launch": lambda: fused.head(sampler),
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


# ---- U-Net -----------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _report(name: str, fn) -> bool:
    """Run one correctness check: print its verdict (or why it could not run); True if it passed."""
    try:
        ok, detail = fn()
    except Exception as err:  # an unsupported variant is reported, not fatal
        print(f"CHECK {name:58s} ERROR: {type(err).__name__}: {err}", flush=True)
        return False
    print(f"CHECK {name:58s} {'ok' if ok else 'FAILED'}  ({detail})", flush=True)
    return ok


def _unet_checks(model, cycle: int) -> None:
    from seqmamba.kernels.unet_decode_graph import UNetGraphedStep
    from seqmamba.kernels.unet_decode_triton import FusedUNetStep

    V = model.config.vocab_size
    steps = 2 * cycle + 50  # across two cycle boundaries, from a mid-group position
    prompt = torch.randint(0, V, (1, 37), device="cuda")

    def walk(step_fn, cache):
        """Same tokens for the reference and the candidate: drawn from the reference."""
        ref_cache = model.allocate_cache(1)
        worst, agree = 0.0, 0
        with torch.inference_mode():
            model.backbone(prompt, cache=ref_cache)
            model.backbone(prompt, cache=cache)
            token = prompt[:, -1]
            for _ in range(steps):
                offset = ref_cache.seqlen_offset
                ref = model.step(token, ref_cache).float()
                got = step_fn(token, offset)
                worst = max(worst, _rel(got, ref))
                agree += int(got.argmax(-1).item() == ref.argmax(-1).item())
                token = torch.multinomial(ref.softmax(-1), 1)[:, 0]
        return worst < 1e-4, f"{steps} steps, max rel err {worst:.2e}, argmax agree {agree}/{steps}"

    def fused_eager():
        f, cache = FusedUNetStep(model, 1), model.allocate_cache(1)
        return walk(lambda token, offset: f(token, cache, offset), cache)

    def graphed(fused):
        def check():
            g = UNetGraphedStep(model, 1, fused=fused)
            g.reset()
            return walk(lambda token, offset: g.step(token), g.cache)
        return check

    _report("fused U-Net step (no graph) vs model.step, fp32", fused_eager)
    _report("graphed step, fused=True vs model.step, fp32", graphed(True))
    _report("graphed step, fused=False vs model.step, fp32", graphed(False))

    n = 3 * cycle
    want = model.generate(prompt, n, temperature=0, graph=False)[:, prompt.shape[1]:]

    def greedy(fused):
        def check():
            g = UNetGraphedStep(model, 1, fused=fused, temperature=0, max_tokens=n)
            got = g.generate(prompt, n)
            same = (got == want)
            first = None if bool(same.all()) else int((~same).nonzero()[:, 1].min())
            return first is None, (f"{n} tokens, {same.float().mean().item():.3f} equal, first "
                                   f"difference at {first}, {g.steps_per_replay} steps/replay")
        return check

    _report("greedy generate, graphed fused=True == eager generate", greedy(True))
    _report("greedy generate, graphed fused=False == eager generate", greedy(False))

    def loglik(fused):
        def check():
            ban = V - 1
            g = UNetGraphedStep(model, 1, fused=fused, temperature=1.0, top_p=0.95, ban_token=ban,
                                loglik=True, max_tokens=n)
            out = g.generate(prompt, n)
            seq = torch.cat([prompt, out], 1)
            with torch.no_grad():
                logits = model(seq[:, :-1]).float()
                logits[..., ban] = float("-inf")
                logp = torch.log_softmax(logits, -1).gather(2, seq[:, 1:, None])[..., 0]
                ll = logp[:, prompt.shape[1] - 1:].sum(1).double()
            err = abs(ll.item() - g.loglik.item()) / abs(ll.item())
            banned = int((out == ban).sum())
            return err < 1e-4 and banned == 0, (f"T=1 top_p=0.95: in-graph loglik {g.loglik.item():.3f}"
                                                f" vs parallel forward {ll.item():.3f} (rel {err:.1e});"
                                                f" excluded id drawn {banned}x")
        return check

    _report("sampled generate: loglik == parallel forward, fused=True", loglik(True))
    _report("sampled generate: loglik == parallel forward, fused=False", loglik(False))


def run_unet_bench(args) -> None:
    from seqmamba.kernels.unet_decode_graph import UNetGraphedStep
    from seqmamba.kernels.unet_decode_triton import FusedUNetStep

    torch.manual_seed(0)
    d_model, n_layer = args.d_model or 64, args.n_layer or 15
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=args.vocab, backbone="unet",
                      unet={"pool": list(args.pool), "expand": args.expand})
    model = MambaLM(cfg).cuda().eval()
    bb = model.backbone
    cycle = math.prod(bb.pools)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  triton "
          f"{triton.__version__}  params {model.num_parameters() / 1e6:.2f}M  U-Net d_model "
          f"{d_model} widths {bb.widths} pools {bb.pools} n_layer {n_layer} vocab {cfg.vocab_size}",
          flush=True)
    with torch.no_grad():  # a trained-looking model: the init leaves logits near-uniform
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))

    print("\ncorrectness (graphed vs eager on the same tokens):", flush=True)
    try:
        _unet_checks(model, cycle)
    except Exception as err:
        print(f"CHECK setup ERROR: {type(err).__name__}: {err}", flush=True)

    rows = []

    def add(name, fn, steps_per_call=1, calls=args.calls):
        timed_row(rows, name, fn, steps_per_call, calls, "sample", 80)

    def graphed(tag, m, fused, **kw):
        """A decoder with every graph it will replay recorded up front (timed separately)."""
        try:
            g = UNetGraphedStep(m, 1, fused=fused, **kw)
            t0 = time.perf_counter()
            g.prepare(range(g.cycle) if g.steps_per_replay == 1 else (0,))
            torch.cuda.synchronize()
            print(f"  [{tag}] recorded {len(g._singles)} step graphs + {len(g._chunks)} chunk "
                  f"graphs of {g.steps_per_replay} steps: {g.capture_seconds:.2f} s "
                  f"({time.perf_counter() - t0:.2f} s in prepare)", flush=True)
            return g
        except Exception as err:
            print(f"  [{tag}] graphed decoder fused={fused} {kw}: FAILED: "
                  f"{type(err).__name__}: {err}", flush=True)
            return None

    print(f"\ntimings at batch 1 ({cycle}-step cycle):", flush=True)
    ids = torch.zeros(1, dtype=torch.long, device="cuda")
    dtypes = (torch.float32,) if args.no_bf16 else (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        m = model.to(dtype)
        tag = str(dtype)[6:]
        cache = m.allocate_cache(1)
        with torch.inference_mode():
            add_eager_rows(add, m, ids, cache, tag, calls=300)
            try:
                f, fcache, pos = FusedUNetStep(m, 1), m.allocate_cache(1), [0]

                def fused_eager():
                    f(ids, fcache, pos[0])
                    pos[0] += 1
                add(f"[{tag}] eager fused Triton step, no graph (logits)", fused_eager, calls=500)
            except Exception as err:
                print(f"[{tag}] eager fused step FAILED: {type(err).__name__}: {err}")
            for fused in (False, True):
                name = "fused Triton step" if fused else "model.step"
                g = graphed(tag, m, fused)
                if g is not None:
                    add(f"[{tag}] graph {name}, 1 step/replay (logits)",
                        lambda g=g: g.step(ids), calls=max(args.calls, 2 * cycle))
                variants = [("+ sample T=1", dict(temperature=1.0)),
                            ("+ sample T=1, pad excluded, loglik (seqmamba generate)",
                             dict(temperature=1.0, ban_token=cfg.vocab_size - 1, loglik=True)),
                            ("+ sample T=1 top_p=0.95", dict(temperature=1.0, top_p=0.95))]
                if fused:
                    variants.insert(0, ("+ sample T=1, 1 step/replay",
                                        dict(temperature=1.0, steps_per_replay=1)))
                elif dtype != torch.float32:
                    variants = variants[:1]
                for label, kw in variants:
                    g = graphed(tag, m, fused, **kw)
                    if g is not None:
                        k = g.steps_per_replay
                        add(f"[{tag}] graph {name} {label}" + (f", {k} steps/replay" if k > 1 else ""),
                            g.replay, steps_per_call=k,
                            calls=max(args.calls // k, 4) if k > 1 else max(args.calls, 2 * cycle))
    model.float()

    # Channels per program of the fused layer kernels (FusedUNetStep's default gives the outer
    # level, d_inner 128, one program per kernel): other splits, for tuning the default.
    for block_in, block_ssm in ((32, 32), (64, 64), (32, 128), (128, 32)):
        tag = f"fp32 block_in {block_in} block_ssm {block_ssm}"
        g = graphed(tag, model, True, temperature=1.0, block_in=block_in, block_ssm=block_ssm)
        if g is not None:
            k = g.steps_per_replay
            add(f"[{tag}] graph fused + sample T=1, {k} steps/replay", g.replay,
                steps_per_call=k, calls=max(args.calls // k, 4))

    try:  # the user-facing path: seqmamba generate's sampling loop, graph recording included
        from seqmamba.tasks.generate import sample_audio
        from seqmamba.tokenizers import MuLawTokenizer

        tok = MuLawTokenizer(8)
        audio = MambaLM(cfg.replace(vocab_size=tok.vocab_size), tokenizer=tok).cuda().eval()
        seconds = 4
        for attempt in ("first call (compiles kernels)", "second call"):
            res = sample_audio(audio, 16000 * seconds, num=1, batch_size=1, seed=0,
                               use_graph="on")
            rate = res.new_samples / res.seconds_wall
            print(f"sample_audio, {seconds} s of 16 kHz audio at batch 1, {attempt}: "
                  f"{res.seconds_wall:.2f} s wall (graph recording included) = {rate:.0f} "
                  f"samples/s, {rate / 16000:.2f}x real time", flush=True)
        rows.append(("sample_audio 4 s clip, batch 1 (wall, recording included)", rate))
    except Exception as err:
        print(f"sample_audio FAILED: {type(err).__name__}: {err}", flush=True)

    print("\nU-Net samples/s at batch 1 (median of 5 x back-to-back steps); real time = 16000")
    for name, rate in rows:
        print(f"  {name:84s} {rate:10.0f}  {rate / 16000:6.2f}x real time")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unet", action="store_true", help="benchmark the U-Net backbone")
    ap.add_argument("--d-model", type=int, default=None, help="default 256 (U-Net: 64)")
    ap.add_argument("--n-layer", type=int, default=None, help="default 8 (U-Net: 15)")
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--pool", type=int, nargs="+", default=[16, 16], help="U-Net pools")
    ap.add_argument("--expand", type=int, default=2, help="U-Net width expansion per level")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--no-bf16", action="store_true", help="U-Net: float32 rows only")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_generation needs a CUDA GPU")
    if args.unet:
        return run_unet_bench(args)
    args.d_model = args.d_model or 256
    args.n_layer = args.n_layer or 8
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
        ref = model.generate(prompt, 128, temperature=0, graph=False)[:, 16:]
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
        timed_row(rows, name, fn, steps_per_call, calls, "step", 64)

    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        tag = str(dtype)[6:]
        cache = m.allocate_cache(1)
        with torch.inference_mode():
            add_eager_rows(add, m, ids, cache, tag, calls=200)
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
