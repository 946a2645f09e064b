"""``seqmamba probe``: how linearly separable are the classes in a frozen model's embeddings?

Embeds labelled sequences with the frozen model, standardises the features and fits a
scikit-learn ``LogisticRegression``. Reports stratified k-fold cross-validated accuracy on the
training set and, with ``--test``, the accuracy (and per-class metrics) of a model fitted on all
of the training set.

Labelled data, for ``--train`` and ``--test``:
* a folder: one FASTA per class, the class being the file name without .fa/.fasta/.fna and .gz
  (``human.fa.gz`` -> ``human``); every record is one example;
* a TSV with a header row holding the columns ``sequence`` and ``label`` (others are ignored).
``--window N`` cuts every sequence into non-overlapping N-base windows (the tail shorter than N is
dropped, a sequence shorter than N is kept whole); ``--max-per-class`` keeps at most that many
examples per class, evenly spread, so a genome FASTA becomes a balanced set of windows.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.fasta import FastaRecord, read_fasta
from ..tokenizers.base import TokenizerError
from ..tokenizers.dna_alphabet import dna_codes
from .cli_support import atomic_output, check_output_path, cli_errors

__all__ = ["LabelledSet", "load_labelled", "fit_probe", "run_probe", "format_probe", "register"]

_FASTA_EXTS = (".fa", ".fasta", ".fna", ".fas")


class LabelledSet:
    """Parallel lists of sequences and string labels."""

    def __init__(self, sequences: list[str], labels: list[str], source: str):
        self.sequences, self.labels, self.source = sequences, labels, source

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def _class_name(path: Path) -> Optional[str]:
    name = path.name
    for gz in (".gz", ".bgz"):
        if name.lower().endswith(gz):
            name = name[: -len(gz)]
    for ext in _FASTA_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return None


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    if _class_name(path):
        raise ValueError(f"{path}: one FASTA file has no labels; give a folder with one FASTA "
                         "per class, or a TSV with 'sequence' and 'label' columns")
    try:
        return _parse_tsv(path)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text TSV (binary or compressed file?)") from None


def _parse_tsv(path: Path) -> tuple[list[str], list[str]]:
    seqs, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        cols = reader.fieldnames or []
        if "sequence" not in cols or "label" not in cols:
            raise ValueError(f"{path}: a TSV needs a header row with 'sequence' and 'label' "
                             f"columns, found {cols[:6]}")
        for lineno, row in enumerate(reader, 2):
            seq, label = (row.get("sequence") or "").strip(), (row.get("label") or "").strip()
            if not seq or not label:
                raise ValueError(f"{path}:{lineno}: empty sequence or label")
            try:
                dna_codes(seq)
            except TokenizerError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            seqs.append(seq)
            labels.append(label)
    if not seqs:
        raise ValueError(f"{path}: no rows")
    return seqs, labels


def _windows(seq: str, window: Optional[int]) -> list[str]:
    if not window or len(seq) <= window:
        return [seq]
    return [seq[i:i + window] for i in range(0, len(seq) - window + 1, window)]


def _evenly(items: list, k: Optional[int]) -> list:
    if k is None or len(items) <= k:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def load_labelled(source: str | Path, window: Optional[int] = None,
                  max_per_class: Optional[int] = None) -> LabelledSet:
    """Read a class folder or a TSV (see module doc)."""
    if window is not None and window < 1:
        raise ValueError(f"--window must be >= 1, got {window}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"--max-per-class must be >= 1, got {max_per_class}")
    path = Path(source)
    by_class: dict[str, list[str]] = {}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _class_name(p))
        if not files:
            raise ValueError(f"{path}: no FASTA files (*.fa, *.fasta, *.fna, optionally .gz) in "
                             "this folder; expected one per class")
        for f in files:
            cls = _class_name(f)
            if cls in by_class:
                raise ValueError(f"{path}: two files for class {cls!r}")
            by_class[cls] = [w for r in read_fasta(f) for w in _windows(r.sequence, window)]
    elif path.is_file():
        seqs, labels = _read_tsv(path)
        for s, lab in zip(seqs, labels):
            by_class.setdefault(lab, []).extend(_windows(s, window))
    else:
        raise ValueError(f"{path}: no such file or folder")
    if len(by_class) < 2:
        raise ValueError(f"{path}: needs at least two classes, found {sorted(by_class)}")
    seqs, labels = [], []
    for cls in sorted(by_class):
        kept = _evenly(by_class[cls], max_per_class)
        seqs.extend(kept)
        labels.extend([cls] * len(kept))
    return LabelledSet(seqs, labels, str(path))


def _make_probe(seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))


def _check_cv(cv: int) -> None:
    if cv == 1 or cv < 0:
        raise ValueError(f"--cv must be >= 2 folds, or 0 to skip cross-validation, got {cv}")


def fit_probe(X_train: np.ndarray, y_train: Sequence[str], X_test: Optional[np.ndarray] = None,
              y_test: Optional[Sequence[str]] = None, cv: int = 5, seed: int = 0) -> dict:
    """Cross-validated (and optionally held-out) accuracy of a logistic-regression probe.

    ``cv`` folds are stratified; it is lowered to the size of the smallest class when needed
    (at least 2 examples per class are required for cross-validation). ``cv=0`` skips it.
    """
    _check_cv(cv)
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from ..metrics import classification_metrics

    classes = sorted(set(y_train))
    y_tr = np.array([classes.index(c) for c in y_train])
    result: dict = {"classes": classes, "n_train": int(len(y_tr)), "dim": int(X_train.shape[1]),
                    "chance": float(np.bincount(y_tr).max() / len(y_tr))}
    folds = min(cv, int(np.bincount(y_tr).min()))
    if folds >= 2:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        scores = cross_val_score(_make_probe(seed), X_train, y_tr, cv=splitter, scoring="accuracy")
        result.update(cv_folds=folds, cv_accuracy=float(scores.mean()),
                      cv_accuracy_std=float(scores.std()))
    else:
        result.update(cv_folds=0, cv_accuracy=None, cv_accuracy_std=None,
                      cv_skipped="--cv 0" if cv == 0 else "a class has fewer than 2 examples")
    if X_test is not None:
        unknown = sorted(set(y_test) - set(classes))
        if unknown:
            raise ValueError(f"test labels not in the training set: {unknown}")
        probe = _make_probe(seed).fit(X_train, y_tr)
        y_te = np.array([classes.index(c) for c in y_test])
        metrics = classification_metrics(y_te, probe.predict(X_test), classes)
        result.update(n_test=int(len(y_te)), test_accuracy=metrics["accuracy"], test=metrics)
    return result


def run_probe(checkpoint: str, train: str, test: Optional[str] = None, pooling: str = "mean",
              layer: int = -1, window: Optional[int] = None, max_per_class: Optional[int] = None,
              cv: int = 5, batch_size: int = 8, device: str = "auto", seed: int = 0,
              progress: bool = False) -> dict:
    from ..api import embed_records, load_model

    if pooling not in ("mean", "last"):
        raise ValueError(f"--pooling must be 'mean' or 'last' for a probe, got {pooling!r}")
    _check_cv(cv)  # before the embedding work, not after it
    train_set = load_labelled(train, window, max_per_class)
    test_set = load_labelled(test, window, max_per_class) if test else None
    model = load_model(checkpoint, device)

    def embed(ds: LabelledSet) -> np.ndarray:
        recs = [FastaRecord(f"s{i}", f"s{i}", s) for i, s in enumerate(ds.sequences)]
        return embed_records(model, recs, pooling=pooling, layer=layer, batch_size=batch_size,
                             progress=progress)

    X_tr = embed(train_set)
    X_te = embed(test_set) if test_set is not None else None
    result = fit_probe(X_tr, train_set.labels, X_te, test_set.labels if test_set else None,
                       cv=cv, seed=seed)
    result.update(pooling=pooling, layer=layer, window=window, train_source=train_set.source,
                  test_source=test_set.source if test_set else None)
    return result


def format_probe(result: dict) -> str:
    lines = [f"classes: {', '.join(result['classes'])}  (train n={result['n_train']}, "
             f"dim={result['dim']}, majority-class baseline {result['chance']:.3f})"]
    if result["cv_accuracy"] is not None:
        lines.append(f"cross-validated accuracy ({result['cv_folds']}-fold): "
                     f"{result['cv_accuracy']:.4f} +- {result['cv_accuracy_std']:.4f}")
    else:
        reason = result.get("cv_skipped", "a class has fewer than 2 examples")
        lines.append(f"cross-validation skipped: {reason}")
    if "test_accuracy" in result:
        from ..metrics import format_metrics
        lines.append(f"test ({result['n_test']} examples):")
        lines.append(format_metrics(result["test"]))
    return "\n".join(lines)


def register(app) -> None:
    import typer

    @app.command("probe")
    def probe_cmd(
        checkpoint: str = typer.Argument(..., help="Model folder (pretrained or fine-tuned export)."),
        train: str = typer.Option(..., "--train", help="Folder of per-class FASTA files, or TSV (sequence, label)."),
        test: Optional[str] = typer.Option(None, "--test", help="Held-out set, same formats."),
        pooling: str = typer.Option("mean", help="mean or last."),
        layer: int = typer.Option(-1, help="-1 = final normed hidden; i = after block i."),
        window: Optional[int] = typer.Option(None, help="Cut sequences into non-overlapping windows of this many bases."),
        max_per_class: Optional[int] = typer.Option(None, "--max-per-class", help="Keep at most this many examples per class."),
        cv: int = typer.Option(5, help="Cross-validation folds (0 = skip)."),
        batch_size: int = typer.Option(8, "--batch-size"),
        device: str = typer.Option("auto"),
        seed: int = typer.Option(0),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the metrics as JSON."),
        confusion: Optional[str] = typer.Option(None, "--confusion", help="Confusion-matrix PNG of the test set."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ):
        """Linear probe (logistic regression) on frozen embeddings: CV and test accuracy."""
        with cli_errors():
            if confusion and not test:
                raise ValueError("--confusion needs --test")
            if out:  # checked now: the PNG below must not be written when the JSON cannot be
                check_output_path(out)
            result = run_probe(checkpoint, train, test, pooling=pooling, layer=layer, window=window,
                               max_per_class=max_per_class, cv=cv, batch_size=batch_size,
                               device=device, seed=seed, progress=progress and sys.stderr.isatty())
            if confusion:
                from ..metrics import save_confusion_matrix
                save_confusion_matrix(result["test"]["confusion_matrix"], result["classes"],
                                      confusion, title="Linear probe, test set")
            if out:
                with atomic_output(out, suffix=".json") as tmp:
                    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        typer.echo(format_probe(result))
