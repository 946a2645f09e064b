"""Mamba mixer/backbone/heads: init, shapes, recurrent inference, generation, pooling."""
import math

import pytest
import torch
import torch.nn.functional as F

from seqmamba.config import ConfigError, ModelConfig
from seqmamba.heads import MambaClassifier, MambaLM, build_model, sample_next
from seqmamba.model import MambaMixer

V = 13  # deliberately not a multiple of pad_vocab_size_multiple


def lm(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(dict(dict(d_model=32, n_layer=2, vocab_size=V, d_state=8), **kw)).eval()


def classifier(seed=0, **kw):
    base = dict(d_model=32, n_layer=2, vocab_size=V, d_state=8, head="classification", num_classes=3)
    torch.manual_seed(seed)
    return build_model(dict(base, **kw)).eval()


def ids(batch=2, L=37, seed=1):
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(seed))


# ---- init --------------------------------------------------------------------------------------

def test_init_matches_mamba_recipe():
    cfg = ModelConfig(d_model=64, n_layer=4, vocab_size=V, d_state=16, dt_min=0.002, dt_max=0.05)
    torch.manual_seed(0)
    mixer = MambaMixer(cfg, 0)
    A = -torch.exp(mixer.A_log.float())
    assert torch.allclose(A, -torch.arange(1, 17, dtype=torch.float32).expand(128, 16), rtol=1e-6)
    assert torch.equal(mixer.D.detach(), torch.ones(128))
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= 0.002 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    # log-uniform: the log of dt spreads over the whole range, not just one end
    assert dt.log().std() > 0.25 * (math.log(0.05) - math.log(0.002)) / math.sqrt(12)
    bound = cfg.dt_rank_value ** -0.5
    assert mixer.dt_proj.weight.abs().max() <= bound
    # out_proj: kaiming-uniform bound 1/sqrt(fan_in), scaled by 1/sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= 1 / math.sqrt(128) / math.sqrt(4) + 1e-7
    assert mixer.out_proj.weight.abs().max() > 0.8 / math.sqrt(128) / math.sqrt(4)
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    assert mixer.in_proj.bias is None and mixer.conv1d.bias is not None


def test_dt_floor_applies():
    cfg = ModelConfig(d_model=32, n_layer=1, vocab_size=V, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    dt = F.softplus(MambaMixer(cfg).dt_proj.bias.detach().double())
    assert torch.allclose(dt, torch.full_like(dt, 1e-3), rtol=1e-4)


def test_embedding_init_and_weight_decay_groups():
    model = lm(d_model=256)
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.002
    decay, no_decay = model.optimizer_groups(0.1)
    ids_ = {id(p) for p in no_decay["params"]}
    mixer = model.backbone.layers[0].mixer
    assert id(mixer.A_log) in ids_ and id(mixer.D) in ids_ and id(mixer.dt_proj.bias) in ids_
    assert id(mixer.in_proj.weight) in {id(p) for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---- shapes ------------------------------------------------------------------------------------

def test_lm_forward_shapes_and_padded_vocab():
    model = lm()
    assert isinstance(model, MambaLM)
    assert model.lm_head.weight.shape[0] == 16 and model.config.vocab_size == V
    x = ids()
    logits = model(x)
    assert logits.shape == (2, 37, V)
    out, per_layer = model.backbone(x, output_hidden_states=True)
    assert len(per_layer) == 3 and torch.equal(per_layer[-1], out)
    assert all(h.shape == (2, 37, 32) for h in per_layer)
    logits2, loss = model(x[:, :-1], labels=x[:, 1:])
    ref = F.cross_entropy(logits2.reshape(-1, V), x[:, 1:].reshape(-1))
    assert torch.allclose(loss, ref)


def test_inputs_embeds_equals_ids():
    model = lm()
    x = ids()
    assert torch.equal(model(x), model(inputs_embeds=model.backbone.embedding(x)))
    with pytest.raises(ValueError, match="exactly one"):
        model.backbone(x, inputs_embeds=model.backbone.embedding(x))


def test_classifier_and_bidirectional_shapes():
    assert classifier()(ids()).shape == (2, 3)
    bi = classifier(bidirectional=True, pooling="mean")
    assert bi(ids()).shape == (2, 3)
    assert isinstance(bi, MambaClassifier)
    emb = bi.embed(ids(), pooling="none")
    assert emb.shape == (2, 37, 32)
    assert bi.embed(ids(), layer=0).shape == (2, 32)


def test_bidirectional_sees_the_future_and_causal_does_not():
    x = ids(batch=1)
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % V
    causal, bi = lm(), lm(bidirectional=True)
    assert torch.equal(causal(x)[:, :-1], causal(y)[:, :-1])
    assert not torch.allclose(bi(x)[:, :-1], bi(y)[:, :-1])


def test_bidirectional_tie_shares_projections():
    model = lm(bidirectional=True, bidirectional_tie=True)
    mixer = model.backbone.layers[0].mixer
    assert mixer.fwd.in_proj is mixer.rev.in_proj and mixer.fwd.out_proj is mixer.rev.out_proj
    assert mixer.fwd.x_proj is not mixer.rev.x_proj
    untied = lm(bidirectional=True)
    assert model.num_parameters() < untied.num_parameters()


def test_tied_and_untied_embeddings():
    tied = lm()
    assert tied.lm_head.weight is tied.backbone.embedding.weight
    untied = lm(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.backbone.embedding.weight
    assert untied.num_parameters() == tied.num_parameters() + 16 * 32


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'transformer'"):
        lm(backbone="transformer")


# ---- gradients -----------------------------------------------------------------------------------

def test_backward_reaches_every_parameter_and_checkpointing_matches():
    x = ids(L=20)
    grads = []
    for ckpt in (False, True):
        model = lm().train()
        model.backbone.gradient_checkpointing = ckpt
        _, loss = model(x[:, :-1], labels=x[:, 1:])
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
        assert not missing
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---- recurrent inference ---------------------------------------------------------------------

@torch.no_grad()
def test_step_matches_parallel_forward():
    model = lm()
    x = ids(L=40)
    full = model(x)
    cache = model.allocate_cache(2)
    stepped = torch.stack([model.step(x[:, t], cache) for t in range(x.shape[1])], 1)
    assert (stepped - full).abs().max() <= 1e-4
    assert cache.seqlen_offset == 40


@torch.no_grad()
def test_prefill_then_step_and_chunked_prefill_match():
    model = lm(d_conv=3)
    x = ids(L=40)
    full = model(x)
    cache = model.allocate_cache(2)
    prompt_logits = model(x[:, :25], cache=cache)
    assert (prompt_logits - full[:, :25]).abs().max() <= 1e-4
    rest = torch.stack([model.step(x[:, t], cache) for t in range(25, 40)], 1)
    assert (rest - full[:, 25:]).abs().max() <= 1e-4
    cache.reset()
    # prefill in pieces, including a piece shorter than the conv window
    parts = [model(x[:, a:b], cache=cache) for a, b in ((0, 1), (1, 11), (11, 40))]
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


def test_recurrent_inference_rejects_bidirectional():
    model = lm(bidirectional=True)
    with pytest.raises(ValueError, match="causal"):
        model.allocate_cache(1)
    with pytest.raises(ValueError, match="causal"):
        model.generate(ids(batch=1, L=3), 2)


def test_cache_batch_mismatch():
    model = lm()
    with pytest.raises(ValueError, match="batch 1"):
        model(ids(batch=2), cache=model.allocate_cache(1))


# ---- generation --------------------------------------------------------------------------------

def test_generate_is_reproducible_and_respects_length():
    model = lm()
    prompt = ids(batch=3, L=5)
    a = model.generate(prompt, 12, generator=torch.Generator().manual_seed(7), top_k=5, top_p=0.9)
    b = model.generate(prompt, 12, generator=torch.Generator().manual_seed(7), top_k=5, top_p=0.9)
    c = model.generate(prompt, 12, generator=torch.Generator().manual_seed(8), temperature=2.0)
    assert a.shape == (3, 17) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :5], prompt) and a.max() < V and a.min() >= 0
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.generate(prompt[0], 4).shape == (9,)


def test_greedy_generation_agrees_with_teacher_forcing():
    model = lm()
    out = model.generate(ids(batch=2, L=4), 15, temperature=0)
    logits = model(out)
    assert torch.equal(logits[:, 3:-1].argmax(-1), out[:, 4:])


def test_generate_callback_can_stop():
    model = lm()
    seen = []
    out = model.generate(ids(batch=1, L=3), 10, callback=lambda i, tok: seen.append(i) or i == 3,
                         generator=torch.Generator().manual_seed(0))
    assert seen == [0, 1, 2, 3] and out.shape == (1, 7)


def test_generate_argument_errors():
    model = lm()
    with pytest.raises(ValueError, match="length >= 1"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(ids(batch=1, L=2), 3, top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids(batch=1, L=2), 3, temperature=-1)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample_next(logits, top_k=1, generator=g).tolist() == [1, 0]
        assert sample_next(logits, top_p=1e-3, generator=g).tolist() == [1, 0]
        assert set(sample_next(logits, top_k=2, generator=g).tolist()) <= {1, 3, 0}
    draws = torch.stack([sample_next(logits, top_p=0.7, generator=g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3}  # the two top tokens hold > 0.7 together


# ---- pooling and padding -------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(pooling="last"), dict(pooling="mean"),
                                dict(pooling="mean", bidirectional=True),
                                dict(pooling="last", bidirectional=True, bidirectional_tie=True)])
def test_padding_with_mask_equals_unpadded(kw):
    model = classifier(**kw)
    x = ids(batch=2, L=30)
    mask = torch.ones_like(x)
    mask[1, 21:] = 0
    padded = x.clone()
    padded[1, 21:] = 0
    batched = model(padded, attention_mask=mask)
    alone = model(x[1:, :21])
    assert (batched[1] - alone[0]).abs().max() <= 1e-5
    assert (batched[0] - model(x[:1])[0]).abs().max() <= 1e-5
    emb = model.embed(padded, attention_mask=mask, pooling="mean")
    assert (emb[1] - model.embed(x[1:, :21], pooling="mean")[0]).abs().max() <= 1e-5


def test_left_padding_is_rejected():
    model = classifier()
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="right-padded"):
        model(ids(L=10), attention_mask=mask)


def test_embed_layer_bounds():
    model = lm()
    with pytest.raises(ValueError, match="layer must be in"):
        model.embed(ids(), layer=5)
    first = model.embed(ids(), layer=0, pooling="none")
    assert not torch.allclose(first, model.embed(ids(), pooling="none"))


# ---- GPU: the Triton path agrees with the PyTorch path on a whole model ----------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_cuda_triton_model_matches_torch_path(monkeypatch):
    torch.manual_seed(0)
    model = build_model(dict(d_model=64, n_layer=3, vocab_size=V, d_state=16)).cuda()
    x = torch.randint(0, V, (2, 300), device="cuda")

    def run(mode):
        monkeypatch.setenv("SEQMAMBA_KERNELS", mode)
        model.zero_grad(set_to_none=True)
        logits, loss = model(x[:, :-1], labels=x[:, 1:])
        loss.backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (l_tr, g_tr), (l_pt, g_pt) = run("auto"), run("torch")
    assert (l_tr - l_pt).abs().max() <= 1e-3
    assert (g_tr - g_pt).abs().max() <= 1e-3 * g_pt.abs().max()
    monkeypatch.setenv("SEQMAMBA_KERNELS", "auto")
    with torch.no_grad():
        model.eval()
        cache = model.allocate_cache(2)
        head = model(x[:, :100], cache=cache)
        steps = torch.stack([model.step(x[:, t], cache) for t in range(100, 140)], 1)
        full = model(x[:, :140])
        assert (torch.cat([head, steps], 1) - full).abs().max() <= 1e-3
        bf16 = model.to(torch.bfloat16)(x)
        assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
        out = model.generate(x[:, :10], 20, generator=torch.Generator("cuda").manual_seed(0))
        assert out.shape == (2, 30)
