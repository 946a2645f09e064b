"""What every CLI verb shares: one-line user errors and output files that appear only when complete.

``cli_errors`` turns user-facing errors into one ``error: ...`` line and a non-zero exit;
``atomic_output`` (from ``seqmamba.atomic_io``) writes through a temporary file renamed into
place, so a failed run leaves neither a partial file nor a clobbered old one.
"""
from __future__ import annotations

import contextlib
import os
import traceback

import torch

from ..atomic_io import atomic_output, check_output_path  # noqa: F401 (re-exported)
from ..config import ConfigError


@contextlib.contextmanager
def cli_errors():
    """Turn user-facing errors (bad input file, bad option, unusable checkpoint) into one
    'error: ...' line on stderr and exit status 1 (2 for a bad recipe/config).
    SEQMAMBA_DEBUG=1 shows the traceback."""
    import typer

    try:
        yield
    except (ValueError, OSError) as e:  # FastaError, ConfigError, CheckpointError, missing files
        if os.environ.get("SEQMAMBA_DEBUG"):
            traceback.print_exc()
        msg = str(e)
        if isinstance(e, OSError) and e.filename and e.strerror:
            # "[Errno 2] No such file or directory: 'x'" -> "x: No such file or directory"
            msg = f"{e.filename}: {e.strerror}"
        typer.echo(f"error: {msg}", err=True)
        # A bad recipe/config is a usage error (exit 2, as `pretrain` and typer itself use).
        raise typer.Exit(2 if isinstance(e, ConfigError) else 1) from None
    except torch.cuda.OutOfMemoryError:
        typer.echo("error: out of GPU memory; lower --batch-size or --window", err=True)
        raise typer.Exit(1) from None
