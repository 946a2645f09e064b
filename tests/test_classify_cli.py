"""`seqmamba classify`: windows, aggregation, reverse-complement averaging, CLI end to end."""
import csv
import gzip
import io

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqmamba.cli import app
from seqmamba.data.fasta import FastaRecord
from seqmamba.heads import build_model
from seqmamba.tasks.classify import aggregate_log_probs, classify_records, window_starts
from seqmamba.tokenizers import get_tokenizer, reverse_complement

runner = CliRunner()
CLASSES = ["human", "chimp", "ecoli"]


def tiny_classifier(bidirectional=False, head="classification"):
    torch.manual_seed(0)
    tok = get_tokenizer("dna_char")
    cfg = dict(d_model=16, n_layer=2, vocab_size=tok.vocab_size, head=head,
               bidirectional=bidirectional)
    if head == "classification":
        cfg.update(num_classes=3, class_names=CLASSES, pooling="mean" if bidirectional else "last")
    model = build_model(cfg, tokenizer=tok).eval()
    if head == "classification":  # a random head big enough that predictions differ
        with torch.no_grad():
            model.classifier.weight.normal_(0, 3.0)
    return model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "clf"
    tiny_classifier().save_pretrained(path)
    return path


def dna(rng, n):
    return "".join(rng.choice(list("ACGT"), size=n))


@pytest.mark.parametrize("length,window,stride", [
    (1000, 100, 100), (1000, 100, 37), (1001, 100, 100), (101, 100, 1), (150, 100, 33), (999, 128, 64),
])
def test_window_starts_cover_the_record_symmetrically(length, window, stride):
    starts = window_starts(length, window, stride)
    span = length - window
    assert starts[0] == 0 and starts[-1] == span
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    assert sorted(span - s for s in starts) == starts  # mirror image of itself


def test_short_record_is_one_window_and_bad_sizes_fail():
    assert window_starts(50, 100, 10) == [0] and window_starts(100, 100, 10) == [0]
    with pytest.raises(ValueError):
        window_starts(100, 0, 10)


def test_aggregation_rules():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    lp = np.log(p)
    np.testing.assert_allclose(aggregate_log_probs(lp, "prob"), p.mean(0))
    geo = np.sqrt(p[0] * p[1])
    np.testing.assert_allclose(aggregate_log_probs(lp, "logprob"), geo / geo.sum())
    np.testing.assert_allclose(aggregate_log_probs(lp[:1], "logprob"), p[0])
    with pytest.raises(ValueError):
        aggregate_log_probs(lp, "max")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_rc_averaging_makes_a_sequence_and_its_reverse_complement_agree(bidirectional):
    model = tiny_classifier(bidirectional)
    rng = np.random.default_rng(1)
    seqs = [dna(rng, 230), dna(rng, 40)]
    recs = [FastaRecord(f"s{i}", f"s{i}", s) for i, s in enumerate(seqs)]
    rc_recs = [FastaRecord(f"s{i}", f"s{i}", reverse_complement(s)) for i, s in enumerate(seqs)]

    def probs(records, rc):
        rows = classify_records(model, records, window=64, stride=50, batch_size=3, rc_average=rc)
        return np.stack([r["probs"] for r in rows])

    fwd, rev = probs(recs, True), probs(rc_recs, True)
    np.testing.assert_allclose(fwd, rev, rtol=1e-4, atol=1e-6)
    assert np.abs(probs(recs, False) - probs(rc_recs, False)).max() > 1e-4  # not trivially equal


def test_batching_does_not_change_predictions():
    model = tiny_classifier()
    rng = np.random.default_rng(2)
    recs = [FastaRecord(f"r{i}", f"r{i}", dna(rng, n)) for i, n in enumerate([300, 20, 129, 64])]
    a = [r["probs"] for r in classify_records(model, recs, window=64, batch_size=1)]
    b = [r["probs"] for r in classify_records(model, recs, window=64, batch_size=7)]
    np.testing.assert_allclose(np.stack(a), np.stack(b), rtol=1e-4, atol=1e-6)


def read_tsv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_cli_end_to_end(ckpt, tmp_path):
    rng = np.random.default_rng(3)
    long = dna(rng, 700)
    fa = tmp_path / "in.fa.gz"
    text = (f">long desc\n{long[:350]}\n{long[350:]}\n>short\nacgtNNRYacgtACGTTTGA\n"
            f">mixed\n{dna(rng, 100).lower()}\n")
    fa.write_bytes(gzip.compress(text.encode()))
    out = tmp_path / "preds.tsv"
    res = runner.invoke(app, ["classify", str(ckpt), str(fa), "--out", str(out), "--window", "128",
                              "--stride", "100", "--batch-size", "4", "--rc-average"])
    assert res.exit_code == 0, res.output
    rows = read_tsv(out)
    assert [r["id"] for r in rows] == ["long", "short", "mixed"]
    assert [int(r["n_windows"]) for r in rows] == [len(window_starts(700, 128, 100)), 1, 1]
    assert [int(r["length"]) for r in rows] == [700, 20, 100]
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert abs(sum(probs) - 1) < 1e-4
        assert r["predicted"] == CLASSES[int(np.argmax(probs))]

    res = runner.invoke(app, ["classify", str(ckpt), str(fa), "--out", str(out), "--window", "128",
                              "--stride", "100", "--per-window", "--aggregate", "prob"])
    assert res.exit_code == 0, res.output
    rows = read_tsv(out)
    n_long = len(window_starts(700, 128, 100))
    assert len(rows) == n_long + 2
    assert [int(r["start"]) for r in rows[:n_long]] == window_starts(700, 128, 100)
    assert rows[n_long - 1]["end"] == "700" and rows[n_long]["id"] == "short"

    res = runner.invoke(app, ["classify", str(ckpt), str(fa), "--out", "-", "--window", "128"])
    assert res.exit_code == 0
    assert len(list(csv.DictReader(io.StringIO(res.stdout), delimiter="\t"))) == 3


BAD_INPUTS = {
    "empty.fa": b"",
    "binary.fa": bytes(range(256)) * 8,
    "noheader.fa": b"ACGTACGT\nACGT\n",
    "truncated.fa.gz": gzip.compress(b">a\n" + dna(np.random.default_rng(0), 20000).encode())[:3000],
    "badlater.fa": b">ok1\nACGT\n>ok2\nACGTAC\n>bad\nACGU?T\n",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_no_output(ckpt, tmp_path, name):
    fa = tmp_path / name
    fa.write_bytes(BAD_INPUTS[name])
    out = tmp_path / "out" / "preds.tsv"
    out.parent.mkdir()
    res = runner.invoke(app, ["classify", str(ckpt), str(fa), "--out", str(out), "--window", "4",
                              "--batch-size", "1"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
    assert list(out.parent.iterdir()) == []  # no partial file, no temporary left behind


def test_existing_output_survives_a_failed_run(ckpt, tmp_path):
    out = tmp_path / "preds.tsv"
    out.write_text("previous results\n")
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b">a\nACGT\n>b\nAC GT 12\n")
    res = runner.invoke(app, ["classify", str(ckpt), str(bad), "--out", str(out)])
    assert res.exit_code == 1 and out.read_text() == "previous results\n"


@pytest.mark.parametrize("command", ["classify", "score", "embed", "probe"])
def test_an_audio_model_given_to_a_dna_command_is_one_error_line(tmp_path, command):
    # Used to end in a TypeError traceback from inside the mu-law tokenizer.
    tok = get_tokenizer("mulaw")
    audio = tmp_path / "audio"
    build_model(dict(d_model=8, n_layer=1, vocab_size=tok.vocab_size,
                     head="classification" if command == "classify" else "lm", num_classes=2
                     if command == "classify" else None), tokenizer=tok).save_pretrained(audio)
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGT\n>b\nGGGGCCCC\n")
    classes = tmp_path / "classes"
    classes.mkdir()
    (classes / "x.fa").write_text(">x1\nACGT\n>x2\nACGA\n")
    (classes / "y.fa").write_text(">y1\nGGCC\n>y2\nGGCG\n")
    out = tmp_path / ("o.npy" if command == "embed" else "o.tsv")
    args = {"classify": [str(audio), str(fa), "--out", str(out)],
            "score": [str(audio), str(fa), "--out", str(out)],
            "embed": [str(audio), str(fa), "--out", str(out)],
            "probe": [str(audio), "--train", str(classes), "--out", str(out)]}[command]
    res = runner.invoke(app, [command, *args])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "audio model (mu-law tokenizer)" in lines[0], res.stderr
    assert not out.exists()


def test_os_errors_read_as_path_then_reason(capsys):
    import typer

    from seqmamba.tasks.cli_support import cli_errors

    with pytest.raises(typer.Exit) as exit_info:
        with cli_errors():
            open("/nonexistent-folder-seqmamba/x.json", "w")
    assert exit_info.value.exit_code == 1
    # not "[Errno 2] No such file or directory: '/nonexistent-folder-seqmamba/x.json'"
    assert capsys.readouterr().err == \
        "error: /nonexistent-folder-seqmamba/x.json: No such file or directory\n"


def test_unusable_checkpoints_are_clear_errors(tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGT\n")
    lm = tmp_path / "lm"
    tiny_classifier(head="lm").save_pretrained(lm)
    for ckpt, message in [(lm, "not a classifier"), (tmp_path / "nothing", "no such")]:
        res = runner.invoke(app, ["classify", str(ckpt), str(fa), "--out", str(tmp_path / "o.tsv")])
        assert res.exit_code == 1 and message in res.stderr, res.stderr
        assert not (tmp_path / "o.tsv").exists()
