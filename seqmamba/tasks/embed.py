"""``seqmamba embed``: frozen embeddings of every record of a FASTA file, as a .npy matrix.

Writes ``OUT`` (float32, one row per record, in file order) and ``OUT`` with ``.ids.txt`` in
place of ``.npy`` (the record ids, one per line, same order). With ``--pooling none`` the
per-token arrays have different lengths, so ``OUT`` must end in ``.npz``: one array per record,
named ``arr_0``, ``arr_1``, ... in file order. Both files are written to temporary names and
renamed together at the end.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .cli_support import atomic_output, cli_errors

__all__ = ["ids_path_for", "run_embed", "register"]


def ids_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name[: -len(out.suffix)] + ".ids.txt") if out.suffix else \
        out.with_name(out.name + ".ids.txt")


def run_embed(checkpoint: str, fasta: str, out: str, pooling: str = "mean", layer: int = -1,
              batch_size: int = 8, device: str = "auto", progress: bool = True) -> tuple[int, int]:
    """The whole ``embed`` command; returns (records, embedding width)."""
    from ..api import embed_records, load_model
    from ..data.fasta import read_fasta

    suffix = Path(out).suffix.lower()
    if pooling == "none" and suffix != ".npz":
        raise ValueError(f"--pooling none gives one (tokens, d_model) array per record: name the "
                         f"output *.npz, got {out}")
    if pooling != "none" and suffix != ".npy":
        raise ValueError(f"output must end in .npy (or .npz with --pooling none), got {out}")
    records = read_fasta(fasta)
    model = load_model(checkpoint, device)
    emb = embed_records(model, records, pooling=pooling, layer=layer, batch_size=batch_size,
                        progress=progress)
    with atomic_output(out, suffix=suffix) as tmp, \
            atomic_output(ids_path_for(out), suffix=".txt") as tmp_ids:
        with open(tmp, "wb") as fh:
            if pooling == "none":
                np.savez(fh, *emb)
            else:
                np.save(fh, emb)
        tmp_ids.write_text("".join(r.id + "\n" for r in records), encoding="utf-8")
    width = emb[0].shape[-1] if pooling == "none" else emb.shape[1]
    return len(records), int(width)


def register(app) -> None:
    import typer

    @app.command("embed")
    def embed_cmd(
        checkpoint: str = typer.Argument(..., help="Model folder (pretrained or fine-tuned export)."),
        fasta: str = typer.Argument(..., help="Input FASTA: plain, .gz or bgzip."),
        out: str = typer.Option(..., "--out", "-o", help="Output .npy (.npz with --pooling none)."),
        pooling: str = typer.Option("mean", help="mean, last or none (per-token)."),
        layer: int = typer.Option(-1, help="-1 = final normed hidden; i = after block i."),
        batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
        device: str = typer.Option("auto", help="auto (GPU when available), cpu, cuda, ..."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    ):
        """Embed every record of a FASTA file with a frozen model; ids go to OUT.ids.txt."""
        with cli_errors():
            n, d = run_embed(checkpoint, fasta, out, pooling=pooling, layer=layer,
                             batch_size=batch_size, device=device,
                             progress=progress and sys.stderr.isatty())
        typer.echo(f"wrote {n} x {d} embeddings to {out} (ids: {ids_path_for(out)})", err=True)
