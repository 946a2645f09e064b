"""`seqmamba pretrain / evaluate / score / data` through the CLI, on a tiny model trained once."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import seqmamba
from seqmamba.cli import app
from seqmamba.training.plan import StagePlan
from seqmamba.training.recipe import load_pretrain_recipe

REPO = Path(__file__).resolve().parents[1]
SAMPLE_FA = REPO / "datasets" / "human" / "human_sample.fa"
SAMPLE_BED = REPO / "datasets" / "human" / "human_sample.bed"
runner = CliRunner()

TINY = {
    "name": "tiny-cli", "seed": 1,
    "model": {"d_model": 16, "n_layer": 2, "tokenizer": {"name": "dna_char"}},
    "data": {"fasta": str(SAMPLE_FA), "bed": str(SAMPLE_BED), "eval_seq_len": 64,
             "max_valid_windows": 4},
    "trainer": {"max_steps": 4, "tokens_per_step": 256, "log_every": 1, "val_every": 2,
                "ckpt_every": 2, "num_workers": 0},
    "optim": {"lr": 5e-3},
    "schedule": {"warmup_steps": 1, "stages": [{"seq_len": 32, "steps": 2}, {"seq_len": 64}]},
}


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def trained_run(recipe_file, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["pretrain", str(recipe_file), f"trainer.runs_dir={runs}",
                                 "trainer.progress_bar=false"])
    assert result.exit_code == 0, result.output
    assert "run folder:" in result.output and "done: 4 steps" in result.output
    (run,) = runs.iterdir()
    return run


def test_run_folder_has_log_plot_checkpoints_and_loadable_export(trained_run):
    for name in ("recipe.yaml", "metrics.csv", "curves.png", "checkpoints/last.ckpt",
                 "checkpoints/step-0000002.ckpt", "checkpoints/step-0000004.ckpt",
                 "export/config.json", "export/model.safetensors"):
        assert (trained_run / name).exists(), name
    header, *rows = (trained_run / "metrics.csv").read_text().splitlines()
    assert header.startswith("step,split,loss,bits,ppl")
    assert [r.split(",")[:2] for r in rows if ",valid," in r] == [["2", "valid"], ["4", "valid"]]
    model = seqmamba.load(trained_run / "export")
    assert model.tokenizer.name == "dna_char" and model.config.d_model == 16
    from seqmamba.training.artifacts import load_trained_model
    from_ckpt = load_trained_model(trained_run / "checkpoints" / "last.ckpt", "cpu")
    for (key, p), (_, q) in zip(model.state_dict().items(), from_ckpt.state_dict().items()):
        assert torch.equal(p, q), key


@pytest.mark.parametrize("override, message", [
    ("trainer.max_stepz=3", "trainer.max_stepz: unknown key (did you mean max_steps?)"),
    ("trainer.max_steps=abc", "trainer.max_steps: expected int"),
    ("model.d_model=-4", "model.d_model: must be >= 1"),
    ("max_steps", "override 'max_steps': expected key=value"),
    # a YAML syntax error in one override: named, on one line (was a 4-line YAML parser message)
    ("model=[1", "override 'model=[1': did not find expected ',' or ']'"),
])
def test_bad_overrides_are_one_line_and_exit_2(recipe_file, tmp_path, override, message):
    result = runner.invoke(app, ["pretrain", str(recipe_file), override, f"trainer.runs_dir={tmp_path}"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1, result.output
    assert not any(tmp_path.iterdir())  # no run folder for a recipe that never started


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_unreadable_recipes_are_one_line(tmp_path, command):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: {d_model: 16\ntrainer: {max_steps: 1}\n")
    run = tmp_path / "run"  # a run folder whose saved recipe.yaml got damaged (was a traceback)
    run.mkdir()
    (run / "recipe.yaml").write_text(broken.read_text())
    for args, message in [([str(broken)], "broken.yaml: not a valid YAML recipe (line 3: "),
                          ([str(tmp_path)], "is a folder, expected a recipe YAML file"),
                          # (finetune's RECIPE argument is required even with --resume)
                          (["--resume", str(run)] + ([str(broken)] if command == "finetune" else []),
                           "run/recipe.yaml: not a valid YAML recipe (line 3: ")]:
        result = runner.invoke(app, [command, *args])
        assert result.exit_code != 0, result.output
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0], result.output


def test_missing_data_names_the_file_and_the_command_that_gets_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["pretrain", str(REPO / "recipes" / "hg38.yaml")])
    assert result.exit_code == 1
    assert "data.fasta: data/hg38/hg38.ml.fa not found" in result.output
    assert "get it with: seqmamba data hg38 --out data/hg38" in result.output
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_missing_run_is_an_error(tmp_path):
    result = runner.invoke(app, ["pretrain", "--resume", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "not a seqmamba run folder" in result.output


def test_shipped_recipes_are_valid():
    paper = load_pretrain_recipe(REPO / "recipes" / "hg38.yaml")
    plan = StagePlan(paper.schedule.stages, paper.trainer.max_steps, paper.trainer.tokens_per_step,
                     paper.trainer.micro_batch_tokens)
    assert plan.tokens_per_step == 2**20 and plan.stages[0].seq_len == 1024 and plan.accumulate == 8
    assert paper.optim.lr == 8e-3 and paper.trainer.max_steps == 10_000
    assert seqmamba.build_model(paper.model).num_parameters() == pytest.approx(1.4e6, rel=0.01)
    long = load_pretrain_recipe(REPO / "recipes" / "hg38.yaml",
                                ["schedule.length_warmup.target=1048576",
                                 "trainer.micro_batch_tokens=1048576"])
    assert [s.seq_len for s in long.schedule.stages] == [2**k for k in range(10, 21)]
    demo = load_pretrain_recipe(REPO / "recipes" / "hg38-demo.yaml")
    assert Path(demo.data.fasta) == Path("datasets/human/human_sample.fa")


def test_evaluate_matches_training_validation_and_accepts_every_model_form(trained_run):
    args = ["--fasta", str(SAMPLE_FA), "--bed", str(SAMPLE_BED), "--split", "valid",
            "--seq-len", "64", "--max-windows", "4", "--json"]
    outs = []
    for model in (trained_run / "export", trained_run, trained_run / "checkpoints" / "last.ckpt"):
        result = runner.invoke(app, ["evaluate", str(model), *args, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.stdout))
    assert outs[0]["windows"] == 4 and outs[0]["tokens_scored"] == 4 * 63
    assert outs[0]["bits_per_base"] == pytest.approx(outs[1]["bits_per_base"]) == \
        pytest.approx(outs[2]["bits_per_base"])
    assert outs[0]["perplexity"] == pytest.approx(2 ** outs[0]["bits_per_base"])
    last_valid = [r for r in (trained_run / "metrics.csv").read_text().splitlines() if ",valid," in r][-1]
    assert float(last_valid.split(",")[3]) == pytest.approx(outs[0]["bits_per_base"], rel=1e-4)
    table = runner.invoke(app, ["evaluate", str(trained_run / "export"), *args[:-1]])
    assert table.exit_code == 0 and "bits/base" in table.stdout and "perplexity" in table.stdout


def test_ratio_standard_error():
    from seqmamba.tasks.evaluate import ratio_standard_error
    assert ratio_standard_error(torch.tensor([3.0]), torch.tensor([2.0])) is None
    assert ratio_standard_error(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 2.0])) == 0.0
    # equal-size units: the ordinary standard error of the per-unit means
    num, den = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([2.0, 2.0, 2.0])
    means = num / den
    assert ratio_standard_error(num, den) == pytest.approx(float(means.std() / 3 ** 0.5))


def test_evaluate_several_lengths(trained_run):
    """--seq-len 32,64: one row per length, each the same as a single-length call."""
    args = ["--fasta", str(SAMPLE_FA), "--bed", str(SAMPLE_BED), "--split", "valid",
            "--max-windows", "4", "--device", "cpu"]
    both = runner.invoke(app, ["evaluate", str(trained_run / "export"), *args, "--seq-len", "32,64",
                               "--json"])
    assert both.exit_code == 0, both.output
    rows = json.loads(both.stdout)["results"]
    assert [r["seq_len"] for r in rows] == [32, 64]
    one = json.loads(runner.invoke(app, ["evaluate", str(trained_run / "export"), *args,
                                         "--seq-len", "64", "--json"]).stdout)
    assert rows[1]["bits_per_base"] == pytest.approx(one["bits_per_base"])
    assert 0 < one["bits_per_base_se"] < 0.5 * one["bits_per_base"]
    table = runner.invoke(app, ["evaluate", str(trained_run / "export"), *args, "--seq-len", "32,64"])
    assert table.exit_code == 0 and len(table.stdout.strip().splitlines()) == 5
    assert table.stdout.strip().splitlines()[-1].split()[0] == "64"
    bad = runner.invoke(app, ["evaluate", str(trained_run / "export"), *args, "--seq-len", "32,x"])
    assert bad.exit_code == 1 and "--seq-len" in bad.output and bad.output.strip().count("\n") == 0
    short = runner.invoke(app, ["evaluate", str(trained_run / "export"), *args, "--seq-len", "64,1"])
    assert short.exit_code == 1 and short.stdout.strip().count("\n") == 0 and "bits/base" not in short.stdout


def test_score_tsv_on_stdout_and_file(trained_run, tmp_path):
    fa = tmp_path / "in.fa"
    fa.write_text(">a\nACGTACGTTTGACCA\n>b\nacgtn\n>c\nGGGGCCCCAAAATTTTACGATCGATCGACT\n")
    result = runner.invoke(app, ["score", str(trained_run / "export"), str(fa), "--both-strands",
                                 "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split("\t") == ["id", "length", "scored", "total_loglik", "mean_loglik",
                                  "total_loglik_rc", "mean_loglik_rc"]
    assert [r.split("\t")[:3] for r in rows] == [["a", "15", "14"], ["b", "5", "4"], ["c", "30", "29"]]
    for r in rows:
        total, mean = float(r.split("\t")[3]), float(r.split("\t")[4])
        assert total < 0 and mean == pytest.approx(total / int(r.split("\t")[2]), abs=1e-5)
    out = tmp_path / "scores.tsv"
    result = runner.invoke(app, ["score", str(trained_run), str(fa), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0 and out.read_text().splitlines()[1].split("\t")[:2] == ["a", "15"]


def test_chunked_scoring_equals_one_pass(trained_run):
    from seqmamba.data.fasta import FastaRecord
    from seqmamba.tasks.score import score_records

    model = seqmamba.load(trained_run / "export")
    seq = SAMPLE_FA.read_text().split("\n", 1)[1].replace("\n", "")[:300]
    records = [FastaRecord("x", "x", seq), FastaRecord("y", "y", seq[:133])]
    whole = score_records(model, records, chunk=100_000)
    chunked = score_records(model, records, chunk=64)
    for a, b in zip(whole, chunked):
        assert a["total_loglik"] == pytest.approx(b["total_loglik"], rel=1e-5)
    # Scores are log-likelihoods: per-base mean about -log(4) for a barely trained model.
    assert -2.5 < whole[0]["mean_loglik"] < -0.5


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "file is empty"),
    ("this is not fasta\n", "no FASTA header"),
    (">r1\nACGTXX\n", "invalid DNA character 'X'"),
])
def test_score_bad_input_is_one_line_and_no_output(trained_run, tmp_path, content, message):
    fa = tmp_path / "in.fa"
    if content is not None:
        fa.write_text(content)
    out = tmp_path / "out.tsv"
    result = runner.invoke(app, ["score", str(trained_run / "export"), str(fa), "--out", str(out)])
    assert result.exit_code == 1
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not out.exists() and list(tmp_path.iterdir()) == ([fa] if content is not None else [])


def test_evaluate_bad_input(trained_run, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained_run / "export"), "--fasta",
                                 str(tmp_path / "missing.fa")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nomodel"), "--fasta", str(SAMPLE_FA)])
    assert result.exit_code == 1 and "no such model" in result.output


def test_data_bed_command(tmp_path):
    out = tmp_path / "split.bed"
    result = runner.invoke(app, ["data", "bed", str(SAMPLE_FA), "--out", str(out), "--interval", "2048"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert {r[3] for r in rows} == {"train", "valid", "test"}
    assert all(int(r[2]) - int(r[1]) <= 2048 for r in rows)
    assert math.isclose(sum(int(r[2]) - int(r[1]) for r in rows), 101_674)
