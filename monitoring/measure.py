"""Everything measured on one window before its signals are read: :func:`measure` runs the embedding
test, computes feedback accuracy and the label-free estimates, and builds the window's Evidently
report (or computes the report's numbers without it), all from one :class:`WindowContext`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneloop.monitoring.drift_report import build_snapshot, evidently_values
from tuneloop.monitoring.drift_stats import auc_threshold, embedding_test
from tuneloop.monitoring.performance import FeedbackPerformance, estimate_accuracy, feedback_performance
from tuneloop.monitoring.window_context import WindowContext, labelled_rows

ESTIMATORS = ("atc", "cbpe")  # every label-free estimator of performance.estimate_accuracy: all are reported


@dataclass(frozen=True)
class EmbeddingTest:
    """The embedding drift test of one window: ``statistic`` of ``DriftConfig.embedding_method``, its
    p-value and the statistic's cutoff at ``DriftConfig.alpha`` (``drift_stats.embedding_test``)."""

    statistic: float
    p_value: float
    cutoff: float


@dataclass(frozen=True, eq=False)
class FeedbackFigures:
    """Accuracy from feedback: the window's (``performance``, all labelled window rows) and the
    reference's (all labelled reference rows: ``reference_correct`` of ``reference_labelled``)."""

    performance: FeedbackPerformance
    reference_correct: int
    reference_labelled: int

    @property
    def reference_accuracy(self) -> float | None:
        """Share of labelled reference rows predicted correctly; None without labelled reference rows."""
        return self.reference_correct / self.reference_labelled if self.reference_labelled else None


@dataclass(frozen=True)
class Estimates:
    """Label-free accuracy estimates (all None / empty without a calibration): ``value`` and ``sd`` of
    ``DriftConfig.estimator`` on the window, ``reference`` the same on the reference, ``by_method``
    every estimator's value on the window."""

    value: float | None = None
    sd: float | None = None
    reference: float | None = None
    by_method: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Measurements:
    """Everything measured on one window before the signals are read: the Evidently report's values
    (``drift_report.build_snapshot``, or ``evidently_values`` without a report, then ``snapshot`` is
    None), the text test's AUC cutoff, the embedding test, feedback accuracy and the estimates."""

    values: Mapping[str, Any]
    snapshot: Any
    text_cutoff: float
    embedding: EmbeddingTest | None
    feedback: FeedbackFigures
    estimates: Estimates


def run_embedding_test(ctx: WindowContext) -> EmbeddingTest | None:
    """The embedding drift test on the sampled rows' embeddings; None without embeddings."""
    if not ctx.has_embeddings:
        return None
    cfg = ctx.config
    return EmbeddingTest(*embedding_test(ctx.reference_embeddings, ctx.current_embeddings, method=cfg.embedding_method,
                                         alpha=cfg.alpha, n_permutations=cfg.embedding_permutations))


def text_cutoff(ctx: WindowContext) -> float:
    """ROC AUC cutoff of the text test: ``DriftConfig.text_auc_threshold`` for ``abs_text_content_drift``
    when set, else the (1 - alpha) quantile of the AUC's null for the sample sizes."""
    cfg = ctx.config
    if cfg.text_method == "abs_text_content_drift" and cfg.text_auc_threshold is not None:
        return cfg.text_auc_threshold
    return auc_threshold(cfg.alpha, len(ctx.ref), len(ctx.cur))


def feedback_figures(ctx: WindowContext) -> FeedbackFigures:
    """Feedback accuracy of every labelled window row, and the reference's accuracy on its labelled rows."""
    ref_lab = labelled_rows(ctx.reference)
    ref_ok = int((ref_lab["true_label"].astype(str) == ref_lab["label"].astype(str)).sum()) if len(ref_lab) else 0
    performance = feedback_performance(ctx.current, ctx.reference, ctx.config.top_intents)
    return FeedbackFigures(performance, ref_ok, len(ref_lab))


def accuracy_estimates(ctx: WindowContext) -> Estimates:
    """ATC and CBPE accuracy estimates from every row's confidence (``performance.estimate_accuracy``)."""
    cal = ctx.calibration
    if cal is None:
        return Estimates()
    conf, ref_conf = (f["confidence"].astype(float).to_numpy() for f in (ctx.current, ctx.reference))
    by_method = {m: estimate_accuracy(cal, conf, m)[0] for m in ESTIMATORS}
    value, sd = estimate_accuracy(cal, conf, ctx.config.estimator)
    return Estimates(value, sd, estimate_accuracy(cal, ref_conf, ctx.config.estimator)[0], by_method)


def measure(ctx: WindowContext, metadata: dict[str, str] | None = None, with_report: bool = True) -> Measurements:
    """Run every test of one window: the embedding test, feedback accuracy, estimates, and one Evidently report.

    Args:
        ctx: the window's context.
        metadata: extra str -> str metadata for the snapshot, after the window's own figures.
        with_report: False computes the report's numbers without Evidently's Report (no snapshot).

    Returns:
        The Measurements the signal functions of :mod:`tuneloop.monitoring.drift` read.
    """
    from sklearn.exceptions import ConvergenceWarning

    cfg = ctx.config
    emb, cut = run_embedding_test(ctx), text_cutoff(ctx)
    feedback, est = feedback_figures(ctx), accuracy_estimates(ctx)
    perf = feedback.performance
    meta = {"n_current": str(len(ctx.current)), "n_labels": str(perf.n_labels), "accuracy": f"{perf.accuracy}",
            "accuracy_ci": f"{perf.accuracy_ci}", "macro_f1": f"{perf.macro_f1}",
            "reference_accuracy": f"{feedback.reference_accuracy}", "estimated_accuracy": f"{est.value}",
            **(metadata or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Evidently's SGD has max_iter=50
        if with_report:
            embeddings = (ctx.reference_embeddings, ctx.current_embeddings, emb.cutoff) if emb else None
            snapshot, values = build_snapshot(ctx.ref, ctx.cur, cfg, cut, embeddings, ctx.vocab, meta)
        else:
            snapshot, values = None, evidently_values(ctx.ref, ctx.cur, cfg, cut, ctx.vocab)
    return Measurements(values, snapshot, cut, emb, feedback, est)
