"""One CPU training step of a whole Mamba LM: seqmamba vs mambapy vs transformers, side by side.

    python kernels/bench_cpu_step.py [--lengths 512 4096] [--repeats 3] [--hf-lengths 512]
                                     [--hf-time-limit 300] [--skip-hf] [--skip-mambapy]

A step is forward + cross-entropy + backward (no optimizer update, identical for all three) of the
same model shape: 8 layers, d_model 256, d_state 16, d_conv 4, expand 2, vocabulary 16, batch 2.
    seqmamba      this package (SEQMAMBA_KERNELS decides the path; on CPU the chunked scan)
    mambapy       the `mambapy` package, parallel scan (pscan=True), the usual pure-PyTorch choice
    transformers  MambaForCausalLM without mamba_ssm/causal_conv1d: its sequential slow path (very
                  slow: ~2 min per step at L=512 on 2 cores), so it only runs at --hf-lengths and
                  stops at --hf-time-limit seconds (POSIX: the step is interrupted by SIGALRM)
Each cell is the median over --repeats timed steps after one warm-up step (the warm-up is skipped
for transformers, whose single step is already long). Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPE = dict(n_layer=8, d_model=256, d_state=16, d_conv=4, expand=2, vocab_size=16)


class StepTimeout(Exception):
    pass


def build_seqmamba():
    import seqmamba
    return seqmamba.build_model(dict(SHAPE))


def build_mambapy():
    # mambapy.lm.LM would do, but it imports mamba2 and with it einops; the LM wrapper is just
    # embedding -> Mamba -> RMSNorm -> linear head, so it is assembled here from mambapy.mamba.
    from mambapy.mamba import Mamba, MambaConfig, RMSNorm
    cfg = MambaConfig(d_model=SHAPE["d_model"], n_layers=SHAPE["n_layer"], d_state=SHAPE["d_state"],
                      d_conv=SHAPE["d_conv"], expand_factor=SHAPE["expand"], pscan=True)

    class MambapyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(SHAPE["vocab_size"], cfg.d_model)
            self.mamba = Mamba(cfg)
            self.norm_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
            self.lm_head = torch.nn.Linear(cfg.d_model, SHAPE["vocab_size"], bias=False)
            self.lm_head.weight = self.embedding.weight

        def forward(self, tokens):
            return self.lm_head(self.norm_f(self.mamba(self.embedding(tokens))))

    return MambapyLM()


def build_transformers():
    from transformers import MambaConfig, MambaForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    cfg = MambaConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["d_model"],
                      num_hidden_layers=SHAPE["n_layer"], state_size=SHAPE["d_state"],
                      conv_kernel=SHAPE["d_conv"], expand=SHAPE["expand"], use_mambapy=False,
                      use_cache=False)
    return MambaForCausalLM(cfg)


def logits_of(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def train_step(model, x, y):
    model.zero_grad(set_to_none=True)
    logits = logits_of(model, x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    loss.backward()
    return loss.item()


def time_steps(model, x, y, repeats, warmup, limit):
    """Seconds per step (median), or a string saying why there is none."""
    times = []

    def on_alarm(signum, frame):
        raise StepTimeout

    use_alarm = limit and hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
    start = time.perf_counter()
    try:
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            train_step(model, x, y)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if limit and time.perf_counter() - start > limit:
                break
    except StepTimeout:
        pass
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    if not times:
        return f">{limit:.0f}s (time limit)"
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-lengths", type=int, nargs="*", default=[512],
                    help="lengths at which to run the transformers slow path")
    ap.add_argument("--hf-time-limit", type=float, default=300.0,
                    help="seconds; 0 = no limit")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-mambapy", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    impls = [("seqmamba", build_seqmamba, None, 1)]
    if not args.skip_mambapy:
        impls.append(("mambapy", build_mambapy, None, 1))
    if not args.skip_hf:
        impls.append(("transformers", build_transformers, args.hf_time_limit or None, 0))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {SHAPE}, "
          f"batch {args.batch}; seconds per training step (forward + backward), median of "
          f"{args.repeats}", flush=True)
    results: dict[tuple[str, int], object] = {}
    for L in args.lengths:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, SHAPE["vocab_size"], (args.batch, L + 1), generator=g)
        x, y = tokens[:, :-1], tokens[:, 1:]
        for name, build, limit, warmup in impls:
            if name == "transformers" and L not in args.hf_lengths:
                results[name, L] = "skipped"
                continue
            try:
                torch.manual_seed(0)
                model = build().train()
            except ImportError as err:
                results[name, L] = f"not installed ({err.name})"
                continue
            results[name, L] = time_steps(model, x, y, args.repeats, warmup, limit)
            cell = results[name, L]
            print(f"  L={L:<6d} {name:13s} "
                  + (f"{cell:9.3f} s" if isinstance(cell, float) else cell), flush=True)
            del model

    names = [n for n, *_ in impls]
    header = f"{'L':>6} | " + " | ".join(f"{n:>22}" for n in names)
    print("\n" + header + "\n" + "-" * len(header))
    for L in args.lengths:
        base = results.get(("seqmamba", L))
        cells = []
        for n in names:
            r = results.get((n, L))
            if isinstance(r, float):
                rel = f" ({r / base:5.1f}x)" if isinstance(base, float) and n != "seqmamba" else ""
                cells.append(f"{r:9.3f} s{rel}".rjust(22))
            else:
                cells.append(str(r).rjust(22))
        print(f"{L:>6} | " + " | ".join(cells))
    print("(x) = time relative to seqmamba; tokens per step = batch * L")
    return 0


if __name__ == "__main__":
    sys.exit(main())
