"""Monitoring reply generation (:class:`tuneloop.monitoring.tasks.MonitoringTask`): six signals over the
traffic window against the champion's reference sample (``reference.jsonl``: prompts, the model's
replies with their finish reasons and mean token log-probabilities, reference replies where known).

* ``text_drift``: the prompts, Evidently's domain classifier (:func:`tuneloop.monitoring.drift.text_drift`);
* ``embedding_drift``: the prompts' all-MiniLM-L6-v2 sentence embeddings (the shipped encoder,
  :func:`tuneloop.monitoring.embeddings.load_sentence_encoder`; a causal LM has no sentence encoder of
  its own), :func:`tuneloop.monitoring.drift.embedding_drift`;
* ``reply_drift``: reply length (K-S), stop rate and placeholder rate (permutation chi-square), min
  p x 3 (:func:`tuneloop.monitoring.drift.descriptor_drift` over :data:`REPLY_DESCRIPTOR_NAMES`);
* ``confidence_drift``: the model's mean token log-probability of its replies (K-S,
  :func:`tuneloop.monitoring.drift.confidence_drift` on ``exp(mean_logprob)``, the serving log's confidence);
* ``rouge_drop`` and ``bad_rating_rise``: quality from feedback (:mod:`tuneloop.monitoring.gen_quality`).

The statistics are classification's (:mod:`tuneloop.monitoring.drift`, :mod:`tuneloop.monitoring.drift_stats`),
read from one Evidently report per window (:mod:`tuneloop.monitoring.gen_report`, which also says which
of Evidently's descriptors are left out because they need downloads). A generation row of the traffic
log has ``text`` (the prompt), ``label`` (its finish reason), ``confidence`` (``exp(mean_logprob)``),
``reply``, ``finish_reason``, ``mean_logprob``, ``true_reply`` and ``rating``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.monitoring.drift import confidence_drift, descriptor_drift, embedding_drift, text_drift
from tuneloop.monitoring.embeddings import embed_texts, load_sentence_encoder
from tuneloop.monitoring.gen_quality import ReplyQuality, bad_rating_rise, reply_quality, rouge_drop, row_rouge
from tuneloop.monitoring.gen_report import measure_generation, reply_descriptors
from tuneloop.monitoring.measure import Measurements
from tuneloop.monitoring.signals import (
    CONFIDENCE,
    EMBEDDING,
    GENERATION_SIGNALS,
    RATING,
    REPLY,
    REPLY_DESCRIPTOR_NAMES,
    ROUGE,
    TEXT,
    DriftConfig,
    SignalResult,
    WindowReport,
)
from tuneloop.monitoring.tasks import ChampionView
from tuneloop.monitoring.window_context import CurrentEmbeddings, WindowContext, window_context

if TYPE_CHECKING:
    import pandas as pd

# Columns the drift tests' samples keep besides text, label, confidence (window_context's extra_columns).
EXTRA_COLUMNS = ("reply", "finish_reason", "mean_logprob", "true_reply", "rating", "rouge_l")


def generation_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A traffic window or a reference sample as the generation signals read it.

    Args:
        frame: rows with ``text`` (the prompt) and any of ``reply``, ``finish_reason`` (else ``label``),
            ``mean_logprob`` (else ``log(confidence)``), ``true_reply``, ``rating``; absent ones are None.

    Returns:
        Columns ``text``, ``label`` (the finish reason, "" when unknown), ``confidence``
        (``exp(mean_logprob)``, NaN when unknown), ``reply``, ``finish_reason``, ``mean_logprob``,
        ``true_reply``, ``rating`` and ``rouge_l`` (:func:`tuneloop.monitoring.gen_quality.row_rouge`), same index.
    """
    import pandas as pd

    def column(name: str, fallback: pd.Series | None = None) -> pd.Series:
        if name in frame.columns:
            return frame[name]
        return fallback if fallback is not None else pd.Series([None] * len(frame), index=frame.index, dtype=object)

    reason = column("finish_reason", frame["label"] if "label" in frame.columns else None)
    reason = reason.astype(object).where(reason.notna(), None)
    logprob = pd.to_numeric(column("mean_logprob"), errors="coerce").astype(float)
    if "confidence" in frame.columns:
        with np.errstate(divide="ignore"):
            logprob = logprob.fillna(np.log(pd.to_numeric(frame["confidence"], errors="coerce").astype(float)))
    out = pd.DataFrame({"text": frame["text"], "label": reason.fillna("").astype(str), "confidence": np.exp(logprob),
                        "reply": column("reply"), "finish_reason": reason, "mean_logprob": logprob,
                        "true_reply": column("true_reply"), "rating": column("rating")}, index=frame.index)
    out["rouge_l"] = row_rouge(out)
    return out


def _not_computed(name: str, method: str, why: str) -> SignalResult:
    return SignalResult(name=name, method=f"{method} (not computed: {why})", value=None, threshold=float("nan"),
                        fired=False, p_value=None)


def reply_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``reply_drift``: :func:`tuneloop.monitoring.drift.descriptor_drift` over the reply descriptors
    (value = p-value = min of the three p-values x 3, threshold = alpha; per-descriptor p-values and
    means in ``details``); not computed when either sample has no replies."""
    method = "K-S on reply length, permutation chi-square on stop and placeholder rates (min p x 3)"
    if any(d not in m.values for d in REPLY_DESCRIPTOR_NAMES):
        return _not_computed(REPLY, method, "no replies on one side")
    return descriptor_drift(ctx, m, REPLY_DESCRIPTOR_NAMES, REPLY, method)


def logprob_drift(ctx: WindowContext, m: Measurements) -> SignalResult:
    """``confidence_drift`` of the replies' mean token log-probabilities: :func:`tuneloop.monitoring.drift.confidence_drift`
    (the K-S p-value is the same on ``exp``), with both samples' mean log-probabilities (nats per token)
    in ``details``; not computed when either sample has none."""
    method = "K-S p-value of the mean token log-probability"
    if "confidence" not in m.values:
        return _not_computed(CONFIDENCE, method, "no log-probabilities on one side")
    sig = confidence_drift(ctx, m)
    details = {**sig.details, "reference_mean_logprob": float(ctx.ref["mean_logprob"].mean()),
               "current_mean_logprob": float(ctx.cur["mean_logprob"].mean())}
    return sig.model_copy(update={"method": method, "details": details})


SignalFunction = Callable[[WindowContext, Measurements, ReplyQuality], SignalResult]
SIGNAL_FUNCTIONS: dict[str, SignalFunction] = {
    TEXT: lambda ctx, m, q: text_drift(ctx, m),
    EMBEDDING: lambda ctx, m, q: embedding_drift(ctx, m),
    REPLY: lambda ctx, m, q: reply_drift(ctx, m),
    CONFIDENCE: lambda ctx, m, q: logprob_drift(ctx, m),
    ROUGE: lambda ctx, m, q: rouge_drop(ctx.config, q),
    RATING: lambda ctx, m, q: bad_rating_rise(ctx.config, q),
}


def _nanmean(values) -> float | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if len(arr) else None


def generation_figures(reference: pd.DataFrame, current: pd.DataFrame, quality: ReplyQuality,
                       config: DriftConfig) -> dict[str, dict[str, float | None]]:
    """The window's figures beside the tests, on every row of both frames (:func:`generation_frame` s):
    ``rouge_l`` (mean ROUGE-L, 0..1), ``bad_rating_share`` (0..1; the reference's is the baseline),
    ``stop_rate`` (0..1), ``mean_logprob`` (nats per token) and ``reply_length`` (characters), each
    ``{"reference": ..., "current": ...}`` (None where unknown)."""
    ref_d, cur_d = reply_descriptors(reference), reply_descriptors(current)
    return {
        "rouge_l": {"reference": _nanmean(quality.reference_rouge), "current": _nanmean(quality.current_rouge)},
        "bad_rating_share": {"reference": quality.baseline_bad_share(config), "current": quality.bad_share},
        "stop_rate": {"reference": _nanmean(ref_d["stop_rate"]), "current": _nanmean(cur_d["stop_rate"])},
        "mean_logprob": {"reference": _nanmean(reference["mean_logprob"]), "current": _nanmean(current["mean_logprob"])},
        "reply_length": {"reference": _nanmean(ref_d["reply_length"]), "current": _nanmean(cur_d["reply_length"])},
    }


def generation_signals(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig | None = None,
                       metadata: dict[str, str] | None = None, *, reference_embeddings: np.ndarray | None = None,
                       current_embeddings: CurrentEmbeddings | None = None) -> WindowReport:
    """The six generation signals of ``current`` against ``reference``, from one Evidently report.

    Args:
        reference: the champion's reference sample (``reference.jsonl`` rows: ``text``, ``reply``,
            ``finish_reason``, ``completion_tokens``, ``mean_logprob``, ``true_reply``; prompt-only rows
            have no reply); subsampled to ``config.max_reference_rows`` for the drift tests.
        current: one traffic window (``TrafficLog.read_window``), see the module docstring; the drift
            tests use at most ``config.max_current_rows`` rows, the feedback figures all of them.
        config: computation settings; defaults to ``DriftConfig()``.
        metadata: extra str -> str metadata stored on the snapshot.
        reference_embeddings: sentence embeddings of the reference prompts, shape (n_ref, d).
        current_embeddings: the window's, shape (n_cur, d), or a function embedding a list of prompts.
            Without both, ``embedding_drift`` is reported as not computed.

    Returns:
        WindowReport with the signals in ``GENERATION_SIGNALS`` order, ``n_labels`` = window rows with
        feedback, the :func:`generation_figures` and the snapshot; the accuracy fields are None.

    Raises:
        ValueError: a frame has fewer than ``MIN_ROWS`` rows, or embeddings do not match their rows.
    """
    started = time.time()
    config = config or DriftConfig()
    ref, cur = generation_frame(reference), generation_frame(current)
    quality = reply_quality(ref, cur, ref["rouge_l"].to_numpy(), cur["rouge_l"].to_numpy())
    ctx = window_context(ref, cur, config, reference_embeddings=reference_embeddings,
                         current_embeddings=current_embeddings, extra_columns=EXTRA_COLUMNS)
    m = measure_generation(ctx, {"n_labels": str(quality.feedback), **(metadata or {})})
    return WindowReport(signals=[SIGNAL_FUNCTIONS[name](ctx, m, quality) for name in GENERATION_SIGNALS],
                        n_current=len(cur), n_reference=len(ctx.ref), n_labels=quality.feedback, accuracy=None,
                        macro_f1=None, reference_accuracy=None, figures=generation_figures(ref, cur, quality, config),
                        computed_at=started, seconds=time.time() - started, snapshot=m.snapshot,
                        current_positions=ctx.current_positions, current_embeddings=ctx.current_embeddings,
                        reference_embeddings=ctx.reference_embeddings)


class GenerationMonitoring:
    """Prompt, reply and confidence drift, and quality from feedback (see the module docstring)."""

    name = "generation"
    signals = GENERATION_SIGNALS
    sufficient_signals = (ROUGE, RATING)  # direct evidence from feedback alarms a window on its own

    def champion_view(self, model_dir: Path, reference: pd.DataFrame, embeddings: bool,
                      embed_threads: int | None) -> ChampionView:
        """The shipped sentence encoder and its embeddings of the reference prompts (with ``embeddings``;
        seconds: a 22 M-parameter model load and one pass over the reference); no calibration, no vocabulary."""
        encoder = load_sentence_encoder() if embeddings else None
        ref_emb = (embed_texts(encoder, reference["text"].fillna("").astype(str).tolist(), threads=embed_threads)
                   if encoder is not None else None)
        return ChampionView(self.name, encoder, ref_emb, None, None)

    def window_report(self, reference: pd.DataFrame, window: pd.DataFrame, config: DriftConfig,
                      view: ChampionView, embed_threads: int | None, metadata: dict[str, str]) -> WindowReport:
        """:func:`generation_signals` with the view's encoder."""
        embed = partial(embed_texts, view.classifier, threads=embed_threads) if view.classifier is not None else None
        return generation_signals(reference, window, config, metadata,
                                  reference_embeddings=view.reference_embeddings, current_embeddings=embed)
