"""The SaShiMi-style Mamba U-Net backbone: shapes, causality, recurrent == parallel, config errors."""
import pytest
import torch

from seqmamba.config import ConfigError, ModelConfig
from seqmamba.heads import build_model
from seqmamba.model.unet import UNetBackbone


def tiny(pool=(2, 3), n_layer=5, d_model=16, down_blocks=True, **kw):
    cfg = ModelConfig(d_model=d_model, n_layer=n_layer, vocab_size=257, backbone="unet",
                      unet={"pool": list(pool), "expand": 2, "down_blocks": down_blocks}, **kw)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_registered_and_shapes():
    m = tiny()
    assert isinstance(m.backbone, UNetBackbone)
    assert m.backbone.widths == [16, 32, 64]
    for L in (1, 5, 6, 37):  # lengths need not be multiples of the pooling product (6)
        ids = torch.randint(0, 256, (3, L))
        assert m(ids).shape == (3, L, 257)


def test_paper_size():
    """The Mamba paper's YouTubeMix model: D=64, 3 blocks x 5 stages, pooling 16, ~3.5M."""
    cfg = ModelConfig(d_model=64, n_layer=15, vocab_size=257, backbone="unet",
                      unet={"pool": [16, 16], "expand": 2})
    n = build_model(cfg).num_parameters()
    assert 3.4e6 < n < 3.7e6


@pytest.mark.parametrize("down_blocks", [True, False])
def test_recurrent_equals_parallel(down_blocks):
    m = tiny(down_blocks=down_blocks, n_layer=6 if down_blocks is False else 5)
    ids = torch.randint(0, 256, (2, 41))
    with torch.no_grad():
        par = m.backbone(ids)
        cache = m.allocate_cache(2)
        rec = torch.stack([m.backbone.step(ids[:, t], cache) for t in range(ids.shape[1])], 1)
        # Prefill in uneven chunks (mid-group boundaries at every level), then steps.
        cache2 = m.allocate_cache(2)
        parts = [m.backbone(ids[:, :7], cache=cache2), m.backbone(ids[:, 7:8], cache=cache2),
                 m.backbone(ids[:, 8:30], cache=cache2)]
        parts += [m.backbone.step(ids[:, t], cache2)[:, None] for t in range(30, 41)]
    assert (par - rec).abs().max().item() <= 1e-4
    assert (par - torch.cat(parts, 1)).abs().max().item() <= 1e-4
    assert cache.seqlen_offset == 41 and cache2.seqlen_offset == 41


def test_causal():
    m = tiny()
    ids = torch.randint(0, 256, (1, 36))
    changed = ids.clone()
    changed[0, 17] = (changed[0, 17] + 1) % 256
    with torch.no_grad():
        a, b = m(ids), m(changed)
    assert torch.equal(a[:, :17], b[:, :17])
    assert not torch.allclose(a[:, 17], b[:, 17])


def test_greedy_generation_matches_parallel_argmax():
    m = tiny()
    prompt = torch.randint(0, 256, (2, 5))
    out = m.generate(prompt, 14, temperature=0)
    with torch.no_grad():
        pred = m(out[:, :-1]).argmax(-1)
    assert torch.equal(pred[:, 4:], out[:, 5:])


def test_backward_reaches_every_parameter():
    m = tiny().train()
    ids = torch.randint(0, 256, (2, 24))
    _, loss = m(ids[:, :-1], labels=ids[:, 1:])
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_gradient_checkpointing_same_loss():
    m = tiny().train()
    ids = torch.randint(0, 256, (2, 24))
    _, ref = m(ids[:, :-1], labels=ids[:, 1:])
    m.backbone.gradient_checkpointing = True
    _, got = m(ids[:, :-1], labels=ids[:, 1:])
    got.backward()
    assert torch.allclose(ref, got)


def test_save_load_roundtrip(tmp_path):
    from seqmamba.checkpoint import load
    from seqmamba.tokenizers import MuLawTokenizer

    m = tiny()
    m.tokenizer = MuLawTokenizer(8)
    m.save_pretrained(tmp_path / "m")
    back = load(tmp_path / "m")
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.equal(m(ids), back(ids))
    assert back.config.unet == {"pool": [2, 3], "expand": 2, "down_blocks": True}


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of 5"):
        tiny(n_layer=4)
    with pytest.raises(ConfigError, match=r"pool\[1\]: must be >= 2"):
        tiny(pool=(2, 1))
    with pytest.raises(ConfigError, match="unknown key"):
        build_model(ModelConfig(d_model=8, n_layer=3, vocab_size=257, backbone="unet",
                                unet={"pools": [2]}))
    with pytest.raises(ConfigError, match="causal only"):
        tiny(bidirectional=True)


def test_hidden_states_and_cache_errors():
    m = tiny()
    ids = torch.randint(0, 256, (2, 6))
    with pytest.raises(ValueError, match="per-layer hidden states"):
        m.backbone(ids, output_hidden_states=True)
    with pytest.raises(ValueError, match="batch 1"):
        m.backbone(ids, cache=m.allocate_cache(1))
