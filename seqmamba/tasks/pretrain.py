"""``seqmamba pretrain``: train a DNA language model from a recipe.

    seqmamba pretrain recipes/hg38-demo.yaml                       # bundled sample, CPU, minutes
    seqmamba pretrain recipes/hg38.yaml trainer.devices=4          # the paper setup on 4 GPUs
    seqmamba pretrain recipes/hg38.yaml trainer.max_steps=100 model.d_model=64
    seqmamba pretrain --resume runs/hg38-20250101-120000           # continue where it stopped

``key=value`` overrides change any recipe field; a resumed run uses its saved recipe.yaml (plus
any overrides, e.g. a larger trainer.max_steps). Exit status: 0 done, 1 a data/runtime problem
(missing file, non-finite loss, interruption), 2 a recipe/override error.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["register"]


def _split_args(recipe: Optional[str], overrides: list[str], resume: Optional[str]):
    # With --resume the recipe comes from the run folder, so a first positional "a=b" is an override.
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides = [recipe, *overrides]
        recipe = None
    if recipe is None and resume is None:
        raise ValueError("give a recipe (e.g. recipes/hg38-demo.yaml) or --resume RUN_FOLDER")
    return recipe, overrides


def register(app) -> None:
    import typer

    @app.command("pretrain")
    def pretrain_cmd(
        recipe: Optional[str] = typer.Argument(None, help="Recipe YAML, e.g. recipes/hg38.yaml."),
        overrides: Optional[list[str]] = typer.Argument(
            None, help="key=value overrides, e.g. trainer.max_steps=100 model.d_model=128."),
        resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN_FOLDER",
                                             help="Continue a run from its last checkpoint."),
    ):
        """Pretrain a DNA language model (next-base prediction) from a recipe."""
        from ..config import ConfigError
        from ..training.engine import RUN_DIR_ENV
        from ..training.module import NonFiniteLossError
        from ..training.pretrain import load_run_recipe, pretrain
        from ..training.recipe import load_pretrain_recipe

        def fail(message: str, code: int = 1):
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code)

        try:
            recipe_path, extra = _split_args(recipe, list(overrides or []), resume)
            if resume is not None:
                if recipe_path is not None:
                    typer.echo(f"note: --resume uses {resume}/recipe.yaml; {recipe_path} is not read",
                               err=True)
                run_recipe = load_run_recipe(resume, extra)
            else:
                run_recipe = load_pretrain_recipe(recipe_path, extra)
        except ConfigError as e:
            fail(str(e), 2)
        except (ValueError, OSError) as e:
            fail(str(e), 2 if isinstance(e, ValueError) else 1)

        try:
            result = pretrain(run_recipe, resume_dir=resume, echo=typer.echo)
        except ConfigError as e:
            fail(str(e), 2)
        except NonFiniteLossError as e:
            run = os.environ.get(RUN_DIR_ENV, "")
            fail(f"{e}; the last good checkpoint is in {run}/checkpoints" if run else str(e))
        except (ValueError, OSError) as e:  # MissingDataError, GenomeError, FastaError, ...
            fail(str(e))
        except (KeyboardInterrupt, SystemExit) as e:
            if isinstance(e, SystemExit) and e.code in (0, None):
                raise
            run = resume or os.environ.get(RUN_DIR_ENV)
            hint = f"; continue with: seqmamba pretrain --resume {run}" if run else ""
            fail(f"interrupted{hint}")

        if not result.is_global_zero:
            return
        valid = result.valid
        summary = f"done: {result.steps} steps in {result.seconds:.0f} s"
        if result.train:
            summary += f"; train loss {result.train['loss']:.4f} ({result.train['bits']:.4f} bits/token)"
        if valid:
            summary += f"; valid {valid['val_bits']:.4f} bits/token (ppl {valid['val_ppl']:.3f})"
        typer.echo(summary)
        typer.echo(f"model:      {result.export}")
        typer.echo(f"checkpoint: {result.checkpoint}")
        typer.echo(f"log, plot:  {result.run_dir / 'metrics.csv'}, {result.run_dir / 'curves.png'}")
