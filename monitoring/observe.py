"""Observe, the first stage of a monitoring cycle: what the monitor sees, and nothing it changes.

:func:`read_span` finds the traffic logged since the last judged window; :func:`observe` reads that
window (the newest ``MonitorConfig.max_window`` rows), the policy state, the feedback cursor and how
many labels came in since, and computes the window's drift signals against the champion's
reference sample (one Evidently report, :func:`tuneloop.monitoring.drift.compute_signals`). The
champion's reference sample, classifier, reference embeddings and calibration are loaded once per
champion by :class:`ChampionCache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.monitoring.drift import DriftConfig, compute_signals, load_reference
from tuneloop.monitoring.embeddings import embed_texts
from tuneloop.monitoring.monitor_config import CURSOR_KEY, FEEDBACK_CURSOR_KEY, POLICY_STATE_KEY
from tuneloop.monitoring.performance import Calibration, load_calibration
from tuneloop.monitoring.policy import PolicyState
from tuneloop.monitoring.signals import WindowReport
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import REFERENCE_FILE, get_model
from tuneloop.state.traffic_store import TrafficLog

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@dataclass(frozen=True)
class WindowSpan:
    """The traffic not judged yet: rows with ``cursor < seq <= end``.

    Attributes:
        cursor: seq of the newest row the previous judged window held (0 before the first).
        end: seq of the newest row in the traffic log.
    """

    cursor: int
    end: int

    @property
    def pending(self) -> int:
        """Rows logged since the last judged window."""
        return self.end - self.cursor

    @property
    def start(self) -> int:
        """seq of the window's first row."""
        return self.cursor + 1

    @property
    def label(self) -> str:
        """``"<start>-<end>"``, as the snapshot metadata and the label queue name the window."""
        return f"{self.start}-{self.end}"

    @property
    def stem(self) -> str:
        """File stem of the window's report, ``window-<start>-<end>`` with 9-digit seqs."""
        return f"window-{self.start:09d}-{self.end:09d}"


def read_span(audit: AuditLog, traffic: TrafficLog) -> WindowSpan:
    """The span from the stored window cursor to the newest logged row."""
    return WindowSpan(cursor=int(audit.get_state(CURSOR_KEY, 0)), end=traffic.max_seq())


@dataclass(frozen=True, eq=False)
class ChampionView:
    """What the monitor needs of the champion besides its reference sample (None where switched off).

    Attributes:
        classifier: the loaded ``tuneloop.training.predict.Classifier``; None without embeddings.
        reference_embeddings: its embeddings of the reference texts, shape (n_ref, hidden); None without.
        calibration: its confidence calibration; None when it has none.
        vocab: its tokenizer's vocabulary (the OOV descriptor); None without a classifier.
    """

    classifier: object | None
    reference_embeddings: np.ndarray | None
    calibration: Calibration | None
    vocab: set[str] | None


class ChampionCache:
    """The champion's reference sample and :class:`ChampionView`, loaded once per champion tag.

    Args:
        home: the tuneloop home whose model store holds the champion.
        embeddings: load the classifier and embed the reference sample (the embedding drift signal).
        embed_threads: torch threads while embedding (None: the process setting).
    """

    def __init__(self, home: Home, embeddings: bool = True, embed_threads: int | None = None) -> None:
        self.home, self.embeddings, self.embed_threads = home, embeddings, embed_threads
        self._reference: tuple[str, pd.DataFrame] | None = None
        self._view: tuple[str, ChampionView] | None = None

    def reference(self, tag: str) -> pd.DataFrame:
        """The reference sample of model ``tag`` (rows of its ``reference.jsonl``)."""
        if self._reference is None or self._reference[0] != tag:
            self._reference = (tag, load_reference(Path(get_model(self.home, tag).path) / REFERENCE_FILE))
        return self._reference[1]

    def view(self, tag: str) -> ChampionView:
        """Classifier, reference embeddings, calibration and vocabulary of model ``tag`` (the first call
        per tag loads the model and embeds the reference sample: seconds)."""
        if self._view is None or self._view[0] != tag:
            from tuneloop.training.predict import Classifier

            model_dir = Path(get_model(self.home, tag).path)
            reference = self.reference(tag)
            clf = Classifier.load(model_dir) if self.embeddings else None
            ref_emb = (embed_texts(clf, reference["text"].astype(str).tolist(), threads=self.embed_threads)
                       if clf is not None else None)
            vocab = set(clf.tokenizer.get_vocab()) if clf is not None else None
            self._view = (tag, ChampionView(clf, ref_emb, load_calibration(model_dir, reference), vocab))
        return self._view[1]


@dataclass(frozen=True, eq=False)
class ObserveContext:
    """Where a cycle looks: the traffic log, the audit state, the champion, and the drift settings.

    Attributes:
        traffic: the traffic log (windows, labelled feedback).
        audit: the audit table's state (policy state, feedback cursor).
        champion: the champion's reference sample and view.
        drift_config: how the signals are computed.
        max_window: at most this many newest rows are judged.
    """

    traffic: TrafficLog
    audit: AuditLog
    champion: ChampionCache
    drift_config: DriftConfig
    max_window: int


@dataclass(frozen=True, eq=False)
class Observation:
    """One observed window.

    Attributes:
        champion_tag: the serving model's tag.
        span: the traffic the window closes (``span.cursor`` becomes ``span.end`` once judged).
        window: the rows judged (``TrafficLog.read_window``: the newest ``max_window`` rows of the span).
        report: the window's drift signals and figures.
        policy_state: the state the policy left after the previous judged window.
        feedback_cursor: feedback seq of the newest label the last retrain saw (0 before any retrain).
        new_labels: labels logged after ``feedback_cursor``: what a retrain now would learn from.
    """

    champion_tag: str
    span: WindowSpan
    window: pd.DataFrame
    report: WindowReport
    policy_state: PolicyState
    feedback_cursor: int
    new_labels: int


def observe(ctx: ObserveContext, span: WindowSpan, champion_tag: str) -> Observation:
    """Read the span's window and compute its signals against the champion's reference sample.

    Args:
        ctx: where to look.
        span: the traffic to judge (at least ``MIN_ROWS`` rows: check the policy's ``min_window`` first).
        champion_tag: the serving model's tag (its reference sample, embeddings and calibration are used).

    Returns:
        The Observation; nothing is written.

    Raises:
        ValueError: from ``compute_signals``, e.g. a window of fewer than ``MIN_ROWS`` rows.
    """
    window = ctx.traffic.read_window(max(span.cursor, span.end - ctx.max_window), span.end)
    view = ctx.champion.view(champion_tag)
    embed = (partial(embed_texts, view.classifier, threads=ctx.champion.embed_threads)
             if view.classifier is not None else None)
    report = compute_signals(ctx.champion.reference(champion_tag), window, ctx.drift_config,
                             metadata={"champion": champion_tag, "window": span.label},
                             reference_embeddings=view.reference_embeddings, current_embeddings=embed,
                             calibration=view.calibration, vocab=view.vocab)
    feedback_cursor = int(ctx.audit.get_state(FEEDBACK_CURSOR_KEY, 0))
    return Observation(champion_tag=champion_tag, span=span, window=window, report=report,
                       policy_state=PolicyState(**ctx.audit.get_state(POLICY_STATE_KEY, {})),
                       feedback_cursor=feedback_cursor,
                       new_labels=len(ctx.traffic.labelled(after_feedback_seq=feedback_cursor)))
