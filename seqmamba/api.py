"""The Python entry points that the ``classify``/``embed``/``probe`` commands are built on.

    import seqmamba
    X = seqmamba.embed("runs/apes/export", "reads.fa")              # (n, d_model) numpy array
    X = seqmamba.embed(model, ["ACGT...", "GGCA..."], pooling="last")
    per_token = seqmamba.embed(model, "reads.fa", pooling="none")    # list of (L_i, d_model)

Sequences are batched after sorting by length (less padding); results come back in input order.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Sequence, Union

import numpy as np
import torch

from .data.fasta import FastaRecord, as_records

__all__ = ["embed", "embed_records", "load_model", "require_dna_model", "resolve_device"]


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """'auto'/None -> the GPU when there is one, else the CPU; anything else as torch reads it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def load_model(model_or_path, device: Union[str, torch.device, None] = None):
    """A model object as is (moved to ``device`` when one is given), or an exported folder
    (``save_pretrained``) loaded onto ``device`` (default: GPU when available). Eval mode."""
    if isinstance(model_or_path, torch.nn.Module):
        model = model_or_path
        if device is not None:
            model = model.to(resolve_device(device))
    else:
        from .checkpoint import load
        path = os.fspath(model_or_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: no such model folder (expected the folder written "
                                    "by save_pretrained / a run's export)")
        model = load(path, device=resolve_device(device))
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the model has no tokenizer (its config.tokenizer is empty); "
                         "cannot turn DNA strings into tokens")
    return model.eval()


def require_dna_model(model, what: str = "this command") -> None:
    """Refuse a model whose tokenizer does not read DNA text (an audio model given to a DNA
    command would otherwise fail deep inside the tokenizer)."""
    tok = getattr(model, "tokenizer", None)
    name = str(getattr(tok, "name", "") or "")
    if tok is not None and not name.startswith("dna"):
        kind = "an audio model (mu-law tokenizer)" if name == "mulaw" else f"a {name!r}-tokenizer model"
        raise ValueError(f"{what} reads DNA sequences, but the model is {kind}; give a DNA model "
                         "(tokenizer dna_char, dna_kmer or dna_byte)")


def _batches(order: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    for i in range(0, len(order), batch_size):
        yield list(order[i:i + batch_size])


@torch.inference_mode()
def embed_records(model, records: Sequence[FastaRecord], pooling: str = "mean", layer: int = -1,
                  batch_size: int = 8, progress: bool = False):
    """Embeddings of ``records`` with a loaded model (see ``embed``)."""
    if pooling not in ("mean", "last", "none"):
        raise ValueError(f"pooling must be 'mean', 'last' or 'none', got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    require_dna_model(model, "embedding")
    tok, device = model.tokenizer, model.device
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(records)), key=lambda i: -len(records[i].sequence))
    out: list = [None] * len(records)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(records), unit="seq", file=sys.stderr, desc="embed", leave=False)
    try:
        for idx in _batches(order, batch_size):
            batch = tok.encode_batch([records[i].sequence for i in idx])
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            hidden = model.embed(ids, attention_mask=mask, pooling=pooling, layer=layer).float().cpu()
            for row, i in enumerate(idx):
                if pooling == "none":
                    out[i] = hidden[row, : int(mask[row].sum())].numpy()
                else:
                    out[i] = hidden[row].numpy()
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    if pooling == "none":
        return out
    return np.stack(out).astype(np.float32, copy=False)


def embed(model_or_path, sequences_or_fasta, pooling: str = "mean", layer: int = -1,
          batch_size: int = 8, device: Union[str, torch.device, None] = None,
          progress: bool = False):
    """Frozen embeddings of DNA sequences.

    model_or_path: a seqmamba model, or the folder written by ``save_pretrained`` / a run export.
    sequences_or_fasta: a FASTA path (plain/.gz/bgzip, any number of records), one sequence
        string, a list of strings, of ``(id, sequence)`` pairs or of ``FastaRecord``.
    pooling: "mean" over tokens, "last" token (natural for a causal model), or "none".
    layer: -1 = final normed hidden states; i = the residual stream after block i.
    Returns a float32 array (n, d_model), or with pooling="none" a list of (L_i, d_model) arrays
    (L_i = tokens of sequence i).
    """
    model = load_model(model_or_path, device)
    records = as_records(sequences_or_fasta)
    return embed_records(model, records, pooling=pooling, layer=layer, batch_size=batch_size,
                         progress=progress)
