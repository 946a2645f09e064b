"""The training engine: step plan, sampling, optimizer groups, LR curve, objectives, and full
(tiny, CPU) runs: resume equals uninterrupted, non-finite loss stop, run folder contents."""
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import seqmamba
from seqmamba.config import ConfigError
from seqmamba.training.config import ScheduleConfig, Stage
from seqmamba.training.module import NonFiniteLossError
from seqmamba.training.objectives import LMObjective
from seqmamba.training.optim import lr_factor, param_groups
from seqmamba.training.plan import StagePlan
from seqmamba.training.pretrain import load_run_recipe, pretrain
from seqmamba.training.recipe import load_pretrain_recipe
from seqmamba.training.sampling import PadCollate, StagedBatchSampler

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "datasets" / "human"


def tiny_recipe(runs_dir, *overrides):
    base = {
        "name": "tiny", "seed": 3,
        "model": {"d_model": 16, "n_layer": 2},
        "data": {"fasta": str(SAMPLE / "human_sample.fa"), "bed": str(SAMPLE / "human_sample.bed"),
                 "max_valid_windows": 4, "eval_seq_len": 64},
        "trainer": {"max_steps": 4, "tokens_per_step": 256, "micro_batch_tokens": 256,
                    "log_every": 1, "val_every": 2, "ckpt_every": 2, "num_workers": 0,
                    "progress_bar": False, "runs_dir": str(runs_dir)},
        "optim": {"lr": 5e-3},
        "schedule": {"warmup_steps": 1, "stages": [{"seq_len": 32, "steps": 2}, {"seq_len": 64}]},
    }
    return load_pretrain_recipe(None, list(overrides), base=base)


# ---- plan and sampling -------------------------------------------------------------------------

def test_plan_keeps_tokens_per_step_and_splits_into_micro_batches():
    stages = [Stage(seq_len=1024, steps=10), Stage(seq_len=2048, steps=10), Stage(seq_len=4096)]
    plan = StagePlan(stages, 100, tokens_per_step=2**16, micro_batch_tokens=2**13, world_size=2)
    assert plan.accumulate == 4
    assert [(s.seq_len, s.batch_size, s.micro_batch, s.first_step, s.steps) for s in plan.stages] == \
        [(1024, 64, 8, 0, 10), (2048, 32, 4, 10, 10), (4096, 16, 2, 20, 80)]
    assert plan.stage_at(9).seq_len == 1024 and plan.stage_at(10).seq_len == 2048
    assert plan.total_micro_batches == 400
    short = StagePlan(stages, 15, tokens_per_step=2**16)  # a short test run of a long recipe
    assert [(s.seq_len, s.steps) for s in short.stages] == [(1024, 10), (2048, 5)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(stages=[Stage(seq_len=64, steps=1, batch_size=4), Stage(seq_len=128, batch_size=4)]),
     "keeps tokens per step constant"),
    (dict(stages=[Stage(seq_len=64, steps=1), Stage(seq_len=4096)], tokens_per_step=4096,
          micro_batch_tokens=1024), "less than one sequence of schedule.stages\\[1\\]"),
    (dict(stages=[Stage(seq_len=64, batch_size=3)], world_size=2), "cannot be split evenly"),
    (dict(stages=[Stage(seq_len=64)]), "batch_size: required when trainer.tokens_per_step"),
])
def test_plan_errors_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StagePlan(max_steps=10, **kwargs)


def test_length_warmup_doubles_length_and_halves_batch():
    sched = ScheduleConfig.from_dict({"length_warmup": {"start": 1024, "target": 8192, "stage_steps": 5}})
    plan = StagePlan(sched.stages, 100, tokens_per_step=2**20)
    assert [(s.seq_len, s.batch_size, s.steps) for s in plan.stages] == \
        [(1024, 1024, 5), (2048, 512, 5), (4096, 256, 5), (8192, 128, 85)]
    with pytest.raises(ConfigError, match="schedule.length_warmup.target: must be start x a power"):
        ScheduleConfig.from_dict({"length_warmup": {"start": 1024, "target": 3000}})


class _Sizes:
    def size(self, seq_len):
        return {32: 50, 64: 23}[seq_len]


def _keys(plan, seed, rank, world, start=0):
    sampler = StagedBatchSampler(_Sizes(), plan, seed, rank, world)
    sampler.start = start
    return list(sampler)


def test_sampler_is_deterministic_resumable_and_split_independent():
    stages = [Stage(seq_len=32, steps=3), Stage(seq_len=64)]
    one = StagePlan(stages, 8, tokens_per_step=512, world_size=1)
    assert one.accumulate == 1
    full = _keys(one, 7, 0, 1)
    assert full == _keys(one, 7, 0, 1)
    assert full[5:] == _keys(one, 7, 0, 1, start=5)  # resuming = skipping consumed micro-batches
    assert full != _keys(one, 8, 0, 1)
    # The same samples per optimizer step with 2 devices x 2 accumulation micro-batches.
    split = StagePlan(stages, 8, tokens_per_step=512, micro_batch_tokens=128, world_size=2)
    assert split.accumulate == 2
    per_rank = [_keys(split, 7, r, 2) for r in (0, 1)]
    for step in range(8):
        mine = [k for r in (0, 1) for m in range(2) for k in per_rank[r][step * 2 + m]]
        assert sorted(mine) == sorted(full[step])
    # Within a stage, a pass covers every window once before any repeats (23 windows at 64).
    at64 = [k[1] for batch in full[3:] for k in batch]
    assert sorted(at64[:23]) == list(range(23))


def test_pad_collate_right_pads():
    batch = PadCollate(0)([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor(1)},
                           {"input_ids": torch.tensor([8]), "labels": torch.tensor(0)}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


# ---- optimisation ------------------------------------------------------------------------------

def test_no_weight_decay_on_norms_biases_a_log_and_d():
    model = seqmamba.build_model(seqmamba.ModelConfig(d_model=16, n_layer=2, vocab_size=10))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("A_log") for n in undecayed) and any(n.endswith(".D") for n in undecayed)
    assert all(not n.endswith("A_log") and not n.endswith(".D") for n in
               (names[id(p)] for p in decay["params"]))
    assert all(p.dim() >= 2 for p in decay["params"])


def test_lr_warmup_then_cosine_to_floor():
    sched = ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, sched, 110) == pytest.approx(0.1)
    assert lr_factor(9, sched, 110) == pytest.approx(1.0)
    assert lr_factor(60, sched, 110) == pytest.approx(0.55)
    assert lr_factor(110, sched, 110) == pytest.approx(0.1)
    flat = ScheduleConfig(warmup_steps=0, decay="constant")
    assert lr_factor(50, flat, 110) == 1.0


def test_lm_objective_masks_padding_and_optionally_n():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 10)

    ids = torch.tensor([[5, 9, 6, 0, 0]])  # A N C pad pad
    loss, stats = LMObjective(0)(Uniform(), {"input_ids": ids})
    assert stats["count"] == 2 and loss == pytest.approx(np.log(10))
    _, stats = LMObjective(0, ignore_ids=[9])(Uniform(), {"input_ids": ids})
    assert stats["count"] == 1


# ---- whole runs --------------------------------------------------------------------------------

class _CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "export" / "model.safetensors"))


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    quiet = lambda s: None  # noqa: E731
    accumulate = "trainer.micro_batch_tokens=128"  # 2 micro-batches per step: resume at a step edge
    ref = pretrain(tiny_recipe(tmp_path / "a", accumulate), echo=quiet)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_recipe(tmp_path / "b", accumulate), callbacks=[_CrashAt(3)], echo=quiet)
    run = next((tmp_path / "b").iterdir())
    assert (run / "checkpoints" / "last.ckpt").exists()  # from step 2
    resumed = pretrain(load_run_recipe(run), resume_dir=run, echo=quiet)
    assert resumed.steps == ref.steps == 4
    a, b = _weights(ref.run_dir), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The log of the resumed run has every step once, with the same losses.
    rows = lambda d: [line.split(",")[:3] for line in (Path(d) / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert rows(run) == rows(ref.run_dir)


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                with torch.no_grad():
                    pl_module.model.backbone.embedding.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at step 3"):
        pretrain(tiny_recipe(tmp_path), callbacks=[Poison()], echo=lambda s: None)
    run = next(tmp_path.iterdir())
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000002.ckpt"]
