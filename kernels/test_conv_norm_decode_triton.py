"""Triton conv1d / RMSNorm / decode-step kernels against their PyTorch references.

GPU tests (marked ``gpu``) compare each fused kernel, outputs and gradients, with the reference run in
float64 on the same inputs. The CPU test runs the same kernels under TRITON_INTERPRET=1 at small
shapes in a subprocess (the variable must be set before triton defines any kernel, and must not leak
into this process).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from seqmamba.kernels.causal_conv1d import causal_conv1d_torch, causal_conv1d_update_torch
from seqmamba.kernels.dispatch import triton_available
from seqmamba.kernels.rms_norm import rms_norm_torch
from seqmamba.kernels.selective_state_update import selective_state_update_torch

needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()),
                                reason="needs a CUDA GPU and triton")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite values (unwritten output?)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def poison_cache():
    """Fill memory the caching allocator will hand out next with NaN, so unwritten outputs show."""
    torch.empty(64 << 20, device="cuda").fill_(float("nan"))


# One case per (L, width): dtypes and the optional parts rotate so that every value of every
# parameter is met without compiling the whole product (each combination is a fresh kernel build).
_FLAGS = [(True, False, "silu", False), (False, True, None, True), (True, True, "silu", True)]
_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CONV_CASES = [(L, w, _DTYPES[(i + j) % 3], *_FLAGS[(i + 2 * j) % 3])
              for i, L in enumerate([1, 7, 128, 1000, 4096]) for j, w in enumerate([2, 3, 4])]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("L,width,dtype,has_bias,has_init,activation,final", CONV_CASES)
def test_causal_conv1d_matches_float64(L, width, dtype, has_bias, has_init, activation, final):
    from seqmamba.kernels.causal_conv1d_triton import causal_conv1d_triton
    torch.manual_seed(1000 * L + width)
    batch, dim, dev = 2, 96, "cuda"
    x = torch.randn(batch, dim, L, device=dev, dtype=dtype, requires_grad=True)
    w = (0.5 * torch.randn(dim, width, device=dev)).requires_grad_()
    b = torch.randn(dim, device=dev, requires_grad=True) if has_bias else None
    init = (torch.randn(batch, dim, width - 1, device=dev, dtype=dtype, requires_grad=True)
            if has_init else None)
    leaves = [t for t in (x, w, b, init) if t is not None]
    dy = torch.randn(batch, dim, L, device=dev, dtype=dtype)
    dfinal = torch.randn(batch, dim, width - 1, device=dev, dtype=dtype)

    def run(fn, cast):
        args = [None if t is None else cast(t) for t in (x, w, b, init)]
        res = fn(*args, activation=activation, return_final_state=final)
        y, fs = res if final else (res, None)
        loss = (y * cast(dy)).sum() + ((fs * cast(dfinal)).sum() if final else 0)
        return [y] + ([fs] if final else []) + list(torch.autograd.grad(loss, leaves))

    ref = run(causal_conv1d_torch, lambda t: t.double())
    poison_cache()
    out = run(causal_conv1d_triton, lambda t: t)
    assert out[0].dtype == dtype and out[0].shape == (batch, dim, L)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert rel_err(o, r) < TOL[dtype]
    for o, leaf in zip(out[1 + final:], leaves):
        assert o.dtype == leaf.dtype


@pytest.mark.gpu
@needs_cuda
def test_causal_conv1d_strided_input():
    """x as a transposed (b, L, d) buffer, the layout in_proj produces."""
    from seqmamba.kernels.causal_conv1d_triton import causal_conv1d_triton
    torch.manual_seed(5)
    x = torch.randn(3, 333, 80, device="cuda").transpose(1, 2)
    w, b = torch.randn(80, 4, device="cuda"), torch.randn(80, device="cuda")
    ref = causal_conv1d_torch(x.double(), w.double(), b.double())
    assert rel_err(causal_conv1d_triton(x, w, b), ref) < 1e-5


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("dtype", _DTYPES)
def test_causal_conv1d_update_matches_torch(width, dtype):
    from seqmamba.kernels.causal_conv1d_triton import causal_conv1d_update_triton
    torch.manual_seed(width)
    batch, dim = 3, 200
    x = torch.randn(batch, dim, device="cuda", dtype=dtype)
    state = torch.randn(batch, dim, width - 1, device="cuda", dtype=dtype)
    w, b = torch.randn(dim, width, device="cuda"), torch.randn(dim, device="cuda")
    ref_state = state.double()
    ref = causal_conv1d_update_torch(x.double(), ref_state, w.double(), b.double(), "silu")
    y = causal_conv1d_update_triton(x, state, w, b, "silu")
    assert y.dtype == dtype and rel_err(y, ref) < TOL[dtype]
    assert torch.equal(state.double(), ref_state)  # a shift plus a copy: exact


@pytest.mark.gpu
@needs_cuda
def test_conv_update_chain_equals_full_conv():
    """Decoding L tokens one at a time gives the full causal conv of the sequence."""
    from seqmamba.kernels.causal_conv1d_triton import causal_conv1d_triton, causal_conv1d_update_triton
    torch.manual_seed(9)
    x = torch.randn(2, 64, 37, device="cuda")
    w, b = torch.randn(64, 4, device="cuda"), torch.randn(64, device="cuda")
    full, final = causal_conv1d_triton(x, w, b, return_final_state=True)
    state = torch.zeros(2, 64, 3, device="cuda")
    steps = torch.stack([causal_conv1d_update_triton(x[:, :, t], state, w, b) for t in range(37)], -1)
    assert rel_err(steps, full) < 1e-6
    assert torch.equal(state, final)


RMS_CASES = [  # (rows shape, hidden, dtype, residual, prenorm, residual_in_fp32)
    ((1,), 256, torch.float32, False, False, False),
    ((4, 7), 256, torch.bfloat16, True, True, True),
    ((3, 1000), 768, torch.float16, True, True, False),
    ((2, 128), 2560, torch.bfloat16, True, False, True),
    ((5,), 100, torch.float32, True, True, False),
    ((2, 4096), 256, torch.float32, False, True, True),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rows,hidden,dtype,has_res,prenorm,res_fp32", RMS_CASES)
def test_rms_norm_matches_float64(rows, hidden, dtype, has_res, prenorm, res_fp32):
    from seqmamba.kernels.rms_norm_triton import rms_norm_triton
    torch.manual_seed(hidden)
    x = torch.randn(*rows, hidden, device="cuda", dtype=dtype, requires_grad=True)
    w = (1 + 0.2 * torch.randn(hidden, device="cuda")).requires_grad_()
    res = torch.randn(*rows, hidden, device="cuda", dtype=dtype, requires_grad=True) if has_res else None
    leaves = [t for t in (x, w, res) if t is not None]
    dout, dres = torch.randn_like(x), torch.randn(*rows, hidden, device="cuda")

    def run(fn, cast):
        o = fn(cast(x), cast(w), None if res is None else cast(res), 1e-5, prenorm, res_fp32)
        out, rout = o if prenorm else (o, None)
        loss = (out * cast(dout)).sum() + ((rout * cast(dres)).sum() if prenorm else 0)
        return [out] + ([rout] if prenorm else []) + list(torch.autograd.grad(loss, leaves))

    ref = run(rms_norm_torch, lambda t: t.double())
    poison_cache()
    out = run(rms_norm_triton, lambda t: t)
    assert out[0].dtype == dtype
    if prenorm:
        assert out[1].dtype == (torch.float32 if res_fp32 else dtype)
    for o, r in zip(out, ref):
        assert o.shape == r.shape and rel_err(o, r) < TOL[dtype]


SSU_CASES = [  # (batch, dim, N, B/C groups (0: (b, N)), state dtype, x dtype, D, z, dt_bias, softplus)
    (1, 512, 16, 0, torch.float32, torch.float32, True, True, True, True),
    (4, 1536, 16, 0, torch.float32, torch.bfloat16, True, True, True, True),
    (3, 256, 64, 4, torch.bfloat16, torch.bfloat16, False, True, False, True),
    (2, 96, 128, 1, torch.float32, torch.float16, True, False, True, False),
    (2, 80, 5, 2, torch.float16, torch.float32, False, False, False, False),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch,dim,N,groups,sdtype,dtype,hasD,hasz,hasb,softplus", SSU_CASES)
def test_selective_state_update_matches_float64(batch, dim, N, groups, sdtype, dtype, hasD, hasz,
                                                hasb, softplus):
    from seqmamba.kernels.selective_state_update_triton import selective_state_update_triton
    torch.manual_seed(dim + N)
    dev = "cuda"
    state = torch.randn(batch, dim, N, device=dev).to(sdtype)
    x, z = (torch.randn(batch, dim, device=dev, dtype=dtype) for _ in range(2))
    dt = (0.5 * torch.randn(batch, dim, device=dev)).to(dtype)
    A = -torch.rand(dim, N, device=dev) - 0.1
    bc_shape = (batch, N) if groups == 0 else (batch, groups, N)
    B, C = (torch.randn(*bc_shape, device=dev, dtype=dtype) for _ in range(2))
    D = torch.randn(dim, device=dev) if hasD else None
    bias = torch.randn(dim, device=dev) if hasb else None
    args = (A, B, C, D, z if hasz else None, bias, softplus)
    ref_state = state.double()
    ref = selective_state_update_torch(ref_state, x.double(), dt.double(),
                                       *[a.double() if torch.is_tensor(a) else a for a in args])
    poison_cache()
    y = selective_state_update_triton(state, x, dt, *args)
    assert y.dtype == dtype and rel_err(y, ref) < TOL[dtype] + TOL[sdtype]
    assert rel_err(state, ref_state) < TOL[sdtype]


def _tiny_lm(**overrides):
    from seqmamba.config import ModelConfig
    from seqmamba.heads import MambaLM
    cfg = dict(d_model=64, n_layer=2, vocab_size=50)
    cfg.update(overrides)
    model = MambaLM(ModelConfig(**cfg))
    with torch.no_grad():  # move off the init so that every weight matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("overrides,blocks", [
    ({}, (16, 32)),
    ({"d_conv": 3, "bias": True, "d_state": 12, "d_model": 72}, (16, 32)),
    # default blocks at d_model 128: tensors replicated across warps, which once exposed an
    # in-place read/write race on the conv state from the third step on
    ({"d_model": 128, "n_layer": 3}, (32, 64)),
])
def test_fused_decode_step_matches_model_step(overrides, blocks):
    from seqmamba.kernels.mamba_decode_triton import FusedMambaStep
    torch.manual_seed(3)
    model = _tiny_lm(**overrides).cuda().eval()
    batch = 3
    cache_ref, cache = model.allocate_cache(batch), model.allocate_cache(batch)
    fused = FusedMambaStep(model, batch, block_in=blocks[0], block_ssm=blocks[1])
    ids = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")
    with torch.inference_mode():
        for _ in range(12):
            ref = model.step(ids, cache_ref)
            got = fused(ids, cache)
            assert got.shape == ref.shape and rel_err(got, ref) < 1e-4
            ids = torch.multinomial(ref.softmax(-1), 1)[:, 0]
    for a, b in zip(cache.layers, cache_ref.layers):
        assert rel_err(a.ssm_state, b.ssm_state) < 1e-4
        assert rel_err(a.conv_state, b.conv_state) < 1e-5


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fused", [False, True])
def test_graphed_step_and_generate_match_eager(fused):
    from seqmamba.kernels.decode_graph import GraphedStep
    torch.manual_seed(4)
    model = _tiny_lm().cuda().eval()
    g = GraphedStep(model, 2, fused=fused)
    cache = model.allocate_cache(2)
    ids = torch.randint(0, 50, (2,), device="cuda")
    with torch.inference_mode():
        for _ in range(5):
            ref = model.step(ids, cache)
            assert rel_err(g.step(ids), ref) < 1e-4
            ids = ref.argmax(-1)
    prompt = torch.randint(0, 50, (2, 9), device="cuda")
    want = model.generate(prompt, 40, temperature=0)[:, 9:]
    for k in (1, 3):
        greedy = GraphedStep(model, 2, fused=fused, temperature=0, steps_per_replay=k)
        assert torch.equal(greedy.generate(prompt, 40), want)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_sampling_in_head_kernel_equals_separate_sampler(temperature):
    """The head kernel's last program samples the row: it must see every program's logits."""
    from seqmamba.kernels.decode_graph import DeviceSampler
    from seqmamba.kernels.decode_sample_triton import head_block_v
    from seqmamba.kernels.mamba_decode_triton import FusedMambaStep
    torch.manual_seed(6)
    model = _tiny_lm(vocab_size=300).cuda().eval()
    batch = 4
    a, b = FusedMambaStep(model, batch), FusedMambaStep(model, batch)
    assert head_block_v(model.config.d_model, 300) < 300  # several head programs per row
    cache_a, cache_b = model.allocate_cache(batch), model.allocate_cache(batch)
    ids_a = torch.randint(0, 300, (batch,), device="cuda")
    ids_b = ids_a.clone()
    sa, sb = (DeviceSampler(300, ids, temperature=temperature, max_tokens=30, seed=7)
              for ids in (ids_a, ids_b))
    assert sa.use_triton
    with torch.inference_mode():
        for _ in range(30):
            a(ids_a, cache_a, sa)
            b(ids_b, cache_b)
            sb.sample(b.logits)
    assert torch.equal(sa.tokens, sb.tokens) and torch.equal(sa.counter, sb.counter)
    assert not bool(a.arrive.any())


@pytest.mark.gpu
@needs_cuda
def test_fused_sampler_draws_from_softmax():
    """Gumbel-max in the sampling kernel: token frequencies match softmax(logits / T)."""
    from seqmamba.kernels.decode_graph import DeviceSampler
    torch.manual_seed(5)
    rows, temperature = 20000, 0.7
    logits = torch.randn(8, device="cuda").expand(rows, 8).contiguous()
    ids = torch.zeros(rows, dtype=torch.long, device="cuda")
    sampler = DeviceSampler(8, ids, temperature=temperature, max_tokens=2, seed=11)
    assert sampler.use_triton
    sampler.sample(logits)
    sampler.sample(logits)
    tokens, counter = sampler.tokens, sampler.counter
    assert torch.equal(ids, tokens[:, 1]) and bool((counter == 2).all())
    p = (logits[0] / temperature).softmax(-1)
    for col in range(2):
        freq = torch.bincount(tokens[:, col], minlength=8).double() / rows
        sigma = (p * (1 - p) / rows).sqrt().double()
        assert bool(((freq - p.double()).abs() <= 5 * sigma + 1e-4).all()), (freq, p)
    assert (tokens[:, 0] != tokens[:, 1]).float().mean() > 0.2  # fresh noise every step


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import os
    import torch
    from seqmamba.kernels import causal_conv1d_fn, rms_norm_fn, selective_state_update
    from seqmamba.kernels.causal_conv1d import causal_conv1d_torch, causal_conv1d_update_torch
    from seqmamba.kernels.causal_conv1d_triton import causal_conv1d_update_triton
    from seqmamba.kernels.rms_norm import rms_norm_torch
    from seqmamba.kernels.selective_state_update import selective_state_update_torch

    def check(a, b, tol, what):
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err < tol, f"{what}: relative error {err:.2e}"

    def grads(fn, leaves, *args, **kw):
        outs = fn(*args, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        loss = sum((o.double() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
        return list(outs) + list(torch.autograd.grad(loss, leaves))

    torch.manual_seed(0)
    for L, width, bias, init, act, final in [(1, 4, True, True, "silu", True), (7, 2, False, False,
                                             None, False), (37, 3, True, False, "silu", True),
                                             (130, 4, False, True, "silu", False)]:
        x = torch.randn(2, 6, L, requires_grad=True)
        w = torch.randn(6, width, requires_grad=True)
        b = torch.randn(6, requires_grad=True) if bias else None
        s = torch.randn(2, 6, width - 1, requires_grad=True) if init else None
        leaves = [t for t in (x, w, b, s) if t is not None]
        got = grads(causal_conv1d_fn, leaves, x, w, b, s, act, final)
        ref = grads(causal_conv1d_torch, leaves, x, w, b, s, act, final)
        for g, r in zip(got, ref):
            check(g, r, 1e-5, f"conv1d L={L} width={width}")
        state, state_ref = torch.randn(2, 6, width - 1), None
        state_ref = state.clone()
        xt = torch.randn(2, 6)
        check(causal_conv1d_update_triton(xt, state, w.detach(), None if b is None else b.detach()),
              causal_conv1d_update_torch(xt, state_ref, w.detach(), None if b is None else b.detach()),
              1e-5, "conv1d update")
        assert torch.equal(state, state_ref)

    for rows, H, res, prenorm, f32 in [((3,), 40, True, True, True), ((2, 5), 64, False, False, False),
                                       ((9,), 33, True, False, False)]:
        x = torch.randn(*rows, H, requires_grad=True)
        w = torch.randn(H, requires_grad=True)
        r = torch.randn(*rows, H, requires_grad=True) if res else None
        leaves = [t for t in (x, w, r) if t is not None]
        got = grads(rms_norm_fn, leaves, x, w, r, 1e-5, prenorm, f32)
        ref = grads(rms_norm_torch, leaves, x, w, r, 1e-5, prenorm, f32)
        for g, e in zip(got, ref):
            check(g, e, 1e-5, f"rms_norm H={H}")

    for groups in (0, 2):
        st = torch.randn(2, 8, 4)
        st_ref = st.clone()
        B = torch.randn(2, 4) if groups == 0 else torch.randn(2, groups, 4)
        args = (torch.randn(2, 8), torch.randn(2, 8), -torch.rand(8, 4), B, torch.randn_like(B),
                torch.randn(8), torch.randn(2, 8), torch.randn(8), True)
        check(selective_state_update(st, *args), selective_state_update_torch(st_ref, *args), 1e-5,
              "selective_state_update")
        check(st, st_ref, 1e-6, "selective_state_update state")
    from seqmamba.config import ModelConfig
    from seqmamba.heads import MambaLM
    from seqmamba.kernels.mamba_decode_triton import FusedMambaStep
    model = MambaLM(ModelConfig(d_model=16, n_layer=2, vocab_size=11, d_conv=3, bias=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cache_ref, cache = model.allocate_cache(2), model.allocate_cache(2)
    fused = FusedMambaStep(model, 2, block_in=8, block_ssm=16)
    ids = torch.tensor([3, 7])
    with torch.inference_mode():
        for _ in range(2):
            os.environ["SEQMAMBA_KERNELS"] = "torch"  # the reference: the model's PyTorch path
            ref = model.step(ids, cache_ref)
            os.environ["SEQMAMBA_KERNELS"] = "triton"
            check(fused(ids, cache), ref, 1e-5, "fused decode step")
            ids = ref.argmax(-1)
        from seqmamba.kernels import decode_sample_triton
        from seqmamba.kernels.decode_graph import DeviceSampler
        DeviceSampler(11, ids, temperature=0.0, max_tokens=4).sample(fused.logits)
        assert torch.equal(ids, fused.logits.argmax(-1)), "greedy sampling kernel"
        decode_sample_triton.head_block_v = lambda d_model, vocab: 4  # several head programs per row
        fused(ids, cache, DeviceSampler(11, ids, temperature=0.0, max_tokens=4))
        assert torch.equal(ids, fused.logits.argmax(-1)), "sampling in the head kernel"
    print("INTERPRETER-OK")
""")


def test_kernels_under_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", SEQMAMBA_KERNELS="triton")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "INTERPRETER-OK" in proc.stdout, proc.stdout + proc.stderr


_CONV_BWD_SPLIT_SCRIPT = textwrap.dedent("""
    import torch
    from seqmamba.kernels import causal_conv1d_triton as conv
    from seqmamba.kernels.causal_conv1d import causal_conv1d_torch

    torch.manual_seed(0)
    for min_programs in (1, 4, 1 << 20):
        # 1: one program walks all 3 position tiles of a row (scratch reused across chunks);
        # 4: two programs of 2 chunks per row, the second one's last chunk past the end;
        # huge: one tile per program
        conv.BWD_MIN_PROGRAMS = min_programs
        for width, bias, init, act, final in [(4, True, True, "silu", True), (2, False, False, None, True),
                                              (3, True, True, None, False)]:
            x = torch.randn(2, 600, 5).transpose(1, 2).requires_grad_()  # strided view, unit L stride
            w = torch.randn(5, width, requires_grad=True)
            b = torch.randn(5, requires_grad=True) if bias else None
            s = torch.randn(2, 5, width - 1, requires_grad=True) if init else None
            leaves = [t for t in (x, w, b, s) if t is not None]
            got, ref = [], []
            for fn, out in ((conv.causal_conv1d_triton, got), (causal_conv1d_torch, ref)):
                outs = fn(x, w, b, s, act, final)
                outs = outs if isinstance(outs, tuple) else (outs,)
                loss = sum((o.double() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum()
                           for o in outs)
                out += list(torch.autograd.grad(loss, leaves))
            assert got[0].is_contiguous()
            for g, r in zip(got, ref):
                err = ((g.double() - r.double()).norm() / r.double().norm()).item()
                assert err < 1e-5, (min_programs, width, err)
    print("SPLIT-OK")
""")


def test_conv_backward_tile_walk_under_triton_interpreter():
    """The backward's multi-tile paths (a program walking several position tiles, a split past the
    end of the row, the look-ahead halo across tiles) with initial state and dfinal routing."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", SEQMAMBA_KERNELS="triton")
    proc = subprocess.run([sys.executable, "-c", _CONV_BWD_SPLIT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "SPLIT-OK" in proc.stdout, proc.stdout + proc.stderr
