"""transformers MambaForCausalLM <-> seqmamba, compared on logits (transformers' slow CPU path)."""
import json

import pytest
import torch

import seqmamba
from seqmamba.checkpoint import CheckpointError
from seqmamba.hf_interop import save_hf

transformers = pytest.importorskip("transformers")

V = 37


def hf_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(**dict(dict(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                               state_size=8, conv_kernel=4, expand=2), **kw))
    return transformers.MambaForCausalLM(cfg).eval()


def ids(batch=2, L=24):
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(5))


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, dict(tie_word_embeddings=False, use_bias=True,
                                         use_conv_bias=False, conv_kernel=3, time_step_rank=5,
                                         residual_in_fp32=False)])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, kw):
    hf = hf_model(**kw)
    hf.save_pretrained(tmp_path / "hf")
    model = seqmamba.load(tmp_path / "hf")
    assert model.config.d_model == 32 and model.config.vocab_size == V
    assert (model(ids()) - hf(ids()).logits).abs().max() <= 1e-4
    # recurrent decoding works on the imported model too
    cache = model.allocate_cache(2)
    steps = torch.stack([model.step(t, cache) for t in ids().unbind(1)], 1)
    assert (steps - hf(ids()).logits).abs().max() <= 1e-4


@torch.no_grad()
def test_sharded_transformers_checkpoint(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert (seqmamba.load(tmp_path / "hf")(ids()) - hf(ids()).logits).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, dict(tie_embeddings=False, bias=True, d_conv=2)])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, kw):
    torch.manual_seed(0)
    model = seqmamba.build_model(dict(dict(d_model=32, n_layer=2, vocab_size=V, d_state=8), **kw))
    assert model.config.padded_vocab_size == 40  # the padding rows are dropped on export
    save_hf(model, tmp_path / "out")
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert hf.config.vocab_size == V
    assert (hf(ids()).logits - model(ids())).abs().max() <= 1e-4
    # and back again
    again = seqmamba.load(tmp_path / "out")
    assert (again(ids()) - model(ids())).abs().max() == 0


def test_save_hf_refuses_what_transformers_cannot_hold(tmp_path):
    model = seqmamba.build_model(dict(d_model=16, n_layer=1, vocab_size=V, bidirectional=True))
    with pytest.raises(ValueError, match="causal MambaLM"):
        save_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_pickle_only_transformers_directory_is_refused(tmp_path):
    hf_model().config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickled weights"):
        seqmamba.load(tmp_path)


def test_unsupported_transformers_config(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**doc, "hidden_act": "gelu"}))
    with pytest.raises(CheckpointError, match="hidden_act 'gelu'"):
        seqmamba.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**doc, "conv_kernel": 6}))
    with pytest.raises(CheckpointError, match="d_conv: must be 2, 3 or 4"):
        seqmamba.load(tmp_path)
