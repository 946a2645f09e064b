"""``seqmamba classify``: class probabilities for every record of a FASTA file.

Records longer than ``--window`` bases are cut into windows ``--stride`` apart at most (the first
window starts at the record's start, the last ends at its end, the others are evenly spaced and
placed symmetrically, so a record and its reverse complement get mirror-image windows). A record
no longer than the window is one window. Window predictions are combined into one per record:

* ``--aggregate logprob`` (default): the mean of the windows' log-probabilities, renormalised
  (a product of experts: each window is independent evidence, so confident windows dominate);
* ``--aggregate prob``: the mean of the windows' probabilities (robust to a few wild windows).

``--rc-average`` averages the logits of each window and of its reverse complement before the
softmax; the prediction is then the same for a sequence and its reverse complement.

Output: a TSV written to a temporary file and renamed when complete, so an error (bad record,
out of memory, Ctrl-C) never leaves a partial file. Columns: ``id length n_windows predicted
prob_<class>...``; with ``--per-window``: ``id window start end predicted prob_<class>...``.
"""
from __future__ import annotations

import csv
import sys
from collections import deque
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..data.fasta import FastaRecord, iter_fasta
from ..tokenizers.dna_alphabet import reverse_complement
from .cli_support import atomic_output, check_output_path, cli_errors  # noqa: F401 (re-exported)

__all__ = ["window_starts", "window_log_probs", "aggregate_log_probs", "classify_records",
           "class_names_of", "atomic_output", "check_output_path", "cli_errors", "AGGREGATIONS"]

AGGREGATIONS = ("logprob", "prob")
DEFAULT_WINDOW = 1024


# ---- windows -----------------------------------------------------------------------------------

def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start positions of the windows covering a record of ``length`` bases (see module doc).

    Neighbouring starts are at most ``stride`` apart and the set is symmetric
    (s in starts <=> length - window - s in starts), which is what makes reverse-complement
    averaging give identical record predictions for a sequence and its reverse complement.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if length <= window:
        return [0]
    span = length - window
    n = -(-span // stride) + 1
    if n % 2 and span % 2:
        n += 1  # an odd count needs a centre window at span/2, which is not an integer here
    first_half = [(i * span) // (n - 1) for i in range((n + 1) // 2)]
    second_half = [span - s for s in reversed(first_half[: n // 2])]
    return first_half + second_half


# ---- model calls -------------------------------------------------------------------------------

def class_names_of(model) -> list[str]:
    names = getattr(model.config, "class_names", None)
    return list(names) if names else [f"class{i}" for i in range(model.config.num_classes)]


def check_classifier(model) -> None:
    if getattr(model.config, "head", None) != "classification":
        raise ValueError(
            f"the checkpoint is a {getattr(model.config, 'head', '?')!r} model, not a classifier; "
            "fine-tune one first (seqmamba finetune recipes/species-demo.yaml)")
    from ..api import require_dna_model
    require_dna_model(model, "classify")


@torch.inference_mode()
def window_log_probs(model, seqs: Sequence[str], rc_average: bool = False) -> np.ndarray:
    """(n, num_classes) float64 log-probabilities of the sequences ``seqs`` (one batch)."""
    batch_seqs = list(seqs) + ([reverse_complement(s) for s in seqs] if rc_average else [])
    enc = model.tokenizer.encode_batch(batch_seqs)
    device = model.device
    logits = model(enc["input_ids"].to(device),
                   attention_mask=enc["attention_mask"].to(device)).float()
    if rc_average:
        n = len(seqs)
        logits = (logits[:n] + logits[n:]) / 2
    return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()


def aggregate_log_probs(log_probs: np.ndarray, method: str = "logprob") -> np.ndarray:
    """Combine (n_windows, C) window log-probabilities into one (C,) probability vector."""
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {method!r}")
    lp = np.asarray(log_probs, dtype=np.float64)
    if method == "logprob":
        mean = lp.mean(axis=0)
        mean -= mean.max()
        p = np.exp(mean)
    else:
        p = np.exp(lp).mean(axis=0)
    return p / p.sum()


class _Pending:
    __slots__ = ("record", "starts", "log_probs")

    def __init__(self, record: FastaRecord, starts: list[int]):
        self.record, self.starts, self.log_probs = record, starts, []


def classify_records(model, records: Iterable[FastaRecord], window: int = DEFAULT_WINDOW,
                     stride: Optional[int] = None, batch_size: int = 16,
                     rc_average: bool = False, aggregate: str = "logprob",
                     per_window: bool = False, progress: bool = False) -> Iterator[dict]:
    """Stream predictions: one dict per record (``id, length, n_windows, probs``) or, with
    ``per_window``, one per window (``id, window, start, end, probs``), in input order.

    Windows of consecutive records share batches, so many short records run as fast as one
    long one.
    """
    check_classifier(model)
    stride = window if stride is None else stride
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    window_starts(window, window, stride)  # validates window and stride before any work

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit="win", file=sys.stderr, desc="classify", leave=False)

    pending: deque[_Pending] = deque()
    jobs: list[tuple[_Pending, int]] = []

    def run_batch() -> Iterator[dict]:
        seqs = [p.record.sequence[s:s + window] for p, s in jobs]
        lp = window_log_probs(model, seqs, rc_average)
        for (p, _), row in zip(jobs, lp):
            p.log_probs.append(row)
        if bar is not None:
            bar.update(len(jobs))
        jobs.clear()
        while pending and len(pending[0].log_probs) == len(pending[0].starts):
            yield from _finish(pending.popleft())

    def _finish(p: _Pending) -> Iterator[dict]:
        rec, lp = p.record, np.stack(p.log_probs)
        if per_window:
            for i, (s, row) in enumerate(zip(p.starts, lp)):
                probs = np.exp(row)
                yield {"id": rec.id, "window": i, "start": s,
                       "end": min(s + window, len(rec.sequence)), "probs": probs / probs.sum()}
        else:
            yield {"id": rec.id, "length": len(rec.sequence), "n_windows": len(p.starts),
                   "probs": aggregate_log_probs(lp, aggregate)}

    try:
        for rec in records:
            p = _Pending(rec, window_starts(len(rec.sequence), window, stride))
            pending.append(p)
            for s in p.starts:
                jobs.append((p, s))
                if len(jobs) == batch_size:
                    yield from run_batch()
        if jobs:
            yield from run_batch()
    finally:
        if bar is not None:
            bar.close()



def _fmt(p: float) -> str:
    return f"{p:.6g}"


def write_predictions(rows: Iterable[dict], class_names: Sequence[str], out, per_window: bool) -> int:
    """Write prediction rows as TSV to an open text file; returns the number of rows."""
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    lead = ["id", "window", "start", "end"] if per_window else ["id", "length", "n_windows"]
    writer.writerow(lead + ["predicted"] + [f"prob_{c}" for c in class_names])
    n = 0
    for row in rows:
        probs = row["probs"]
        writer.writerow([row[k] for k in lead] + [class_names[int(np.argmax(probs))]]
                        + [_fmt(p) for p in probs])
        n += 1
    return n


def run_classify(checkpoint: str, fasta: str, out: str, window: int = DEFAULT_WINDOW,
                 stride: Optional[int] = None, batch_size: int = 16, rc_average: bool = False,
                 aggregate: str = "logprob", per_window: bool = False, device: str = "auto",
                 progress: bool = True) -> int:
    """The whole ``classify`` command; returns the number of rows written."""
    from ..api import load_model

    # Open the input before loading the model: a bad file fails fast and cheaply.
    records = iter_fasta(fasta)
    first = next(records)
    model = load_model(checkpoint, device)
    check_classifier(model)
    names = class_names_of(model)

    def all_records():
        yield first
        yield from records

    rows = classify_records(model, all_records(), window=window, stride=stride,
                            batch_size=batch_size, rc_average=rc_average, aggregate=aggregate,
                            per_window=per_window, progress=progress)
    if out == "-":
        return write_predictions(rows, names, sys.stdout, per_window)
    with atomic_output(out) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            n = write_predictions(rows, names, fh, per_window)
    return n


def register(app) -> None:
    import typer

    @app.command("classify")
    def classify_cmd(
        checkpoint: str = typer.Argument(..., help="Fine-tuned classifier folder (a run's export)."),
        fasta: str = typer.Argument(..., help="Input FASTA: plain, .gz or bgzip; any number of records."),
        out: str = typer.Option(..., "--out", "-o", help="Output TSV ('-' = stdout)."),
        window: int = typer.Option(DEFAULT_WINDOW, help="Window length in bases; longer records are split."),
        stride: Optional[int] = typer.Option(None, help="Largest step between windows [default: window]."),
        batch_size: int = typer.Option(16, "--batch-size", help="Windows per forward pass."),
        rc_average: bool = typer.Option(False, "--rc-average",
                                        help="Average logits of each window and its reverse complement."),
        aggregate: str = typer.Option("logprob", help="Combine windows by mean 'logprob' or mean 'prob'."),
        per_window: bool = typer.Option(False, "--per-window", help="One row per window instead of per record."),
        device: str = typer.Option("auto", help="auto (GPU when available), cpu, cuda, cuda:1, ..."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    ):
        """Predict the class (e.g. species) of every record in a FASTA file."""
        with cli_errors():
            n = run_classify(checkpoint, fasta, out, window=window, stride=stride,
                             batch_size=batch_size, rc_average=rc_average, aggregate=aggregate,
                             per_window=per_window, device=device,
                             progress=progress and sys.stderr.isatty())
        if out != "-":
            typer.echo(f"wrote {n} rows to {out}", err=True)
