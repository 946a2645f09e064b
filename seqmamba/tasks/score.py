"""``seqmamba score``: log-likelihood of every record of a FASTA file under a DNA language model.

    seqmamba score runs/hg38-demo-*/export reads.fa --out scores.tsv --both-strands

Output (TSV, natural log): ``id  length  scored  total_loglik  mean_loglik`` and, with
``--both-strands``, ``total_loglik_rc  mean_loglik_rc`` for the reverse complement. Token t is
predicted from all tokens before it in the record; the first token has no context and is not
scored (``scored`` = tokens scored, ``mean_loglik`` = total / scored). Records are batched by
length; a long record is run in chunks of ``--chunk`` tokens that carry the recurrent state
across, so any length fits in memory and gives the same result as one pass. All records are
scored before anything is written: a bad input gives one error line and no output.
"""
from __future__ import annotations

import csv
import io
import sys
from typing import Optional, Sequence

import torch

from ..data.fasta import FastaRecord, read_fasta
from .evaluate import autocast_for

__all__ = ["score_records", "score_batch", "write_scores", "register"]


def _check_causal_lm(model) -> None:
    cfg = model.config
    if cfg.head != "lm":
        raise ValueError(f"score needs a language model (head 'lm'), this one has head {cfg.head!r}")
    if cfg.bidirectional:
        raise ValueError("score needs a causal language model; this one is bidirectional (each "
                         "position sees the future, so its likelihoods are not a sequence's)")
    from ..api import require_dna_model
    require_dna_model(model, "score")


def score_batch(model, ids: torch.Tensor, lengths: torch.Tensor, chunk: int,
                precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p(token_t | tokens_<t) over t = 1..length-1, tokens scored) per row of the
    right-padded batch ``ids`` (B, L)."""
    B, L = ids.shape
    device = ids.device
    total = torch.zeros(B, dtype=torch.float64, device=device)
    cache = model.allocate_cache(B) if L > chunk else None
    prev_last = None  # logits of the previous chunk's last position: they predict this chunk's first
    pos = torch.arange(L, device=device)
    for start in range(0, L, chunk):
        x = ids[:, start:start + chunk]
        with autocast_for(device, precision):
            logits = model(x, cache=cache) if cache is not None else model(x)
        logp = torch.log_softmax(logits.float(), dim=-1)
        if prev_last is None:  # first chunk: its first token is context only
            targets, tpos = x[:, 1:], pos[start + 1:start + x.shape[1]]
        else:
            logp = torch.cat([prev_last[:, None], logp], dim=1)
            targets, tpos = x, pos[start:start + x.shape[1]]
        prev_last = logp[:, -1]
        logp = logp[:, :-1]
        picked = logp.gather(-1, targets[..., None])[..., 0]
        valid = tpos[None, :] < lengths[:, None]
        total += (picked.double() * valid).sum(1)
    scored = (lengths - 1).clamp(min=0)
    return total.cpu(), scored.cpu()


@torch.inference_mode()
def score_records(model, records: Sequence[FastaRecord], batch_size: int = 8,
                  both_strands: bool = False, chunk: int = 65536, precision: str = "auto",
                  progress: bool = False) -> list[dict]:
    """Score records (see module doc); returns one dict per record, in input order."""
    _check_causal_lm(model)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    tok, device = model.tokenizer, model.device
    encoded = [tok.encode(r.sequence) for r in records]
    strands = [("", encoded)]
    if both_strands:
        strands.append(("_rc", [tok.reverse_complement_ids(ids) for ids in encoded]))
    rows = [{"id": r.id, "length": len(r.sequence), "scored": max(len(ids) - 1, 0)}
            for r, ids in zip(records, encoded)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records) * len(strands), unit="seq", desc="score", file=sys.stderr,
                   leave=False)
    try:
        for suffix, seqs in strands:
            order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                lengths = torch.tensor([len(seqs[i]) for i in idx], device=device)
                ids = torch.full((len(idx), int(lengths.max())), tok.pad_id, dtype=torch.long,
                                 device=device)
                for row, i in enumerate(idx):
                    ids[row, :len(seqs[i])] = seqs[i].to(device)
                total, scored = score_batch(model, ids, lengths, chunk, precision)
                for row, i in enumerate(idx):
                    n = int(scored[row])
                    rows[i][f"total_loglik{suffix}"] = float(total[row])
                    rows[i][f"mean_loglik{suffix}"] = float(total[row]) / n if n else float("nan")
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return rows


def write_scores(rows: list[dict], out, both_strands: bool) -> None:
    columns = ["id", "length", "scored", "total_loglik", "mean_loglik"]
    if both_strands:
        columns += ["total_loglik_rc", "mean_loglik_rc"]
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([f"{row[c]:.6f}" if isinstance(row[c], float) else row[c] for c in columns])


def register(app) -> None:
    import typer

    from ..training.artifacts import load_trained_model
    from .cli_support import atomic_output, cli_errors

    @app.command("score")
    def score_cmd(
        model_path: str = typer.Argument(..., metavar="MODEL",
                                         help="Exported model folder, run folder or .ckpt file."),
        fasta: str = typer.Argument(..., help="Input FASTA (plain, gzip or bgzip), any number of records."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Output TSV [default: stdout]."),
        both_strands: bool = typer.Option(False, "--both-strands",
                                          help="Also score the reverse complement of each record."),
        batch_size: int = typer.Option(8, "--batch-size", help="Records per forward pass."),
        chunk: int = typer.Option(65536, "--chunk", help="Tokens per forward pass for long records."),
        device: str = typer.Option("auto", help="auto (GPU when available), cpu, cuda, cuda:1, ..."),
        precision: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), fp32 or bf16."),
    ):
        """Per-record total and mean log-likelihood (nats) under a DNA language model."""
        with cli_errors():  # bad input: one line, exit status 1, nothing written
            records = read_fasta(fasta)
            model = load_trained_model(model_path, device)
            rows = score_records(model, records, batch_size, both_strands, chunk, precision,
                                 progress=sys.stderr.isatty())
            if out is None:
                buffer = io.StringIO()
                write_scores(rows, buffer, both_strands)
                sys.stdout.write(buffer.getvalue())
            else:
                with atomic_output(out) as tmp, open(tmp, "w", newline="") as fh:
                    write_scores(rows, fh, both_strands)
        if out is not None:
            typer.echo(f"wrote {len(rows)} records to {out}", err=True)
