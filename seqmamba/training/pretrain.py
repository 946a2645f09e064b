"""Genome language-model pretraining from a ``PretrainRecipe`` (what ``seqmamba pretrain`` runs).

    from seqmamba.training.recipe import load_pretrain_recipe
    from seqmamba.training.pretrain import pretrain
    result = pretrain(load_pretrain_recipe("recipes/hg38-demo.yaml", ["trainer.max_steps=50"]))
    result.export   # runs/hg38-demo-<timestamp>/export, loadable with seqmamba.load
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import lightning as L

from ..config import ConfigError
from ..data.genome import Genome
from ..data.windows import GenomeLMSource, GenomeWindowDataset, evenly_spaced, make_windows
from .config import dump_recipe
from .datamodule import StagedDataModule
from .engine import FitResult, fit, make_run_dir, world_size
from .module import SeqMambaModule
from .objectives import LMObjective
from .plan import StagePlan
from .recipe import PretrainRecipe, load_pretrain_recipe

__all__ = ["pretrain", "build_pretraining", "load_run_recipe", "RECIPE_NAME"]

RECIPE_NAME = "recipe.yaml"


def load_run_recipe(run_dir: str | os.PathLike, overrides: list[str] = ()) -> PretrainRecipe:
    """The recipe a run folder was started with (its recipe.yaml), plus overrides."""
    path = Path(run_dir) / RECIPE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found ({run_dir} is not a seqmamba run folder)")
    # Read like any recipe file, so a damaged recipe.yaml is one ConfigError line.
    return load_pretrain_recipe(path, overrides)


def build_pretraining(recipe: PretrainRecipe):
    """(module, datamodule, genome) for a recipe, checking the data against the plan."""
    from ..heads import build_model
    from ..tokenizers import tokenizer_from_config

    recipe.data.check_files()
    t = recipe.trainer
    plan = StagePlan(recipe.schedule.stages, t.max_steps, t.tokens_per_step, t.micro_batch_tokens,
                     world_size(t))
    tokenizer = tokenizer_from_config(recipe.model.tokenizer)
    data = recipe.data
    genome = Genome(data.fasta, data.bed)
    source = GenomeLMSource(genome, genome.intervals(data.train_split if data.bed else None),
                            tokenizer, data.rc_prob)
    for st in plan.stages:
        if source.size(st.seq_len) == 0:
            raise ConfigError(f"schedule.stages[{st.index}].seq_len: no training window of "
                              f"{st.seq_len} bases in {data.fasta}")

    valid = None
    if data.bed and data.valid_split:
        eval_len = data.eval_seq_len or plan.final_seq_len
        windows = make_windows(genome.intervals(data.valid_split), genome.chrom_lengths, eval_len)
        valid = GenomeWindowDataset(genome, evenly_spaced(windows, data.max_valid_windows), tokenizer)
        micro_tokens = plan.tokens_per_step // plan.world_size // plan.accumulate
        valid_batch = max(micro_tokens // eval_len, 1)
    else:
        valid_batch = 1

    ignore = []
    if data.exclude_n:
        try:
            ignore = [tokenizer.token_to_id("N")]
        except Exception:
            raise ConfigError(f"data.exclude_n: the {tokenizer.name} tokenizer has no single N "
                              "token") from None

    L.seed_everything(recipe.seed, verbose=False)  # the same initial weights for the same seed
    model = build_model(recipe.model, tokenizer=tokenizer)
    module = SeqMambaModule(model, LMObjective(tokenizer.pad_id, ignore), recipe.optim,
                            recipe.schedule, plan)
    datamodule = StagedDataModule(source, plan, recipe.seed, tokenizer.pad_id, valid, valid_batch,
                                  t.num_workers)
    return module, datamodule, genome


def pretrain(recipe: PretrainRecipe, resume_dir: str | os.PathLike | None = None,
             callbacks: list | tuple = (), echo: Callable[[str], None] = print) -> FitResult:
    """Train a new run (folder under trainer.runs_dir), or continue ``resume_dir``."""
    from ..data.audio import AudioPretrainRecipe, audio_pretrain
    if isinstance(recipe, AudioPretrainRecipe):  # audio data: same engine, audio data + eval
        return audio_pretrain(recipe, resume_dir, callbacks, echo)
    module, datamodule, genome = build_pretraining(recipe)
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    else:
        run_dir = make_run_dir(recipe.trainer.runs_dir, recipe.name)
    is_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if is_zero:
        dump_recipe(recipe, run_dir / RECIPE_NAME)
        plan = module.plan
        verb = "resuming" if resume_dir is not None else "run folder"
        echo(f"{verb}: {run_dir}")
        echo(f"model: {module.model.num_parameters():,} parameters "
             f"(d_model {recipe.model.d_model}, {recipe.model.n_layer} layers)")
        valid = datamodule.valid
        echo(f"data: {genome!r}; {datamodule.train_source.size(plan.stages[0].seq_len):,} training "
             f"windows at {plan.stages[0].seq_len}"
             + (f"; {len(valid)} validation windows" if valid is not None else "; no validation"))
        for line in plan.describe():
            echo(line)
    return fit(module, datamodule, recipe.trainer, run_dir, resume=resume_dir is not None,
               callbacks=callbacks, echo=echo)
