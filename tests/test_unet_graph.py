"""Graphed U-Net decoding (kernels/unet_decode_graph.py, unet_decode_triton.py) and the device
sampler (decode_sample_triton.py): phase bookkeeping, phase-recorded steps against the eager
step, sampled generation against the eager path and the parallel forward.

CPU tests run the recorded step functions without CUDA graphs (``cuda_graph=False``: same static
buffers and replay schedule); the Triton kernels run under TRITON_INTERPRET=1 in a subprocess.
GPU tests (marked ``gpu``) replay real graphs.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from seqmamba.config import ModelConfig
from seqmamba.heads import build_model
from seqmamba.kernels.decode_graph import DeviceSampler, GraphedStep, graphed_decoder
from seqmamba.kernels.unet_decode_graph import (UNetGraphedStep, default_steps_per_replay,
                                                offset_of, phase_of)


def unet_lm(pool=(2, 3), n_layer=5, down_blocks=True, vocab=37, d_model=16, **kw):
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, backbone="unet",
                      unet={"pool": list(pool), "expand": 2, "down_blocks": down_blocks}, **kw)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # off the init, so that every weight matters and logits are peaked
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def parallel_loglik(model, prompt, out, ban):
    """Log-likelihood of the sampled ``out`` after ``prompt`` under the parallel forward with the
    ``ban`` id excluded: what a graphed sampler with ban_token and loglik must report."""
    seq = torch.cat([prompt, out], 1)
    with torch.no_grad():
        logits = model(seq[:, :-1]).float()
        logits[..., ban] = float("-inf")
        picked = torch.log_softmax(logits, -1).gather(2, seq[:, 1:, None])[..., 0]
    return picked[:, prompt.shape[1] - 1:].sum(1)


def test_phases():
    for pools in ([2, 3], [16, 16], [2, 2, 3]):
        cycle = math.prod(pools)
        phases = {phase_of(pools, o) for o in range(cycle)}
        # one phase per in-group position, except that a complete group opens the next level
        assert len(phases) == sum(p - 1 for p in pools[:-1]) + pools[-1]
        for o in range(3 * cycle + 1):
            ph = phase_of(pools, o)
            assert phase_of(pools, o + cycle) == ph
            assert phase_of(pools, offset_of(pools, ph)) == ph
            # the step at o runs level l+1 exactly when o + 1 is a multiple of p1 ... p_{l+1}
            deepest = sum((o + 1) % math.prod(pools[:l + 1]) == 0 for l in range(len(pools)))
            assert len(ph) == min(deepest + 1, len(pools))
    assert len({phase_of([16, 16], o) for o in range(256)}) == 31
    assert default_steps_per_replay([16, 16]) == 256
    assert default_steps_per_replay([2, 3]) == 252
    assert default_steps_per_replay([32, 32]) == 32
    assert default_steps_per_replay([512]) == 1


@pytest.mark.parametrize("pool,n_layer,down_blocks", [((2, 3), 5, True), ((2, 3), 3, False),
                                                      ((2, 2, 2), 7, True)])
def test_phase_recorded_steps_equal_eager_steps(pool, n_layer, down_blocks):
    """Each step runs the function recorded at the first position of its phase: the same
    computation as the eager step at the true position, over several cycles, mid-group start."""
    m = unet_lm(pool, n_layer, down_blocks)
    g = UNetGraphedStep(m, 2, fused=False, cuda_graph=False)
    cache = m.allocate_cache(2)
    prompt = torch.randint(0, 37, (2, 7))
    with torch.inference_mode():
        m.backbone(prompt, cache=cache)
        g.reset()
        m.backbone(prompt, cache=g.cache)
        token = prompt[:, -1]
        for _ in range(2 * math.prod(pool) + 3):
            ref = m.step(token, cache)
            assert torch.equal(g.step(token), ref)
            token = torch.multinomial(ref.softmax(-1), 1)[:, 0]
    assert g.cache.seqlen_offset == cache.seqlen_offset
    assert set(g._singles) == {phase_of(list(pool), o) for o in range(math.prod(pool))}


def test_sampled_generation_matches_eager_and_parallel_forward():
    m = unet_lm()
    prompt = torch.randint(0, 37, (2, 5))
    want = m.generate(prompt, 40, temperature=0, graph=False)[:, 5:]
    for k in (6, 12):  # whole cycles per chunk: single steps, chunks, then single steps
        g = UNetGraphedStep(m, 2, fused=False, cuda_graph=False, temperature=0,
                            steps_per_replay=k, max_tokens=40)
        assert torch.equal(g.generate(prompt, 40), want)
        assert set(g._chunks) == {0}
    g = UNetGraphedStep(m, 2, fused=False, cuda_graph=False, temperature=1.0, top_p=0.95,
                        ban_token=4, loglik=True, steps_per_replay=6, max_tokens=30)
    torch.manual_seed(1)
    seen = []
    out = g.generate(prompt, 30, on_progress=seen.append)
    assert sum(seen) == 30 and max(seen) == 6
    assert not bool((out == 4).any())
    ll = parallel_loglik(m, prompt, out, ban=4)
    assert torch.allclose(ll.double(), g.loglik, atol=1e-4)


def test_plain_lm_decoder_on_cpu_and_factory():
    from seqmamba.heads import MambaLM

    torch.manual_seed(0)
    m = MambaLM(ModelConfig(d_model=16, n_layer=2, vocab_size=23)).eval()
    g = graphed_decoder(m, 3, temperature=0, cuda_graph=False, fused=False, max_tokens=20)
    assert type(g) is GraphedStep and g.steps_per_replay == 16
    prompt = torch.randint(0, 23, (3, 4))
    assert torch.equal(g.generate(prompt, 20), m.generate(prompt, 20, temperature=0)[:, 4:])
    assert type(graphed_decoder(unet_lm(), 1, cuda_graph=False, fused=False)) is UNetGraphedStep


def test_device_sampler_buffer_and_errors():
    ids = torch.zeros(2, dtype=torch.long)
    s = DeviceSampler(5, ids, temperature=0, max_tokens=2, loglik=True)
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 5.0]])
    for _ in range(3):  # the third token feeds the next step but is kept nowhere
        s.sample(logits)
    assert ids.tolist() == [1, 4] and s.tokens.tolist() == [[1, 1], [4, 4]]
    assert s.counter.tolist() == [3, 3]
    assert torch.allclose(s.loglik, 3 * torch.log_softmax(logits, -1).max(-1).values.double())
    with pytest.raises(ValueError, match="ban_token"):
        DeviceSampler(5, ids, temperature=1, ban_token=5)
    with pytest.raises(ValueError, match="top_p"):
        DeviceSampler(5, ids, temperature=1, top_p=0)
    m = unet_lm()
    with pytest.raises(ValueError, match="divide 6"):
        UNetGraphedStep(m, 1, fused=False, cuda_graph=False, temperature=1, steps_per_replay=4)
    with pytest.raises(ValueError, match="needs a sampler"):
        UNetGraphedStep(m, 1, fused=False, cuda_graph=False, steps_per_replay=6)
    with pytest.raises(ValueError, match="need a sampler"):
        UNetGraphedStep(m, 1, fused=False, cuda_graph=False, top_k=3)
    with pytest.raises(ValueError, match="CUDA device"):
        UNetGraphedStep(m, 1, fused=False)


def test_generate_graph_flag_on_cpu():
    m = unet_lm()
    prompt = torch.randint(0, 37, (1, 3))
    with pytest.raises(ValueError, match="graph=True"):
        m.generate(prompt, 8, graph=True)
    a = m.generate(prompt, 70, generator=torch.Generator().manual_seed(3))  # auto: eager on CPU
    b = m.generate(prompt, 70, generator=torch.Generator().manual_seed(3), graph=False)
    assert torch.equal(a, b)


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import os
    import torch
    from seqmamba.config import ModelConfig
    from seqmamba.heads import MambaLM, build_model
    from seqmamba.kernels.decode_graph import DeviceSampler, GraphedStep
    from seqmamba.kernels.unet_decode_graph import UNetGraphedStep
    from seqmamba.kernels.unet_decode_triton import FusedUNetStep

    def perturbed(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model.eval()

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    torch.manual_seed(0)
    cases = [dict(n_layer=5, unet={"pool": [2, 3], "expand": 2}),
             dict(n_layer=3, d_conv=3, bias=True, unet={"pool": [2, 3], "expand": 2,
                                                        "down_blocks": False})]
    for case in cases:
        model = perturbed(build_model(ModelConfig(d_model=16, vocab_size=37, backbone="unet",
                                                  **case)))
        fused = FusedUNetStep(model, 2, block_in=16, block_ssm=32)  # several programs per row
        ref_cache, cache = model.allocate_cache(2), model.allocate_cache(2)
        prompt = torch.randint(0, 37, (2, 3))
        os.environ["SEQMAMBA_KERNELS"] = "torch"
        with torch.inference_mode():
            model.backbone(prompt, cache=ref_cache)
            model.backbone(prompt, cache=cache)
            ids = prompt[:, -1]
            for _ in range(6):  # positions 3..8: every phase of pools [2, 3]
                offset = ref_cache.seqlen_offset
                os.environ["SEQMAMBA_KERNELS"] = "torch"  # the reference: the model's own step
                ref = model.step(ids, ref_cache)
                os.environ["SEQMAMBA_KERNELS"] = "triton"
                err = rel(fused(ids, cache, offset), ref)
                assert err < 1e-5, f"fused unet step at {offset}: relative error {err:.2e}"
                ids = ref.argmax(-1)
        for a, b in zip(cache.up_buf, ref_cache.up_buf):
            assert rel(a, b) < 1e-5, "up-pool buffers"
        for name, layers in cache.layers.items():
            for a, b in zip(layers, ref_cache.layers[name]):
                assert rel(a.ssm_state, b.ssm_state) < 1e-5, f"{name} ssm state"

    # greedy generation through the fused steps with the sampler in the head kernel
    model = perturbed(build_model(ModelConfig(d_model=16, n_layer=5, vocab_size=37,
                                              backbone="unet", unet={"pool": [2, 3]})))
    prompt = torch.randint(0, 37, (2, 4))
    os.environ["SEQMAMBA_KERNELS"] = "torch"
    want = model.generate(prompt, 9, temperature=0)[:, 4:]
    os.environ["SEQMAMBA_KERNELS"] = "triton"
    g = UNetGraphedStep(model, 2, fused=True, cuda_graph=False, temperature=0,
                        steps_per_replay=6, max_tokens=9)
    assert torch.equal(g.generate(prompt, 9), want)
    # sampling in the head kernel: excluded id, top-k, log-likelihood
    g = UNetGraphedStep(model, 2, fused=True, cuda_graph=False, temperature=1.0, top_k=20,
                        ban_token=3, loglik=True, steps_per_replay=6, max_tokens=9)
    got = g.generate(prompt, 9)
    assert not bool((got == 3).any())
    seq = torch.cat([prompt, got], 1)
    os.environ["SEQMAMBA_KERNELS"] = "torch"
    with torch.no_grad():
        logits = model(seq[:, :-1]).float()
        logits[..., 3] = float("-inf")
        ll = torch.log_softmax(logits, -1).gather(2, seq[:, 1:, None])[..., 0][:, 3:].sum(1)
    assert torch.allclose(ll.double(), g.loglik, atol=1e-4), (ll, g.loglik)

    # the plain LM's fused step with the sampling head
    os.environ["SEQMAMBA_KERNELS"] = "triton"
    lm = perturbed(MambaLM(ModelConfig(d_model=16, n_layer=2, vocab_size=19)))
    prompt = torch.randint(0, 19, (2, 3))
    g = GraphedStep(lm, 2, fused=True, cuda_graph=False, temperature=0, steps_per_replay=2,
                    max_tokens=5)
    os.environ["SEQMAMBA_KERNELS"] = "torch"
    want = lm.generate(prompt, 5, temperature=0)[:, 3:]
    os.environ["SEQMAMBA_KERNELS"] = "triton"
    assert torch.equal(g.generate(prompt, 5), want)

    # the sampling kernel's distribution: excluded id, temperature, top-k, top-p
    V, rows = 11, 400
    logits = (2 * torch.randn(V)).expand(rows, V).contiguous()
    for T, k, p, ban in [(0.8, 5, None, 2), (1.3, None, 0.7, 3), (1.0, 6, 0.8, None)]:
        ids = torch.zeros(rows, dtype=torch.long)
        s = DeviceSampler(V, ids, temperature=T, top_k=k, top_p=p, ban_token=ban, loglik=True,
                          max_tokens=1, seed=3)
        assert s.use_triton
        s.sample(logits)
        x = logits[0].clone()
        if ban is not None:
            x[ban] = float("-inf")
        lp = torch.log_softmax(x, -1)
        y = x / T
        if k is not None:
            y = y.masked_fill(y < torch.topk(y, k).values[-1], float("-inf"))
        if p is not None:
            srt, order = torch.sort(y, descending=True)
            pr = srt.softmax(-1)
            srt = srt.masked_fill(pr.cumsum(-1) - pr >= p, float("-inf"))
            y = torch.full_like(y, float("-inf")).scatter(-1, order, srt)
        want = y.softmax(-1).double()
        freq = torch.bincount(ids, minlength=V).double() / rows
        assert bool((freq[want == 0] == 0).all()), (T, k, p, freq, want)
        assert bool(((freq - want).abs() <= 5 * (want * (1 - want) / rows).sqrt() + 1e-9).all())
        assert torch.allclose(s.loglik, lp[ids].double(), atol=1e-5)
        assert torch.equal(s.tokens[:, 0], ids) and bool((s.counter == 1).all())
    # rows wider than 1024: the top-k / top-p loops run as loops rather than unrolled
    V = 1500
    logits = torch.randn(3, V)
    best, top3 = logits.argmax(-1), logits.topk(3, -1).indices
    for k, p in [(1, None), (None, 1e-6), (3, None)]:
        ids = torch.zeros(3, dtype=torch.long)
        DeviceSampler(V, ids, temperature=1.0, top_k=k, top_p=p, max_tokens=1).sample(logits)
        if k == 3:
            assert bool((ids[:, None] == top3).any(-1).all()), (ids, top3)
        else:
            assert torch.equal(ids, best), (k, p, ids, best)
    print("INTERPRETER-OK")
""")


def test_fused_unet_step_and_sampler_under_triton_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", SEQMAMBA_KERNELS="triton")
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "INTERPRETER-OK" in proc.stdout, proc.stdout + proc.stderr


# ---- GPU ------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def paper_lm(vocab=256):
    """The Mamba paper's YouTubeMix U-Net: D 64, pools [16, 16], expand 2, 15 blocks."""
    return unet_lm((16, 16), 15, vocab=vocab, d_model=64).cuda()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fused", [True, False])
def test_graphed_unet_steps_match_eager_on_gpu(fused):
    m = paper_lm()
    g = UNetGraphedStep(m, 2, fused=fused)
    cache = m.allocate_cache(2)
    prompt = torch.randint(0, 256, (2, 37), device="cuda")
    with torch.inference_mode():
        m.backbone(prompt, cache=cache)
        g.reset()
        m.backbone(prompt, cache=g.cache)
        token = prompt[:, -1]
        for _ in range(300):  # past the end of a 256-step cycle
            ref = m.step(token, cache).float()
            got = g.step(token)
            assert ((got - ref).norm() / ref.norm()).item() < 1e-4
            token = torch.multinomial(ref.softmax(-1), 1)[:, 0]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fused", [True, False])
def test_graphed_unet_generation_on_gpu(fused):
    m = paper_lm(vocab=257)
    prompt = torch.randint(0, 256, (2, 21), device="cuda")
    want = m.generate(prompt, 600, temperature=0, graph=False)[:, 21:]
    g = UNetGraphedStep(m, 2, fused=fused, temperature=0, max_tokens=600)
    assert g.steps_per_replay == 256
    assert torch.equal(g.generate(prompt, 600), want)
    assert torch.equal(m.generate(prompt, 600, temperature=0)[:, 21:], want)  # graph auto

    g = UNetGraphedStep(m, 2, fused=fused, temperature=1.0, top_k=100, top_p=0.95,
                        ban_token=256, loglik=True, max_tokens=600)
    out = g.generate(prompt, 600)
    assert not bool((out == 256).any())
    ll = parallel_loglik(m, prompt, out, ban=256)
    assert torch.allclose(ll.double(), g.loglik, rtol=1e-4)
    g.reset(seed=5)
    first = g.generate(prompt, 300)
    g.reset(seed=5)
    assert torch.equal(g.generate(prompt, 300), first)  # a seed reproduces its samples


@pytest.mark.gpu
@needs_cuda
def test_generate_with_generator_on_gpu_follows_the_eager_stream():
    m = paper_lm()
    prompt = torch.randint(0, 256, (1, 5), device="cuda")
    runs = [m.generate(prompt, 100, generator=torch.Generator("cuda").manual_seed(7), graph=gr)
            for gr in (False, True)]
    assert torch.equal(*runs)


@pytest.mark.gpu
@needs_cuda
def test_sample_audio_graphed_on_gpu():
    import numpy as np

    from seqmamba.tasks.generate import sample_audio
    from seqmamba.tokenizers import MuLawTokenizer

    tok = MuLawTokenizer(8)
    m = unet_lm((4, 4), 5, vocab=tok.vocab_size).cuda()
    m.tokenizer = tok
    res = sample_audio(m, 300, num=3, batch_size=2, seed=1, use_graph="on")
    ids = res.codes.cuda()
    with torch.no_grad():
        logits = m(ids[:, :-1]).float()
        logits[..., tok.pad_id] = float("-inf")
        logp = torch.log_softmax(logits, -1)
    ll = logp.gather(2, ids[:, 1:, None])[..., 0][:, res.prompt_len - 1:].sum(1).double()
    assert np.allclose(ll.cpu().numpy(), res.loglik, rtol=1e-4)
    assert (res.codes != tok.pad_id).all()
    assert not torch.equal(res.codes[0], res.codes[2])  # batches draw different noise
