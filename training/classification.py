"""Text classification as a :class:`tuneloop.training.task.Task`: the first task behind the seam.

Each method is a thin call into the modules that do the work (``data``, ``train``, ``artifacts``,
``predict``, ``evaluate``); nothing here changes how a classifier is trained, saved or served.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class ClassificationTask:
    """Intent classification of short texts (Banking77 with the shipped all-MiniLM-L6-v2).

    Rows have columns ``text`` and ``label``; a predictor is a
    :class:`tuneloop.training.predict.Classifier`; the gate compares macro F1 (Banking77 has 77
    intents of unequal support, and macro F1 weighs the rare ones as much as the common ones).
    """

    name = "classification"
    primary_metric = "macro_f1"
    guard_metric = "accuracy"  # the gate's second check: may not fall by more than GateConfig.max_accuracy_drop
    guard_higher_is_better = True

    def with_config(self, cfg) -> ClassificationTask:
        """This task (its evaluation has no settings of its own)."""
        return self

    def load_splits(self, cfg):
        """``tuneloop.training.data.load_splits_for(cfg)``."""
        from tuneloop.training.data import load_splits_for

        return load_splits_for(cfg)

    def fine_tune(self, cfg, splits, extra_train: pd.DataFrame | None = None):
        """``tuneloop.training.train.fine_tune``."""
        from tuneloop.training.train import fine_tune

        return fine_tune(cfg, splits, extra_train=extra_train)

    def save(self, home, cfg, splits, result, extra_meta: dict | None = None,
             reference_rows: pd.DataFrame | None = None) -> str:
        """``tuneloop.training.artifacts.save_result`` with the task recorded in the metadata."""
        from tuneloop.training.artifacts import save_result
        from tuneloop.training.task import TASK_KEY

        return save_result(home, cfg, splits, result, extra_meta={TASK_KEY: self.name, **(extra_meta or {})},
                           reference_rows=reference_rows)

    def load_predictor(self, model_dir: Path | str, device: str | None = None, precision: str | None = None):
        """``Classifier.load(model_dir, device=device, quantize=precision)``."""
        from tuneloop.training.predict import Classifier

        return Classifier.load(model_dir, device=device, quantize=precision)

    def evaluate(self, predictor, rows: pd.DataFrame) -> dict[str, float]:
        """Accuracy, macro/weighted precision, recall and F1 of ``predictor`` on ``rows`` (text, label).

        Raises:
            ValueError: ``rows`` is empty.
        """
        from tuneloop.training.evaluate import classification_metrics

        if rows.empty:
            raise ValueError("evaluation needs at least one row")
        pred, _ = predictor.predict(rows["text"].tolist())
        return classification_metrics(rows["label"].tolist(), pred, per_class=False)

    def summary(self, result) -> str:
        """One line of a training result's test figures (``tuneloop train`` prints it)."""
        m = result.test_metrics
        return (f"test n={m['n']} accuracy={m['accuracy']:.4f} macro_precision={m['macro_precision']:.4f} "
                f"macro_recall={m['macro_recall']:.4f} macro_f1={m['macro_f1']:.4f} "
                f"({result.epochs_run:g} epochs, {result.seconds:.0f} s, "
                f"{result.extra.get('examples_per_second', 0):.0f} examples/s)")

    def warm_up(self, predictor):
        """One prediction per batch shape the service uses (:func:`tuneloop.serving.inference.warm_up`
        does the serving-specific passes on top)."""
        return predictor.predict_proba(["warm up"])
