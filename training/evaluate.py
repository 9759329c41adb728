"""Classification metrics on a labelled split (scikit-learn), calibration, and the evaluation
artifacts saved beside every model (``evaluation/``: metrics JSON, confusion matrix and
reliability diagram PNGs, misclassified examples)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, precision_recall_fscore_support

ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks", use 15 equal-width bins
MISCLASSIFIED_KEPT = 200  # rows of misclassified.jsonl (lowest-confidence-on-truth first)


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None,
                           per_class: bool = True) -> dict:
    """Accuracy, macro and weighted precision / recall / F1 (0..1), plus the per-class report.

    Args:
        y_true: true label names, length n.
        y_pred: predicted label names, length n.
        labels: the label set to average over (default: labels present in y_true).
        per_class: include ``per_class`` (scikit-learn's ``classification_report`` as a dict).

    Returns:
        ``{"n", "accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
        "weighted_recall", "weighted_f1"[, "per_class"]}``.

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"need two equally long non-empty label sequences, got {len(y_true)} and {len(y_pred)}")
    labels = sorted(set(y_true)) if labels is None else list(labels)
    out: dict = {"n": len(y_true), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out.update({f"{avg}_precision": float(p), f"{avg}_recall": float(r), f"{avg}_f1": float(f)})
    if per_class:
        out["per_class"] = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) over equal-width bins.

    Args:
        confidence: top-1 probabilities, shape (n,), in [0, 1].
        correct: 1 where the top-1 prediction is right, shape (n,).
        bins: number of equal-width confidence bins.

    Returns:
        (ECE in 0..1, per-bin ``{"lo", "hi", "n", "confidence", "accuracy"}``).
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        conf = float(confidence[mask].mean()) if n else None
        acc = float(correct[mask].mean()) if n else None
        if n:
            ece += n / len(confidence) * abs(acc - conf)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "confidence": conf, "accuracy": acc})
    return float(ece), table


def _plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(6.0, 0.14 * len(labels) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(labels))
    font = 5 if len(labels) > 30 else 8
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_reliability(table: list[dict], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    full = [b for b in table if b["n"]]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in full], [b["accuracy"] for b in full],
           width=1 / len(table), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_predictions(texts: Sequence[str], y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str],
                         out_dir: Path | None = None) -> dict:
    """Every evaluation figure from class probabilities; with ``out_dir``, write the artifacts.

    Args:
        texts: the n evaluated texts.
        y_true: their true labels.
        proba: class probabilities, shape (n, len(labels)).
        labels: label names in the model's output order.
        out_dir: when given, writes ``metrics.json``, ``confusion_matrix.png``,
            ``reliability.png``, ``misclassified.jsonl`` (most confident mistakes first).

    Returns:
        ``classification_metrics`` plus ``ece``, ``calibration`` (bins) and ``misclassified`` (count).
    """
    labels = list(labels)
    idx = proba.argmax(axis=1)
    y_pred = [labels[i] for i in idx]
    conf = proba[np.arange(len(idx)), idx]
    correct = np.array([p == t for p, t in zip(y_pred, y_true)])
    metrics = classification_metrics(list(y_true), y_pred, labels=labels)
    metrics["ece"], metrics["calibration"] = expected_calibration_error(conf, correct)
    wrong = np.flatnonzero(~correct)
    metrics["misclassified"] = int(len(wrong))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        present = sorted(set(y_true) | set(y_pred), key=labels.index)
        _plot_confusion(confusion_matrix(list(y_true), y_pred, labels=present), present, out_dir / "confusion_matrix.png")
        _plot_reliability(metrics["calibration"], metrics["ece"], out_dir / "reliability.png")
        with open(out_dir / "misclassified.jsonl", "w") as fh:
            for i in sorted(wrong, key=lambda i: -conf[i])[:MISCLASSIFIED_KEPT]:
                fh.write(json.dumps({"text": texts[i], "true_label": y_true[i], "predicted": y_pred[i],
                                     "confidence": round(float(conf[i]), 4)}) + "\n")
    return metrics
