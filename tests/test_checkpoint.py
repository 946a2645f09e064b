"""save_pretrained / seqmamba.load: exact round trips, tied weights, and one clear error per fault."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import seqmamba
from seqmamba import checkpoint as ckpt
from seqmamba.checkpoint import CheckpointError
from seqmamba.heads import MambaClassifier, MambaLM, build_model

V = 13


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(dict(dict(d_model=32, n_layer=2, vocab_size=V, d_state=8), **kw)).eval()


def ids(batch=2, L=25):
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(3))


def saved(tmp_path, **kw) -> Path:
    path = tmp_path / "ckpt"
    make(**kw).save_pretrained(path)
    return path


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False},
                                {"head": "classification", "num_classes": 4, "pooling": "mean",
                                 "bidirectional": True, "bidirectional_tie": True}])
def test_round_trip_is_exact(tmp_path, kw):
    model = make(**kw)
    model.save_pretrained(tmp_path / "m")
    again = seqmamba.load(tmp_path / "m")
    assert type(again) is type(model) and again.config == model.config
    assert not again.training
    assert torch.equal(again(ids()), model(ids()))
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["seqmamba_format"] == 1 and doc["d_model"] == 32


def test_tied_weights_stored_once_and_retied_on_load(tmp_path):
    path = saved(tmp_path)
    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "backbone.embedding.weight" in keys and "lm_head.weight" not in keys
    model = seqmamba.load(path)
    assert model.lm_head.weight is model.backbone.embedding.weight


def test_tied_bidirectional_projection_stays_shared(tmp_path):
    path = saved(tmp_path, bidirectional=True, bidirectional_tie=True)
    mixer = seqmamba.load(path).backbone.layers[1].mixer
    assert mixer.fwd.in_proj.weight is mixer.rev.in_proj.weight


def test_tokenizer_is_saved_and_rebuilt(tmp_path):
    tokenizers = pytest.importorskip("seqmamba.tokenizers")
    tok = tokenizers.get_tokenizer("dna_char")
    torch.manual_seed(0)
    model = MambaLM(dict(d_model=16, n_layer=1, vocab_size=tok.vocab_size), tokenizer=tok)
    model.save_pretrained(tmp_path / "m")
    again = seqmamba.load(tmp_path / "m")
    assert again.tokenizer_name == "dna_char"
    assert again.tokenizer.to_config() == tok.to_config()
    with pytest.raises(ValueError, match="has 10 tokens but model.vocab_size is 4"):
        MambaLM(dict(d_model=16, n_layer=1, vocab_size=4), tokenizer=tok)


def test_dtype_and_device_arguments(tmp_path):
    path = saved(tmp_path)
    model = seqmamba.load(path, device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype must be one of"):
        seqmamba.load(path, dtype="int3")


def test_overwrite_replaces_and_leaves_no_temporaries(tmp_path):
    path = saved(tmp_path, seed=0)
    other = make(seed=1)
    other.save_pretrained(path)
    assert torch.equal(seqmamba.load(path)(ids()), other(ids()))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = saved(tmp_path, seed=0)
    before = seqmamba.load(path)(ids())

    def broken(tensors, p, metadata):
        Path(p).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        make(seed=1).save_pretrained(path)
    with pytest.raises(OSError, match="disk full"):
        make(seed=1).save_pretrained(tmp_path / "fresh")
    monkeypatch.undo()
    assert torch.equal(seqmamba.load(path)(ids()), before)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written "fresh"


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = saved(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    assert isinstance(seqmamba.load(path), MambaLM)


# ---- faults: each is one CheckpointError naming the file ----------------------------------------

def expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        seqmamba.load(path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def test_truncated_safetensors(tmp_path):
    path = saved(tmp_path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    expect_error(path, str(weights), "truncated or corrupt")


def test_garbage_safetensors(tmp_path):
    path = saved(tmp_path)
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    expect_error(path, "model.safetensors", "not a valid safetensors file")


def test_shape_mismatch(tmp_path):
    path = saved(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    doc["d_state"] = 4
    (path / "config.json").write_text(json.dumps(doc))
    expect_error(path, "shape mismatch", "A_log (64, 8) vs model (64, 4)")


def test_missing_and_unexpected_tensors(tmp_path):
    path = saved(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors.pop("backbone.norm_f.weight")
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path / "model.safetensors"), metadata={"save_id": doc["save_id"]})
    expect_error(path, "missing tensors: backbone.norm_f.weight", "unexpected tensors: extra.weight")


def test_mixed_saves_are_detected(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make(seed=0).save_pretrained(a)
    make(seed=1).save_pretrained(b)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    expect_error(a, "come from different saves")


def test_bad_json(tmp_path):
    path = saved(tmp_path)
    (path / "config.json").write_text('{"d_model": 32,')
    expect_error(path, "config.json", "invalid JSON at line 1")


def test_bad_config_value(tmp_path):
    path = saved(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    doc["n_layr"] = doc.pop("n_layer")
    (path / "config.json").write_text(json.dumps(doc))
    expect_error(path, "config.json", "n_layr: unknown key (did you mean n_layer?)")


def test_missing_files_and_directories(tmp_path):
    expect_error(tmp_path / "nope", "no such checkpoint directory")
    path = saved(tmp_path)
    (path / "model.safetensors").unlink()
    expect_error(path, "model.safetensors: missing")
    (path / "config.json").unlink()
    expect_error(path, "config.json: missing")
    (tmp_path / "file").write_text("x")
    expect_error(tmp_path / "file", "not a checkpoint directory")


def test_not_seqmamba_or_newer_format(tmp_path):
    path = saved(tmp_path)
    doc = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**doc, "seqmamba_format": 2}))
    expect_error(path, "format 2", "upgrade seqmamba")
    doc.pop("seqmamba_format")
    (path / "config.json").write_text(json.dumps(doc))
    expect_error(path, "not a seqmamba checkpoint")


def test_from_pretrained_checks_the_class(tmp_path):
    path = saved(tmp_path)
    assert isinstance(MambaLM.from_pretrained(path), MambaLM)
    with pytest.raises(TypeError, match="not a MambaClassifier"):
        MambaClassifier.from_pretrained(path)
