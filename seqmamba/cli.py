"""The `seqmamba` command: a thin typer layer over the Python API.

Each task module in ``seqmamba.tasks`` exposes ``register(app)`` adding its verb(s); this file only
assembles them, so the CLI and the API stay one implementation.
"""
from __future__ import annotations

import importlib
import json
import platform
import sys

import typer

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mamba models for DNA and audio: pretrain, fine-tune, classify, embed, score, generate.")

# Task modules that add verbs; each must define register(app: typer.Typer).
TASK_MODULES: list[str] = ["generate", "classify", "embed", "probe", "finetune", "pretrain", "evaluate", "score", "data_cmd", "audio_eval"]


def _version_callback(value: bool):
    if value:
        typer.echo(f"seqmamba {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                      help="Print the version and exit.")):
    """seqmamba command line."""


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Versions, and whether the fused CUDA/Triton kernels are usable here."""
    import torch

    from .kernels import describe

    facts = {"seqmamba": __version__, "python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton
        facts["triton"] = triton.__version__
    except Exception:
        facts["triton"] = None
    try:
        facts.update({f"kernels_{k}": v for k, v in describe().items()})
    except ValueError as err:  # a bad SEQMAMBA_KERNELS value
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        typer.echo(f"{key:22s} {value}")


for _name in TASK_MODULES:
    importlib.import_module(f"seqmamba.tasks.{_name}").register(app)


def run():  # pragma: no cover - console entry alias
    sys.exit(app())
