"""``seqmamba evaluate``: bits per base and perplexity of a DNA language model on held-out windows.

    seqmamba evaluate runs/hg38-demo-*/export --fasta datasets/human/human_sample.fa \\
        --bed datasets/human/human_sample.bed --split test --seq-len 1024

Windows follow the training rule (``seqmamba.data.windows``): with a BED, the intervals of
``--split`` cut into non-overlapping windows of ``--seq-len`` (an interval shorter than that gives
one window starting at it and one ending at it); without a BED, every record is cut the same way.
Each window is scored on its own: token t is predicted from tokens < t of the same window, the
first token is context only. bits/base = mean negative log2-likelihood per predicted base; its
standard error is taken over windows (as a ratio of per-window sums), treating windows as
independent draws: it says how much the choice of windows moves the number, not how much another
training run would.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Optional

import torch
from torch.utils.data import DataLoader

from ..data.genome import Genome
from ..data.windows import GenomeWindowDataset, evenly_spaced, make_windows
from ..training.objectives import LN2, LMObjective
from ..training.sampling import PadCollate

__all__ = ["evaluate_lm", "autocast_for", "register"]


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU unless fp32 is asked for (CPU always runs fp32)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bases_per_token(tokenizer) -> int:
    # A k-mer tokenizer advances `stride` bases per token; single-base tokenizers one.
    return int(getattr(tokenizer, "stride", 1) or 1)


def ratio_standard_error(num: torch.Tensor, den: torch.Tensor) -> Optional[float]:
    """Standard error of sum(num) / sum(den) over n units (linearised ratio estimator):
    sqrt(n / (n - 1) * sum((num_i - R den_i)^2)) / sum(den); None for fewer than 2 units."""
    n = num.numel()
    if n < 2:
        return None
    num, den = num.double(), den.double()
    ratio = num.sum() / den.sum()
    return float(torch.sqrt(n / (n - 1) * ((num - ratio * den) ** 2).sum()) / den.sum())


@torch.inference_mode()
def evaluate_lm(model, fasta: str, seq_len: int, bed: Optional[str] = None, split: Optional[str] = "test",
                max_windows: Optional[int] = None, batch_size: int = 8, exclude_n: bool = False,
                precision: str = "auto", progress: bool = False) -> dict:
    """Score ``model`` (a MambaLM with tokenizer) on the windows of ``fasta`` (see module doc)."""
    if model.config.head != "lm":
        raise ValueError(f"evaluate needs a language model (head 'lm'), this one has head "
                         f"{model.config.head!r}")
    if seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    tok = model.tokenizer
    genome = Genome(fasta, bed)
    intervals = genome.intervals(split if bed else None)
    windows = evenly_spaced(make_windows(intervals, genome.chrom_lengths, seq_len), max_windows)
    dataset = GenomeWindowDataset(genome, windows, tok)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=PadCollate(tok.pad_id))
    ignore = [tok.token_to_id("N")] if exclude_n else []
    objective = LMObjective(tok.pad_id, ignore)
    device = model.device
    win_nll, win_count = [], []  # per window: summed nll (nats) and scored tokens
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(dataset), unit="win", desc="evaluate", file=sys.stderr, leave=False)
    try:
        for batch in loader:
            ids = batch["input_ids"].to(device)
            with autocast_for(device, precision):
                nll, mask = objective.token_nll(model, ids)
            win_nll.append((nll.double() * mask).sum(1).cpu())
            win_count.append(mask.sum(1).cpu())
            if bar is not None:
                bar.update(ids.shape[0])
    finally:
        if bar is not None:
            bar.close()
    win_nll = torch.cat(win_nll) if win_nll else torch.zeros(0, dtype=torch.float64)
    win_count = torch.cat(win_count) if win_count else torch.zeros(0)
    count = int(win_count.sum())
    if count == 0:
        raise ValueError(f"{fasta}: no base to score at --seq-len {seq_len}")
    nats = float(win_nll.sum()) / count
    se = ratio_standard_error(win_nll, win_count)
    per_base = bases_per_token(tok)
    return {
        "fasta": str(fasta), "bed": None if bed is None else str(bed),
        "split": split if bed else None, "seq_len": seq_len, "windows": len(dataset),
        "tokens_scored": count, "bases_scored": count * per_base,
        "nats_per_token": nats, "bits_per_token": nats / LN2,
        "bits_per_base": nats / LN2 / per_base, "perplexity": math.exp(nats),
        "bits_per_base_se": None if se is None else se / LN2 / per_base,
    }


def _se_text(result: dict) -> str:
    se = result.get("bits_per_base_se")
    return "" if se is None else f" ± {se:.4f} (s.e. over windows)"


def _data_desc(result: dict) -> str:
    return result["fasta"] + (f" ({result['bed']}, split {result['split']})" if result["bed"] else "")


def format_table(result: dict, model_desc: str) -> str:
    rows = [("model", model_desc), ("data", _data_desc(result)),
            ("windows", f"{result['windows']:,} x {result['seq_len']:,} tokens"),
            ("tokens scored", f"{result['tokens_scored']:,}"),
            ("bits/base", f"{result['bits_per_base']:.4f}" + _se_text(result)),
            ("perplexity", f"{result['perplexity']:.4f}")]
    return "\n".join(f"{k:<14} {v}" for k, v in rows)


def parse_lengths(text: str) -> list[int]:
    """``--seq-len`` as one length or a comma list (``1024,4096,16384``)."""
    try:
        lengths = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--seq-len: expected a length or a comma list like 1024,4096, got {text!r}")
    return lengths


def format_length_table(results: list, model_desc: str) -> str:
    """One row per window length: how bits/base changes with the context the model is given."""
    lines = [f"model   {model_desc}", f"data    {_data_desc(results[0])}",
             f"{'seq_len':>9} {'windows':>8} {'tokens scored':>14} {'bits/base':>10} {'± s.e.':>8} "
             f"{'perplexity':>11}"]
    for r in results:
        se = r.get("bits_per_base_se")
        lines.append(f"{r['seq_len']:>9,} {r['windows']:>8,} {r['tokens_scored']:>14,} "
                     f"{r['bits_per_base']:>10.4f} {'-' if se is None else f'{se:.4f}':>8} "
                     f"{r['perplexity']:>11.4f}")
    return "\n".join(lines)


def register(app) -> None:
    import typer

    from ..training.artifacts import describe_source, load_trained_model
    from .cli_support import cli_errors

    @app.command("evaluate")
    def evaluate_cmd(
        model_path: str = typer.Argument(..., metavar="MODEL",
                                         help="Exported model folder, run folder or .ckpt file."),
        fasta: Optional[str] = typer.Option(None, "--fasta", help="Genome or held-out FASTA (plain, gzip, bgzip)."),
        audio_dir: Optional[str] = typer.Option(None, "--audio-dir", help="Audio models: the audio folder (its --split files are scored)."),
        bed: Optional[str] = typer.Option(None, "--bed", help="BED with a split column (chrom start end split)."),
        split: str = typer.Option("test", "--split", help="Which BED split to score."),
        seq_len: str = typer.Option("1024", "--seq-len",
                                    help="Window length in tokens, or a comma list (1024,4096,16384) "
                                         "to score each length: one row per length."),
        max_windows: Optional[int] = typer.Option(None, "--max-windows",
                                                  help="Score at most this many windows, evenly spread."),
        batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
        exclude_n: bool = typer.Option(False, "--exclude-n", help="Do not score N bases."),
        device: str = typer.Option("auto", help="auto (GPU when available), cpu, cuda, cuda:1, ..."),
        precision: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), fp32 or bf16."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ):
        """Bits per base and perplexity of a DNA language model on held-out windows."""
        with cli_errors():  # bad files, options and checkpoints: one line, exit status 1
            if max_windows is not None and max_windows < 1:
                raise ValueError(f"--max-windows must be >= 1, got {max_windows}")
            lengths = parse_lengths(seq_len)
            model = load_trained_model(model_path, device)
            if (model.config.tokenizer or {}).get("name") == "mulaw":  # audio: bits per sample
                from .audio_eval import evaluate_command
                for length in lengths:
                    evaluate_command(model, model_path, audio_dir, length, split, max_windows,
                                     as_json, echo=typer.echo)
                return
            if fasta is None:
                raise ValueError("give --fasta (the held-out DNA to score)")
            # every length is scored before anything is printed: a bad one leaves no partial table
            results = [evaluate_lm(model, fasta, length, bed, split, max_windows, batch_size,
                                   exclude_n, precision, progress=sys.stderr.isatty())
                       for length in lengths]
        desc = f"{model_path} ({describe_source(model)})"
        if len(results) == 1:
            out = (json.dumps({"model": str(model_path), **results[0]}, indent=2) if as_json
                   else format_table(results[0], desc))
        else:
            out = (json.dumps({"model": str(model_path), "results": results}, indent=2) if as_json
                   else format_length_table(results, desc))
        typer.echo(out)
