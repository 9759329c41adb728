"""Drift signals of one traffic window against the champion's reference sample, in ONE Evidently report.

Six signals, each a section of the report and each with a p-value, so that the policy can correct
for testing them together (statistics in :mod:`tuneloop.monitoring.drift_stats`):

* ``text_drift``: Evidently's text drift (``ValueDrift`` on the text column): a TF-IDF + SGD domain
  classifier separating reference rows from window rows; value = its held-out ROC AUC, p-value from
  the AUC's Mann-Whitney null (what Evidently's bootstrap percentile estimates, 95 % of its cost).
* ``descriptor_drift``: Evidently text descriptors -- ``TextLength``, ``NonLetterCharacterPercentage``
  and the share of words out of the tokenizer's vocabulary (``CustomColumnDescriptor``; Evidently's own
  OOV descriptor needs an NLTK download) -- each K-S tested; value = min p-value x 3 (Bonferroni).
* ``embedding_drift``: one of Evidently's embedding drift methods on the champion's own sentence
  embeddings (method chosen by measurement, ``DriftConfig.embedding_method``; its report section is our
  ``EmbeddingsDriftScore`` metric, without Evidently's t-SNE map); p-value by permutation (or the AUC
  null for ``model``).
* ``label_drift``: predicted-label distribution, a permutation chi-square registered as an Evidently
  stattest (Evidently's default chi-square fires on 36-55 % of same-distribution 100-200 row windows
  over 77 intents); the Jensen-Shannon distance goes into ``details``.
* ``confidence_drift``: two-sample K-S on the top-1 confidence (Rabanser et al. 2019, "Failing Loudly":
  tests on the softmax outputs detected shift best).
* ``accuracy_drop``: reference accuracy minus feedback accuracy; one-sided Fisher exact test.

Plus numbers that are not tests: the feedback accuracy (``MeanValue`` of a 0/1 ``correct`` column) and
the label-free accuracy estimates, CBPE (``MeanValue`` of the calibrated confidence) and ATC
(``MeanValue`` of the 0/1 "confidence above the ATC threshold"), see :mod:`tuneloop.monitoring.performance`.

How: :func:`~tuneloop.monitoring.window_context.window_context` checks and samples the two frames once
(a :class:`~tuneloop.monitoring.window_context.WindowContext`), :func:`~tuneloop.monitoring.measure.measure`
runs the tests and the Evidently report (:class:`~tuneloop.monitoring.measure.Measurements`), one function
per signal below reads its signal from both (``SIGNAL_FUNCTIONS``), and :func:`assemble_report` puts them
in ``ALL_SIGNALS`` order into the WindowReport. :func:`compute_signals` runs the three steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.monitoring.drift_report import build_snapshot, evidently_values, save_report  # noqa: F401 (re-exported)
from tuneloop.monitoring.drift_stats import (
    auc_p_value,
    js_distance,
    label_permutation_test,  # noqa: F401  (label_permutation_test re-exported)
)
from tuneloop.monitoring.measure import Measurements, measure
from tuneloop.monitoring.performance import Calibration
from tuneloop.monitoring.signals import (  # noqa: F401
    ACCURACY,
    ALL_SIGNALS,
    CONFIDENCE,
    DESCRIPTOR_NAMES,
    DESCRIPTORS,
    EMBEDDING,
    LABEL,
    MIN_ROWS,
    TEXT,
    DriftConfig,
    SignalResult,
    WindowReport,
)
from tuneloop.monitoring.window_context import (  # noqa: F401  (REQUIRED_COLUMNS re-exported)
    REQUIRED_COLUMNS,
    CurrentEmbeddings,
    WindowContext,
    window_context,
)

if TYPE_CHECKING:  # pandas is imported inside the functions: importing this module (or policy) stays cheap
    import pandas as pd


def load_reference(path: Path) -> pd.DataFrame:
    """Read a model's ``reference.jsonl`` (rows ``{"text", "label", "confidence", "true_label"}``).

    Raises:
        FileNotFoundError: no such file.
    """
    import pandas as pd

    return pd.read_json(Path(path), lines=True, dtype=False)


# One function per signal, each ``(ctx, m) -> SignalResult``: ``ctx`` the window (WindowContext), ``m`` its
# Measurements. They compute nothing expensive (the tests ran in ``measure``) and raise nothing.


def text_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``text_drift``: value = the domain classifier's held-out ROC AUC (0..1), threshold = its cutoff
    (``measure.text_cutoff``), p-value from the AUC's Mann-Whitney null for the sample sizes."""
    auc = m.values["text"]
    return SignalResult(name=TEXT, method=f"domain classifier ROC AUC ({ctx.config.text_method})", value=auc,
                        threshold=m.text_cutoff, fired=auc > m.text_cutoff,
                        p_value=auc_p_value(auc, len(ctx.ref), len(ctx.cur)),
                        evidently_fired=m.values["verdicts"].get("text"))


def descriptor_drift(ctx: WindowContext, m: Measurements, names: tuple[str, ...] = DESCRIPTOR_NAMES,
                     name: str = DESCRIPTORS,
                     method: str = "K-S on length, OOV share, non-letter share (min p x 3)") -> SignalResult:
    """``descriptor_drift``: value = p-value = the smallest of the descriptors' p-values (``m.values[d]`` for
    ``d`` in ``names``; classification: the three text descriptors' K-S p-values) times their number
    (Bonferroni, capped at 1), threshold = alpha; per-descriptor p-values and means (``m.values["means"]``)
    in ``details``. ``name`` and ``method`` label the result (generation's ``reply_drift`` passes its own)."""
    p_values = {d: m.values[d] for d in names}
    corrected = min(1.0, len(names) * min(p_values.values()))
    details = {d: {"p_value": p_values[d], "reference_mean": m.values["means"][d][0],
                   "current_mean": m.values["means"][d][1]} for d in names}
    return SignalResult(name=name, method=method, value=corrected, threshold=ctx.config.alpha,
                        fired=corrected < ctx.config.alpha, p_value=corrected, details=details)


def embedding_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``embedding_drift``: value = the statistic of ``DriftConfig.embedding_method`` (ROC AUC, MMD^2 or
    distance), threshold = its cutoff at alpha; value and p-value None ("not computed") without embeddings."""
    method = f"embeddings {ctx.config.embedding_method}"
    details = {"evidently_score": m.values["embedding"]} if "embedding" in m.values else {}
    if m.embedding is None:
        return SignalResult(name=EMBEDDING, method=method + " (not computed: no embeddings)", value=None,
                            threshold=float("nan"), fired=False, p_value=None, details=details)
    return SignalResult(name=EMBEDDING, method=method, value=m.embedding.statistic, threshold=m.embedding.cutoff,
                        fired=bool(m.embedding.p_value < ctx.config.alpha), p_value=m.embedding.p_value,
                        details=details)


def label_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``label_drift``: value = p-value of the permutation chi-square test of the predicted labels,
    threshold = alpha; the Jensen-Shannon distance (0..1) of the two label distributions in ``details``."""
    p = m.values["label"]
    return SignalResult(name=LABEL, method="permutation chi-square p-value", value=p, threshold=ctx.config.alpha,
                        fired=p < ctx.config.alpha, p_value=p, evidently_fired=m.values["verdicts"].get("label"),
                        details={"js_distance": js_distance(ctx.ref["label"], ctx.cur["label"])})


def confidence_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``confidence_drift``: value = the two-sample K-S p-value of the top-1 confidences, threshold = alpha;
    both samples' mean confidences in ``details``."""
    p = m.values["confidence"]
    return SignalResult(name=CONFIDENCE, method="K-S p-value", value=p, threshold=ctx.config.alpha,
                        fired=p < ctx.config.alpha, p_value=p, evidently_fired=m.values["verdicts"].get("confidence"),
                        details={"reference_mean": float(ctx.ref["confidence"].mean()),
                                 "current_mean": float(ctx.cur["confidence"].mean())})


def accuracy_drop(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``accuracy_drop``: value = reference accuracy minus feedback accuracy (-1..1), threshold =
    ``max_accuracy_drop``, p-value of a one-sided Fisher exact test on the correct/wrong counts; value
    and p-value None without labelled rows on either side. Fires only on ``min_labels`` labels or more."""
    from scipy.stats import fisher_exact

    cfg, fb = ctx.config, m.feedback
    perf, ref_acc = fb.performance, fb.reference_accuracy
    p = drop = None
    if ref_acc is not None and perf.n_labels:  # H1: window accuracy < reference accuracy
        ok = round(perf.accuracy * perf.n_labels)
        table = [[ok, perf.n_labels - ok], [fb.reference_correct, fb.reference_labelled - fb.reference_correct]]
        p = float(fisher_exact(table, alternative="less").pvalue)
        drop = ref_acc - perf.accuracy
    fired = bool(drop is not None and perf.n_labels >= cfg.min_labels and drop >= cfg.max_accuracy_drop
                 and p < cfg.alpha)
    details = {"n_labels": perf.n_labels, "accuracy": perf.accuracy, "reference_accuracy": ref_acc,
               "accuracy_ci": perf.accuracy_ci, "min_labels": cfg.min_labels}
    return SignalResult(name=ACCURACY, method="reference accuracy - feedback accuracy (Fisher exact)", value=drop,
                        threshold=cfg.max_accuracy_drop, fired=fired, p_value=p, details=details)


SIGNAL_FUNCTIONS: dict[str, Callable[[WindowContext, Measurements], SignalResult]] = {
    TEXT: text_drift, DESCRIPTORS: descriptor_drift, EMBEDDING: embedding_drift, LABEL: label_drift,
    CONFIDENCE: confidence_drift, ACCURACY: accuracy_drop,
}


def assemble_report(ctx: WindowContext, m: Measurements, started: float) -> WindowReport:
    """The WindowReport of one measured window: its signals in ``ALL_SIGNALS`` order and its figures.

    Args:
        ctx: the window's context.
        m: its measurements (:func:`measure`).
        started: Unix seconds when the computation started (``computed_at``; ``seconds`` runs from it).
    """
    perf, est = m.feedback.performance, m.estimates
    return WindowReport(signals=[SIGNAL_FUNCTIONS[name](ctx, m) for name in ALL_SIGNALS], n_current=len(ctx.current),
                        n_reference=len(ctx.ref), n_labels=perf.n_labels, accuracy=perf.accuracy,
                        macro_f1=perf.macro_f1, reference_accuracy=m.feedback.reference_accuracy,
                        accuracy_ci=perf.accuracy_ci, estimated_accuracy=est.value, estimated_accuracy_sd=est.sd,
                        reference_estimated_accuracy=est.reference, estimates=est.by_method, intents=perf.intents,
                        computed_at=started, seconds=time.time() - started, snapshot=m.snapshot,
                        current_positions=ctx.current_positions, current_embeddings=ctx.current_embeddings,
                        reference_embeddings=ctx.reference_embeddings)


def compute_signals(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig | None = None,
                    metadata: dict[str, str] | None = None, *, reference_embeddings: np.ndarray | None = None,
                    current_embeddings: CurrentEmbeddings | None = None, calibration: Calibration | None = None,
                    vocab: set[str] | None = None, with_report: bool = True) -> WindowReport:
    """Build one Evidently report of ``current`` vs ``reference`` and read the six signals from it.

    Args:
        reference: the champion's reference sample, columns ``text, label, confidence[, true_label]``
            (rows of ``reference.jsonl``); subsampled to ``config.max_reference_rows``.
        current: one traffic window (``TrafficLog.read_window``), same columns; ``true_label`` is None
            where no feedback came. Drift tests use at most ``config.max_current_rows`` rows.
        config: computation settings; defaults to ``DriftConfig()``.
        metadata: extra str -> str metadata stored on the snapshot (e.g. model tag, window seqs).
        reference_embeddings: the champion's embeddings of the rows of ``reference``, shape (n_ref, d).
        current_embeddings: the same for ``current``, shape (n_cur, d), or a function that embeds a list
            of texts (called only on the rows the tests use, so at most ``max_current_rows``).
            Without both, ``embedding_drift`` is reported as not computed (p-value None).
        calibration: the champion's confidence calibration; without it no estimated accuracy.
        vocab: the tokenizer's vocabulary for the OOV descriptor; default: the shipped MiniLM's.
        with_report: False skips Evidently's Report (no snapshot) and computes the same numbers
            directly (``drift_report.evidently_values``; benchmarks judging thousands of windows).

    Returns:
        WindowReport with the signals in ``ALL_SIGNALS`` order and the snapshot.

    Raises:
        ValueError: a frame lacks a column, has fewer than ``MIN_ROWS`` rows, or embeddings do not
            match their frame's length.
    """
    started = time.time()
    ctx = window_context(reference, current, config or DriftConfig(), reference_embeddings=reference_embeddings,
                         current_embeddings=current_embeddings, calibration=calibration, vocab=vocab)
    return assemble_report(ctx, measure(ctx, metadata, with_report), started)
