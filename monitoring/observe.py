"""Observe, the first stage of a monitoring cycle: what the monitor sees, and nothing it changes.

:func:`read_span` finds the traffic logged since the last judged window; :func:`observe` reads that
window (the newest ``MonitorConfig.max_window`` rows), the policy state, the feedback cursor and how
many labels came in since, and computes the window's drift signals against the champion's
reference sample (through the champion's task, :mod:`tuneloop.monitoring.tasks`; for classification one Evidently
report, :func:`tuneloop.monitoring.drift.compute_signals`). The
champion's reference sample, classifier, reference embeddings and calibration are loaded once per
champion by :class:`ChampionCache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.monitoring.drift import DriftConfig, load_reference
from tuneloop.monitoring.monitor_config import CURSOR_KEY, FEEDBACK_CURSOR_KEY, POLICY_STATE_KEY
from tuneloop.monitoring.policy import PolicyState
from tuneloop.monitoring.signals import WindowReport
from tuneloop.monitoring.tasks import ChampionView, monitoring_task
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import REFERENCE_FILE, get_model
from tuneloop.state.traffic_store import TrafficLog
from tuneloop.training.task import DEFAULT_TASK, task_of

if TYPE_CHECKING:
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
            stored = get_model(self.home, tag)
            task = monitoring_task(task_of(dict(stored.info.metadata)).name)
            view = task.champion_view(Path(stored.path), self.reference(tag), self.embeddings, self.embed_threads)
            self._view = (tag, view)
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
        task: the champion's task (its signals are the report's; the policy is fitted to them).
    """

    champion_tag: str
    span: WindowSpan
    window: pd.DataFrame
    report: WindowReport
    policy_state: PolicyState
    feedback_cursor: int
    new_labels: int
    task: str = DEFAULT_TASK


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
    # the newest max_window rows of the span: ORDER BY seq DESC LIMIT on the primary key, however
    # much traffic piled up (seq can have gaps on PostgreSQL, so count rows, not seq differences)
    window = ctx.traffic.read_window(span.cursor, span.end, limit=ctx.max_window)
    view = ctx.champion.view(champion_tag)
    report = monitoring_task(view.task).window_report(
        ctx.champion.reference(champion_tag), window, ctx.drift_config, view, ctx.champion.embed_threads,
        metadata={"champion": champion_tag, "window": span.label})
    feedback_cursor = int(ctx.audit.get_state(FEEDBACK_CURSOR_KEY, 0))
    return Observation(champion_tag=champion_tag, span=span, window=window, report=report,
                       policy_state=PolicyState(**ctx.audit.get_state(POLICY_STATE_KEY, {})),
                       feedback_cursor=feedback_cursor,
                       new_labels=ctx.traffic.count_labelled(after_feedback_seq=feedback_cursor), task=view.task)
