"""`seqmamba probe`: linear probe on frozen embeddings (folder of FASTA per class, or TSV)."""
import gzip
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqmamba.cli import app
from seqmamba.heads import build_model
from seqmamba.tasks.probe import fit_probe, load_labelled
from seqmamba.tokenizers import get_tokenizer

runner = CliRunner()
GC_RICH, AT_RICH = (0.15, 0.35, 0.35, 0.15), (0.35, 0.15, 0.15, 0.35)


def dna(rng, n, p):
    return "".join(rng.choice(list("ACGT"), size=n, p=p))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = get_tokenizer("dna_char")
    path = tmp_path_factory.mktemp("probe") / "m"
    build_model(dict(d_model=16, n_layer=1, vocab_size=tok.vocab_size), tokenizer=tok).save_pretrained(path)
    return path


def write_class_dir(path, rng, n=20, length=60):
    path.mkdir()
    (path / "gc_rich.fa").write_text("".join(f">g{i}\n{dna(rng, length, GC_RICH)}\n" for i in range(n)))
    at = "".join(f">a{i}\n{dna(rng, length, AT_RICH)}\n" for i in range(n))
    (path / "at_rich.fasta.gz").write_bytes(gzip.compress(at.encode()))
    return path


def test_fit_probe_on_separable_features():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(4, 1, (30, 5))])
    y = ["a"] * 30 + ["b"] * 30
    r = fit_probe(X, y, X[::3], y[::3], cv=5)
    assert r["cv_folds"] == 5 and r["cv_accuracy"] > 0.95 and r["test_accuracy"] > 0.95
    assert r["classes"] == ["a", "b"] and r["chance"] == 0.5
    noise = fit_probe(rng.normal(0, 1, (60, 5)), y, cv=5)
    assert noise["cv_accuracy"] < 0.8  # the probe does not invent signal
    with pytest.raises(ValueError, match="not in the training set"):
        fit_probe(X, y, X[:2], ["a", "c"])


def test_load_labelled_folder_windows_and_tsv(tmp_path):
    rng = np.random.default_rng(1)
    d = write_class_dir(tmp_path / "d", rng, n=3, length=100)
    ds = load_labelled(d)
    assert ds.classes == ["at_rich", "gc_rich"] and len(ds) == 6
    windows = load_labelled(d, window=30, max_per_class=5)
    assert len(windows) == 10 and all(len(s) == 30 for s in windows.sequences)
    tsv = tmp_path / "x.tsv"
    tsv.write_text("id\tsequence\tlabel\n1\tACGT\tx\n2\tGGCC\ty\n")
    assert load_labelled(tsv).labels == ["x", "y"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("seq\tclass\nACGT\tx\n")
    with pytest.raises(ValueError, match="'sequence' and 'label'"):
        load_labelled(bad)
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.fa").write_text(">a\nACGT\n")
    with pytest.raises(ValueError, match="at least two classes"):
        load_labelled(one)


def test_probe_cli_separates_gc_rich_from_at_rich(model_dir, tmp_path):
    rng = np.random.default_rng(2)
    train = write_class_dir(tmp_path / "train", rng)
    test = tmp_path / "test.tsv"
    rows = [(dna(rng, 60, GC_RICH), "gc_rich") for _ in range(10)] + \
           [(dna(rng, 60, AT_RICH), "at_rich") for _ in range(10)]
    test.write_text("sequence\tlabel\n" + "".join(f"{s}\t{lab}\n" for s, lab in rows))
    out, png = tmp_path / "probe.json", tmp_path / "cm.png"
    res = runner.invoke(app, ["probe", str(model_dir), "--train", str(train), "--test", str(test),
                              "--out", str(out), "--confusion", str(png), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["cv_accuracy"] >= 0.9 and result["test_accuracy"] >= 0.9
    assert result["n_train"] == 40 and result["n_test"] == 20
    assert "cross-validated accuracy" in res.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_probe_cli_errors(model_dir, tmp_path):
    res = runner.invoke(app, ["probe", str(model_dir), "--train", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "error: " in res.stderr and "no such file" in res.stderr


@pytest.mark.parametrize("extra, message", [
    (["--window", "0"], "--window must be >= 1"),           # was silently ignored
    (["--max-per-class", "0"], "--max-per-class must be >= 1"),  # was "need at least one array"
    (["--cv", "1"], "--cv must be >= 2 folds, or 0"),     # was "a class has fewer than 2 examples"
    (["--train-file"], "one FASTA file has no labels"),   # a single FASTA was read as a TSV
    (["--train-binary"], "not a UTF-8 text TSV"),         # was a bare UnicodeDecodeError text
    (["--out-missing-folder"], "output folder does not exist"),  # after the PNG was written
])
def test_probe_bad_options_and_files_are_one_line_and_write_nothing(model_dir, tmp_path, extra,
                                                                     message):
    rng = np.random.default_rng(0)
    train = tmp_path / "train"
    write_class_dir(train, rng, n=4, length=20)
    args = ["probe", str(model_dir), "--train", str(train), "--no-progress"]
    if extra == ["--train-file"]:
        args[3] = str(next(train.iterdir()))
    elif extra == ["--train-binary"]:
        (tmp_path / "b.tsv").write_bytes(bytes(range(256)))
        args[3] = str(tmp_path / "b.tsv")
    elif extra == ["--out-missing-folder"]:
        args += ["--test", str(train), "--confusion", str(tmp_path / "cm.png"),
                 "--out", str(tmp_path / "nope" / "m.json")]
    else:
        args += extra
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert res.stdout == "" and not (tmp_path / "cm.png").exists()


def test_probe_cv_0_skips_cross_validation(model_dir, tmp_path):
    train = tmp_path / "train"
    write_class_dir(train, np.random.default_rng(0), n=4, length=20)
    res = runner.invoke(app, ["probe", str(model_dir), "--train", str(train), "--cv", "0"])
    assert res.exit_code == 0, res.output
    assert "cross-validation skipped: --cv 0" in res.stdout
