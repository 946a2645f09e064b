"""Output files that appear only when complete: write to a temporary name beside the target,
rename into place on success, remove the temporary on failure. Every writer of user-visible
files (CLI outputs, plots, audio clips, run logs) goes through ``atomic_output``."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
