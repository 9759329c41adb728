"""The Evidently side of generation's drift signals: one Report per window, one section per test.

Sections: prompt text drift (``ValueDrift`` on ``text``, Evidently's domain classifier, as for
classification), prompt embedding drift (our ``EmbeddingsDriftScore``, :mod:`tuneloop.monitoring.drift_report`),
three reply descriptors -- ``reply_length`` (characters, K-S), ``stop_rate`` (finish reason ``stop`` or
not) and ``placeholder_rate`` (the reply holds a ``{{placeholder}}``, the pattern of
:mod:`tuneloop.training.gen_metrics`), the two shares tested with the permutation chi-square that
classification's label test uses -- the model's confidence (``exp(mean token log-probability)``, K-S;
K-S is invariant to the monotone ``exp``, so this is the test of the log-probabilities themselves), and
the live ROUGE-L against corrected replies (``MeanValue``).

Evidently descriptors used only where they run offline: the reply descriptors are
``CustomColumnDescriptor`` s (Evidently's public extension point). Left out: ``Sentiment`` and
``OOVWordsPercentage`` (they download NLTK data), ``SemanticSimilarity`` and ``BERTScore`` (they load
models from the Hugging Face hub), the LLM judges (they call a remote API). ``TextLength`` is not used
for replies: it counts a missing reply (the reference's prompt-only rows) as length 0, and a missing
value must stay missing (Evidently's drift tests drop missing values, so the reference's prompt-only
rows count in the prompt tests only).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitoring.drift_report import report_values, with_embeddings
from tuneloop.monitoring.evidently_bridge import label_stattest
from tuneloop.monitoring.measure import (
    Estimates,
    FeedbackFigures,
    Measurements,
    run_embedding_test,
    text_cutoff,
)
from tuneloop.monitoring.performance import FeedbackPerformance
from tuneloop.monitoring.signals import REPLY_DESCRIPTOR_NAMES, DriftConfig
from tuneloop.monitoring.window_context import WindowContext
from tuneloop.training.gen_metrics import PLACEHOLDER

if TYPE_CHECKING:
    import pandas as pd

REPLY_LENGTH, STOP_RATE, PLACEHOLDER_RATE = REPLY_DESCRIPTOR_NAMES
YES, NO = "1", "0"  # the two categories of the stop and placeholder descriptors


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _length(reply: object) -> float:
    return np.nan if _missing(reply) else float(len(str(reply)))


def _stops(reason: object) -> float:
    return np.nan if _missing(reason) else float(reason == "stop")


def _holds_placeholder(reply: object) -> float:
    return np.nan if _missing(reply) else float(bool(PLACEHOLDER.search(str(reply))))


# descriptor -> (the column it reads, its value per row)
DESCRIPTOR_SOURCES = {REPLY_LENGTH: ("reply", _length), STOP_RATE: ("finish_reason", _stops),
                      PLACEHOLDER_RATE: ("reply", _holds_placeholder)}


def reply_descriptors(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The reply descriptors of each row, NaN where the row has no reply (or no finish reason).

    Args:
        frame: rows with ``reply`` and ``finish_reason`` (missing: None or NaN).

    Returns:
        ``reply_length`` (characters), ``stop_rate`` (1.0 where the finish reason is ``stop``, else 0.0)
        and ``placeholder_rate`` (1.0 where the reply holds a ``{{placeholder}}``), each shape (len(frame),).
    """
    return {name: np.array([value(v) for v in frame[column].tolist()], dtype=float)
            for name, (column, value) in DESCRIPTOR_SOURCES.items()}


def _descriptor(name: str):
    """An Evidently ``CustomColumnDescriptor`` computing descriptor ``name`` of :func:`reply_descriptors`
    from its column: numerical for the length, categorical ``1``/``0`` (missing: None) for the shares."""
    from evidently import ColumnType
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import CustomColumnDescriptor

    column, value = DESCRIPTOR_SOURCES[name]

    def compute(col: DatasetColumn) -> DatasetColumn:
        import pandas as pd

        values = [value(v) for v in col.data.tolist()]
        if name == REPLY_LENGTH:
            return DatasetColumn(type=ColumnType.Numerical, data=pd.Series(values, index=col.data.index, dtype=float))
        cats = [None if np.isnan(v) else (YES if v else NO) for v in values]
        return DatasetColumn(type=ColumnType.Categorical, data=pd.Series(cats, index=col.data.index, dtype=object))

    return CustomColumnDescriptor(column, compute, alias=name)


def _present(ref: pd.DataFrame, cur: pd.DataFrame, column: str) -> bool:
    """Both frames hold at least one value in ``column`` (Evidently refuses an empty column)."""
    return bool(ref[column].notna().any() and cur[column].notna().any())


def build_generation_snapshot(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftConfig, text_cut: float,
                              embeddings: tuple[np.ndarray, np.ndarray, float] | None,
                              metadata: dict[str, str]) -> tuple[Any, dict]:
    """Run the Evidently report of one generation window.

    Args:
        ref, cur: the sampled frames of a :class:`WindowContext` built with generation's extra columns
            (``text``, ``confidence``, ``reply``, ``finish_reason``, ``rouge_l``; missing values None/NaN).
        cfg: the DriftConfig (levels, methods, permutations).
        text_cut: ROC AUC cutoff of the prompt text drift test.
        embeddings: (reference (n_ref, d), current (n_cur, d), cutoff) of the prompts, or None.
        metadata: str -> str stored on the snapshot.

    Returns:
        (snapshot, values): ``values`` maps ``text`` (AUC), each reply descriptor name and
        ``confidence`` (p-values; a section whose column is empty on either side is left out),
        ``embedding`` (with embeddings), ``mean_rouge_l`` (with corrected replies in the window),
        ``means`` to per-descriptor (reference, current) means of the sampled rows, and ``verdicts``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, ValueDrift

    live_rouge = bool(cur["rouge_l"].notna().any())  # a column without values makes Evidently divide by 0
    cols = ["text", "reply", "finish_reason", "confidence"] + (["rouge_l"] if live_rouge else [])
    ref, cur = ref[cols].reset_index(drop=True), cur[cols].reset_index(drop=True)
    for frame in (ref, cur):
        for c in ("reply", "finish_reason"):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    text_threshold = 1 - cfg.alpha if cfg.text_method == "perc_text_content_drift" else text_cut
    desc_alpha = cfg.alpha / len(REPLY_DESCRIPTOR_NAMES)
    metrics: list = [ValueDrift(column="text", method=cfg.text_method, threshold=text_threshold)]
    emb_def = None
    if embeddings is not None:
        ref, cur, emb_def, metric = with_embeddings(ref, cur, embeddings, cfg.embedding_method)
        metrics.append(metric)
    descriptors = []
    for name in REPLY_DESCRIPTOR_NAMES:  # K-S on the length, the permutation chi-square on the two shares
        if _present(ref, cur, DESCRIPTOR_SOURCES[name][0]):
            descriptors.append(_descriptor(name))
            method = "ks" if name == REPLY_LENGTH else label_stattest(cfg.label_permutations)
            metrics.append(ValueDrift(column=name, method=method, threshold=desc_alpha))
    if _present(ref, cur, "confidence"):
        metrics.append(ValueDrift(column="confidence", method="ks", threshold=cfg.alpha))
    if live_rouge:
        metrics.append(MeanValue(column="rouge_l", tests=[]))  # live ROUGE-L vs corrected replies
    dd = DataDefinition(text_columns=["text", "reply"], categorical_columns=["finish_reason"],
                        numerical_columns=["confidence"] + (["rouge_l"] if live_rouge else []), embeddings=emb_def)
    cur_ds = Dataset.from_pandas(cur, data_definition=dd, descriptors=descriptors)
    ref_ds = Dataset.from_pandas(ref, data_definition=dd, descriptors=descriptors)
    snapshot = Report(metrics, include_tests=True, metadata=metadata, tags=["tuneloop", "generation"]).run(cur_ds,
                                                                                                        ref_ds)
    values = report_values(snapshot, metrics)
    rd, cd = reply_descriptors(ref), reply_descriptors(cur)
    values["means"] = {d: (_mean(rd[d]), _mean(cd[d])) for d in REPLY_DESCRIPTOR_NAMES}
    return snapshot, values


def _mean(values: np.ndarray) -> float | None:
    """Mean of the non-NaN values; None when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else None


def measure_generation(ctx: WindowContext, metadata: dict[str, str] | None = None) -> Measurements:
    """Run every drift test of one generation window: the prompt embedding test and the Evidently report.

    Args:
        ctx: the window's context (sampled frames with generation's extra columns, see
            :func:`build_generation_snapshot`).
        metadata: extra str -> str metadata for the snapshot, after the window's size.

    Returns:
        Measurements for the signal functions (``feedback`` holds no labels: generation's feedback
        figures are :class:`tuneloop.monitoring.gen_quality.ReplyQuality`; no accuracy estimates).
    """
    from sklearn.exceptions import ConvergenceWarning

    emb, cut = run_embedding_test(ctx), text_cutoff(ctx)
    meta = {"n_current": str(len(ctx.current)), "task": "generation", **(metadata or {})}
    embeddings = (ctx.reference_embeddings, ctx.current_embeddings, emb.cutoff) if emb else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Evidently's SGD has max_iter=50
        snapshot, values = build_generation_snapshot(ctx.ref, ctx.cur, ctx.config, cut, embeddings, meta)
    return Measurements(values, snapshot, cut, emb, FeedbackFigures(FeedbackPerformance(n_labels=0), 0, 0),
                        Estimates())
