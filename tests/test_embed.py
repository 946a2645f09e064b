"""seqmamba.embed and `seqmamba embed`: shapes, pooling, order, padding, outputs."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import seqmamba
from seqmamba.api import embed
from seqmamba.cli import app
from seqmamba.heads import build_model
from seqmamba.tokenizers import get_tokenizer

runner = CliRunner()
D = 16


def tiny_model(bidirectional=False):
    torch.manual_seed(0)
    tok = get_tokenizer("dna_char")
    return build_model(dict(d_model=D, n_layer=2, vocab_size=tok.vocab_size,
                            bidirectional=bidirectional), tokenizer=tok).eval()


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(0)
    return ["".join(rng.choice(list("ACGT"), size=n)) for n in (50, 7, 120, 33)]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_pooled_shapes_order_and_padding(seqs, bidirectional):
    model = tiny_model(bidirectional)
    for pooling in ("mean", "last"):
        together = embed(model, seqs, pooling=pooling, batch_size=3)
        assert together.shape == (len(seqs), D) and together.dtype == np.float32
        # Batched (sorted, right-padded) == one at a time, in input order.
        alone = np.concatenate([embed(model, [s], pooling=pooling) for s in seqs])
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(embed(model, seqs, pooling="mean"), embed(model, seqs, pooling="last"))


def test_per_token_and_layers(seqs):
    model = tiny_model()
    per_token = embed(model, seqs, pooling="none", batch_size=2)
    assert [a.shape for a in per_token] == [(len(s), D) for s in seqs]
    pooled = embed(model, seqs, pooling="mean")
    np.testing.assert_allclose(np.stack([a.mean(0) for a in per_token]), pooled, rtol=1e-4, atol=1e-5)
    last = embed(model, seqs, pooling="last")
    np.testing.assert_allclose(np.stack([a[-1] for a in per_token]), last, rtol=1e-4, atol=1e-5)
    first_block = embed(model, seqs, layer=0)
    assert first_block.shape == (len(seqs), D) and not np.allclose(first_block, pooled)
    with pytest.raises(ValueError, match="layer"):
        embed(model, seqs, layer=5)
    with pytest.raises(ValueError, match="pooling"):
        embed(model, seqs, pooling="max")


def test_from_folder_and_fasta(seqs, tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    fa = tmp_path / "x.fa"
    fa.write_text("".join(f">r{i}\n{s.lower()}\n" for i, s in enumerate(seqs)))
    from_files = seqmamba.embed(str(tmp_path / "m"), str(fa), device="cpu")
    np.testing.assert_allclose(from_files, embed(model, seqs), rtol=1e-5, atol=1e-6)


def test_cli_writes_matrix_and_ids(seqs, tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    fa = tmp_path / "x.fa"
    fa.write_text("".join(f">rec{i} some description\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "emb.npy"
    res = runner.invoke(app, ["embed", str(tmp_path / "m"), str(fa), "--out", str(out),
                              "--pooling", "last"])
    assert res.exit_code == 0, res.output
    X = np.load(out)
    assert X.shape == (len(seqs), D)
    assert (tmp_path / "emb.ids.txt").read_text().split() == [f"rec{i}" for i in range(len(seqs))]
    np.testing.assert_allclose(X, embed(model, seqs, pooling="last"), rtol=1e-5, atol=1e-6)

    res = runner.invoke(app, ["embed", str(tmp_path / "m"), str(fa), "--out", str(tmp_path / "tok.npz"),
                              "--pooling", "none"])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "tok.npz") as z:
        assert [z[f"arr_{i}"].shape for i in range(len(seqs))] == [(len(s), D) for s in seqs]


def test_cli_errors_leave_no_files(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args in ([str(empty), "--out", str(out_dir / "e.npy")],
                 [str(empty), "--out", str(out_dir / "e.npz")],
                 [str(empty), "--out", str(out_dir / "e.npy"), "--pooling", "none"]):
        res = runner.invoke(app, ["embed", str(tmp_path / "m"), *args])
        assert res.exit_code == 1 and res.stderr.startswith("error: "), res.output
    assert list(out_dir.iterdir()) == []
