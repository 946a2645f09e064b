"""``seqmamba finetune``: train a sequence classifier (species classification) from a recipe.

    seqmamba finetune recipes/species-demo.yaml                      # bundled sample, CPU
    seqmamba finetune recipes/great-apes.yaml init_from=runs/hg38-.../export

The recipe names one genome FASTA per class (``data.species``, see ``seqmamba.data.species``).
Training runs on the shared engine (``seqmamba.training``: Lightning module, staged data,
warmup + cosine schedule, run folder, checkpoints, export) with the classification objective.

The model is either built from the recipe's ``model`` section (from scratch) or, with
``init_from``, takes the backbone weights and architecture of an exported model (a pretrained
language model or another classifier); ``model`` keys then override the pretrained config (only
head settings such as ``pooling`` make sense there). The head is always a fresh linear layer
over ``num_classes = len(data.species)``; it reads the last token for a causal backbone and the
mean over tokens for a bidirectional one, unless ``model.pooling`` says otherwise.

After training, the fixed test windows are scored (with and without reverse-complement
averaging): ``test_metrics.json`` and ``confusion_test.png`` in the run folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import ConfigError, TypedConfig
from ..data.species import SpeciesDataConfig, SpeciesGenome, SpeciesSource, SpeciesWindowDataset, \
    missing_species_message
from ..training.config import dump_recipe, load_recipe_dict
from ..training.recipe import MissingDataError, TrainingRecipe, build_named_recipe

__all__ = ["FinetuneRecipe", "load_finetune_recipe", "build_finetuning", "finetune",
           "evaluate_windows", "register", "RECIPE_NAME"]

RECIPE_NAME = "recipe.yaml"


@dataclass
class EvalConfig(TypedConfig):
    _config_prefix = "eval"

    rc_average: bool = True   # also score test windows with reverse-complement averaging
    batch_size: int = 32      # windows per forward pass when scoring

    def validate(self, prefix: str) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size: must be >= 1, got {self.batch_size}")


@dataclass(kw_only=True)
class FinetuneRecipe(TrainingRecipe):
    data: SpeciesDataConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    init_from: Optional[str] = None  # exported model folder whose backbone weights start training
    name: str = "finetune"

    def validate(self, prefix: str) -> None:
        if self.model.head != "classification":
            raise ConfigError(f"model.head: fine-tuning trains a classifier, got {self.model.head!r}")
        if self.model.num_classes != len(self.data.species):
            raise ConfigError(f"model.num_classes: {self.model.num_classes} but data.species lists "
                              f"{len(self.data.species)} species (leave it out)")
        super().validate(prefix)


def _load_pretrained(path: str):
    from ..checkpoint import load

    try:
        return load(path)
    except (ValueError, OSError) as e:  # CheckpointError and unreadable folders
        raise ConfigError(f"init_from: {e}") from None


def _prepare_model(data: dict) -> None:
    """Fill the model section: the pretrained config under user keys, classification head
    over the species, pooling by directionality, tokenizer and vocab size."""
    model = data.get("model")
    if model is None:
        model = {}
    if not isinstance(model, dict):
        return  # from_dict reports the ill-typed section
    init_from = data.get("init_from")
    if init_from:
        base = _load_pretrained(str(init_from)).config.to_dict()
        for key in ("head", "num_classes", "class_names", "pooling"):
            base.pop(key, None)
        model = {**base, **model}
    elif "d_model" not in model:
        raise ConfigError("model: give the architecture (d_model, n_layer, ...) or init_from: "
                          "an exported pretrained model folder")
    section = data.get("data")
    species = section.get("species") if isinstance(section, dict) else None
    if isinstance(species, list):
        names = [s.get("name") if isinstance(s, dict) else None for s in species]
        if all(isinstance(n, str) for n in names):
            if model.get("num_classes", len(names)) != len(names):
                raise ConfigError(f"model.num_classes: {model['num_classes']} but data.species "
                                  f"lists {len(names)} species (leave it out)")
            model.setdefault("num_classes", len(names))
            model.setdefault("class_names", names)
    if model.get("head", "classification") != "classification":
        raise ConfigError(f"model.head: fine-tuning trains a classifier, got {model['head']!r}")
    model["head"] = "classification"
    model.setdefault("pooling", "mean" if model.get("bidirectional") else "last")
    data["model"] = model


def load_finetune_recipe(path: str | os.PathLike | None, overrides: list[str] = (),
                         base: dict | None = None) -> FinetuneRecipe:
    """Read a recipe YAML (or ``base`` dict), apply ``key=value`` overrides, check it all."""
    data = load_recipe_dict(path, overrides, base)
    _prepare_model(data)
    return build_named_recipe(FinetuneRecipe, data, path)


def _copy_backbone(model, pretrained, source: str) -> None:
    from ..checkpoint import CheckpointError, canonical_state, load_tensors_into

    tensors, _ = canonical_state(pretrained.backbone)
    try:
        load_tensors_into(model.backbone, tensors, f"init_from {source}")
    except CheckpointError as e:
        raise ConfigError(str(e)) from None


def build_finetuning(recipe: FinetuneRecipe):
    """(module, datamodule, genomes, eval_len) for a recipe; checks data against the plan."""
    import lightning as L

    from ..heads import build_model
    from ..tokenizers import tokenizer_from_config
    from ..training.datamodule import StagedDataModule
    from ..training.engine import world_size
    from ..training.module import SeqMambaModule
    from ..training.objectives import ClassificationObjective
    from ..training.plan import StagePlan

    data, t = recipe.data, recipe.trainer
    missing = data.missing()
    if missing:
        raise MissingDataError(missing_species_message(missing))
    # Length warmup here keeps the batch (sequences per step) fixed, as the paper's species
    # experiments do (App. E.3.4); pretraining keeps the tokens per step fixed instead.
    plan = StagePlan(recipe.schedule.stages, t.max_steps, t.tokens_per_step, t.micro_batch_tokens,
                     world_size(t), keep="batch")
    tokenizer = tokenizer_from_config(recipe.model.tokenizer)
    genomes = [SpeciesGenome(entry, data.split, i) for i, entry in enumerate(data.species)]
    source = SpeciesSource(genomes, tokenizer, "train", data.max_n_fraction, data.rc_augment,
                           samples_per_epoch=data.steps_per_epoch * plan.stages[-1].batch_size)
    for st in plan.stages:
        source.size(st.seq_len)  # ConfigError when a species has no window that long
    eval_len = data.eval_seq_len or plan.final_seq_len
    valid = SpeciesWindowDataset(genomes, "val", eval_len, data.val_samples, tokenizer,
                                 data.max_n_fraction, seed=recipe.seed)
    micro_tokens = max(plan.stages[-1].micro_batch * plan.stages[-1].seq_len, 1)
    valid_batch = max(micro_tokens // eval_len, 1)

    L.seed_everything(recipe.seed, verbose=False)  # the same initial head for the same seed
    model = build_model(recipe.model, tokenizer=tokenizer)
    if recipe.init_from:
        _copy_backbone(model, _load_pretrained(recipe.init_from), recipe.init_from)
    module = SeqMambaModule(model, ClassificationObjective(), recipe.optim, recipe.schedule, plan)
    datamodule = StagedDataModule(source, plan, recipe.seed, tokenizer.pad_id, valid, valid_batch,
                                  t.num_workers)
    return module, datamodule, genomes, eval_len


def evaluate_windows(model, dataset: SpeciesWindowDataset, batch_size: int = 32,
                     rc_average: bool = False, device=None):
    """(y_true, y_pred, probs) of a classifier on a fixed window dataset."""
    import numpy as np

    from ..api import resolve_device
    from .classify import window_log_probs

    model = model.to(resolve_device(device)).eval()
    y_true, log_probs = [], []
    for i in range(0, len(dataset), batch_size):
        items = [dataset.sample(j) for j in range(i, min(i + batch_size, len(dataset)))]
        log_probs.append(window_log_probs(model, [it[0] for it in items], rc_average))
        y_true.extend(it[1] for it in items)
    lp = np.concatenate(log_probs)
    return np.asarray(y_true), lp.argmax(1), np.exp(lp)


def score_test(model, genomes, recipe: FinetuneRecipe, eval_len: int, run_dir: Path,
               echo: Callable[[str], None] = print) -> dict:
    """Score the test split, write test_metrics.json + confusion_test.png, return the metrics."""
    from ..metrics import classification_metrics, format_metrics, save_confusion_matrix

    data = recipe.data
    test = SpeciesWindowDataset(genomes, "test", eval_len, data.test_samples, model.tokenizer,
                                data.max_n_fraction, seed=recipe.seed)
    names = data.class_names
    result = {"window": eval_len, "split_methods": {g.name: g.split_method for g in genomes}}
    variants = [("plain", False)] + ([("rc_average", True)] if recipe.eval.rc_average else [])
    for key, rc in variants:
        y, pred, _ = evaluate_windows(model, test, recipe.eval.batch_size, rc_average=rc)
        result[key] = classification_metrics(y, pred, names)
        echo(f"test ({'reverse-complement averaged' if rc else 'forward strand'}, "
             f"{eval_len} bases):")
        echo(format_metrics(result[key]))
    best = result[variants[-1][0]]
    save_confusion_matrix(best["confusion_matrix"], names, run_dir / "confusion_test.png",
                          title=f"{recipe.name}: test windows of {eval_len} bases")
    (run_dir / "test_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def finetune(recipe: FinetuneRecipe, resume_dir: str | os.PathLike | None = None,
             callbacks: list | tuple = (), echo: Callable[[str], None] = print):
    """Train a new run (or continue ``resume_dir``), then score the test split on rank 0.
    Returns (FitResult, test metrics or None)."""
    from ..training.engine import fit, make_run_dir

    module, datamodule, genomes, eval_len = build_finetuning(recipe)
    run_dir = Path(resume_dir) if resume_dir is not None else \
        make_run_dir(recipe.trainer.runs_dir, recipe.name)
    is_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and \
        int(os.environ.get("NODE_RANK", "0")) == 0
    if is_zero:
        dump_recipe(recipe, run_dir / RECIPE_NAME)
        m = recipe.model
        echo(f"{'resuming' if resume_dir is not None else 'run folder'}: {run_dir}")
        echo(f"model: {module.model.num_parameters():,} parameters (d_model {m.d_model}, "
             f"{m.n_layer} layers, {'bidirectional' if m.bidirectional else 'causal'}, "
             f"pooling {m.pooling}); "
             + (f"backbone from {recipe.init_from}" if recipe.init_from else "from scratch"))
        echo("classes: " + ", ".join(f"{g.name} ({g.split_method} split)" for g in genomes))
        for line in module.plan.describe():
            echo(line)
    result = fit(module, datamodule, recipe.trainer, run_dir, resume=resume_dir is not None,
                 callbacks=callbacks, echo=echo)
    metrics = None
    if is_zero:
        metrics = score_test(module.model, genomes, recipe, eval_len, run_dir, echo)
    return result, metrics


def register(app) -> None:
    import typer

    from .cli_support import cli_errors

    @app.command("finetune", context_settings={"allow_extra_args": False})
    def finetune_cmd(
        recipe: str = typer.Argument(..., help="Recipe YAML, e.g. recipes/species-demo.yaml."),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. trainer.max_steps=100."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    ):
        """Fine-tune a classifier (species classification) from a recipe."""
        with cli_errors():
            if resume is not None:
                saved = Path(resume) / RECIPE_NAME
                if not saved.is_file():
                    raise FileNotFoundError(f"{saved}: not found ({resume} is not a run folder)")
                rec = load_finetune_recipe(saved, overrides or [])  # a damaged file: one line
            else:
                rec = load_finetune_recipe(recipe, overrides or [])
            result, _ = finetune(rec, resume_dir=resume, echo=lambda s: typer.echo(s))
        typer.echo(f"done: {result.steps} steps in {result.seconds:.0f}s; model: {result.export}")
