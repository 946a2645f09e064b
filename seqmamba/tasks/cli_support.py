"""What every CLI verb shares: one-line user errors and output files that appear only when complete.

``cli_errors`` turns user-facing errors into one ``error: ...`` line and a non-zero exit;
``atomic_output`` writes through a temporary file renamed into place, so a failed run leaves
neither a partial file nor a clobbered old one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from pathlib import Path

import torch

from ..config import ConfigError

# ---- output and CLI plumbing -------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early (ValueError) when ``path`` cannot be an output file: it is a folder, or its
    folder does not exist. Commands call this before any work so a bad --out costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected an output file name")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent}: output folder does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it to ``path`` only when the block
    completes. On any error the temporary file is removed and ``path`` is left untouched."""
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".part")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
