"""Classification metrics (scikit-learn) and the confusion-matrix figure (matplotlib, Agg).

``classification_metrics`` returns plain Python numbers so the result can go straight into a
JSON metrics file or a log line; ``save_confusion_matrix`` writes a PNG without a display.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic_io import atomic_output

__all__ = ["classification_metrics", "save_confusion_matrix", "format_metrics"]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the
    confusion matrix (rows = true class, columns = predicted), for labels 0..len(class_names)-1.
    """
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                                 f1_score, precision_recall_fscore_support)

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} "
                         f"and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no predictions to score")
    labels = list(range(len(class_names)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Mean recall over the classes present in y_true: robust to class imbalance.
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def format_metrics(metrics: dict) -> str:
    """A short human-readable table of ``classification_metrics`` output."""
    names = metrics["class_names"]
    width = max(8, *(len(n) for n in names))
    lines = [f"accuracy {metrics['accuracy']:.4f}  balanced {metrics['balanced_accuracy']:.4f}  "
             f"macro-F1 {metrics['macro_f1']:.4f}  (n={metrics['n']})",
             f"{'class':<{width}}  precision  recall  f1      support"]
    for name in names:
        m = metrics["per_class"][name]
        lines.append(f"{name:<{width}}  {m['precision']:.4f}     {m['recall']:.4f}  "
                     f"{m['f1']:.4f}  {m['support']}")
    return "\n".join(lines)


def save_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | os.PathLike, title: str = "Confusion matrix",
                          normalize: bool = True) -> Path:
    """Write the confusion matrix as a PNG (rows = true, columns = predicted). With
    ``normalize`` the colours are row fractions (recall per class); cells show the counts.
    Written to a temporary file and renamed, so a failed plot leaves no partial PNG."""
    import matplotlib
    matplotlib.use("Agg", force=False)  # headless; keeps a backend the caller already chose
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"matrix shape {cm.shape} does not match {k} class names")
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0) if normalize else cm
    size = max(4.0, 0.7 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=120)
    try:
        im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                     label="fraction of true class" if normalize else "count")
        ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), labels=class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        threshold = (shown.max() or 1) / 2
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > threshold else "black")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
