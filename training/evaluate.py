"""Classification metrics on a labelled split, from scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import accuracy_score, classification_report, precision_recall_fscore_support


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None,
                           per_class: bool = True) -> dict:
    """Accuracy and macro precision / recall / F1 (0..1), plus the per-class report.

    Args:
        y_true: true label names, length n.
        y_pred: predicted label names, length n.
        labels: the label set to average over (default: labels present in y_true).
        per_class: include ``per_class`` (scikit-learn's ``classification_report`` as a dict).

    Returns:
        ``{"n", "accuracy", "macro_precision", "macro_recall", "macro_f1"[, "per_class"]}``.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"need two equally long non-empty label sequences, got {len(y_true)} and {len(y_pred)}")
    labels = sorted(set(y_true)) if labels is None else list(labels)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    out = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_precision": float(p), "macro_recall": float(r), "macro_f1": float(f)}
    if per_class:
        out["per_class"] = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    return out
