"""One look of the post-swap watch per monitoring cycle: find a newly promoted champion, read its
requests and the previous champion's last ones from the traffic store (bounded seq ranges), judge them
(:mod:`tuneloop.monitoring.watch`) and, on a significant regression, roll back.

State. Which tag is watched, since which ``seq``, with which gate figure, how many looks: a
:class:`WatchState` under the audit table's ``watch`` key (``AuditLog.get_state``), so a restarted
monitor resumes the watch where it stopped. A champion is watched when the newest pointer move was a
promotion (by the gate or ``tuneloop models promote``) of a model that has a previous champion and was
not watched since that promotion; a champion restored by a rollback is not watched.

Outcomes, each in the event log (:mod:`tuneloop.state.events`, actor ``monitor``): ``watched`` with
detail ``verdict`` ``kept`` when the window closes without a regression; on a regression,
:func:`tuneloop.state.registry.rollback` (the pointer goes back to the previous unblocked champion,
``rolled_back`` and ``blocked`` events; the service follows the pointer: a rollback is a hot swap),
``tuneloop_monitor_rollbacks_total`` + 1, and ``watched`` with verdict ``rolled_back``. A champion
promoted over before its watch ended gets ``watched`` with verdict ``superseded``; the newer one is watched.

The gate figure the feedback signal compares with: the challenger's metrics in the newest ``gated`` event
of the tag (``detail["challenger"]``), else the model's own test-split metrics (its metadata); with
neither (a hand-made model), the feedback signal is not tested.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import select

from tuneloop.monitoring.drift import load_reference
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.monitor_config import WATCH_STATE_KEY
from tuneloop.monitoring.performance import Calibration, load_calibration
from tuneloop.monitoring.watch import (
    KEPT,
    ROLLED_BACK,
    WatchConfig,
    WatchSignal,
    WatchVerdict,
    estimate_signal,
    feedback_accuracy_signal,
    feedback_rouge_signal,
    judge,
    latency_signal,
    logprob_signal,
)
from tuneloop.state.audit import AuditLog
from tuneloop.state.events import GATED, PROMOTED, WATCHED, EventLog
from tuneloop.state.events import ROLLED_BACK as ROLLED_BACK_EVENT
from tuneloop.state.home import Home
from tuneloop.state.registry import REFERENCE_FILE, ChampionPointer, ModelNotFoundError, get_model, rollback
from tuneloop.state.schema import Prediction
from tuneloop.state.traffic_store import TrafficLog
from tuneloop.training.task import DEFAULT_TASK, TASK_KEY

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ACTOR = "monitor"
GATE_METRIC = {"classification": "accuracy", "generation": "rougeL"}  # task -> the gate figure the feedback tests
SUPERSEDED = "superseded"  # verdict of a watch whose champion was replaced (promoted over) before it ended
GATED_EVENTS_READ = 5  # newest gated events of a tag searched for its figure (one per gate run)


class WatchState(BaseModel):
    """The watch, as stored under the audit table's ``watch`` key.

    Attributes:
        tag: the champion watched (or, ``done``, the last one looked at).
        previous: the champion it replaced (its last requests are the baseline), None for a first model.
        task: the tag's task.
        start_seq: the window holds rows with ``seq > start_seq``: the last row logged before the promotion.
        gate: ``{"metric", "value", "source"}``: the figure the feedback signal compares with.
        looks: looks taken so far.
        complete_at: Unix time the window first held its requests (feedback grace), else None.
        done: the watch ended (or there was nothing to watch).
        verdict: ``kept``, ``rolled_back``, ``regressed`` (no model to roll back to) or ``not_watched``.
        reason: why it ended.
    """

    tag: str
    previous: str | None = None
    task: str = DEFAULT_TASK
    start_seq: int = 0
    gate: dict = Field(default_factory=dict)
    looks: int = 0
    complete_at: float | None = None
    done: bool = False
    verdict: str | None = None
    reason: str = ""


def seq_before(traffic: TrafficLog, created_at: float) -> int:
    """``seq`` of the row logged just before the first one received at or after ``created_at`` (Unix
    s), or the newest ``seq`` when none is; one lookup on the ``predictions.created_at`` index."""
    stmt = (select(Prediction.seq).where(Prediction.created_at >= created_at)
            .order_by(Prediction.created_at).limit(1))
    with traffic.engine.connect() as conn:
        first = conn.scalar(stmt)
    return int(first) - 1 if first is not None else traffic.max_seq()


def gate_figure(events: EventLog, home: Home, tag: str, task: str) -> dict:
    """``{"metric", "value", "source"}``: the challenger's figure from the tag's newest ``gated`` event
    (``detail["challenger"]``), else its test-split metrics in the model's metadata; value None if neither."""
    metric = GATE_METRIC.get(task, "accuracy")
    for event in reversed(events.events(tag=tag, kind=GATED, limit=GATED_EVENTS_READ)):
        challenger = event.detail.get("challenger") or event.detail.get("challenger_metrics")
        if isinstance(challenger, dict) and isinstance(challenger.get(metric), (int, float)):
            return {"metric": metric, "value": float(challenger[metric]), "source": f"gated event {event.id}"}
    test = dict(get_model(home, tag).info.metadata).get("metrics", {}).get("test", {})
    if isinstance(test, dict) and isinstance(test.get(metric), (int, float)):
        return {"metric": metric, "value": float(test[metric]), "source": "model metadata (test split)"}
    return {"metric": metric, "value": None, "source": "none"}


def not_watched_reason(events: EventLog, pointer: ChampionPointer) -> str | None:
    """Why the champion ``pointer`` names needs no watch, or None when it does (module docstring)."""
    if pointer.previous is None:
        return "first model: nothing to compare with or roll back to"
    moves = events.events(kind=PROMOTED, limit=1) + events.events(kind=ROLLED_BACK_EVENT, limit=1)
    newest = max(moves, key=lambda e: e.id, default=None)
    if newest is not None and newest.kind == ROLLED_BACK_EVENT and newest.detail.get("champion") == pointer.tag:
        return "restored by a rollback"
    promoted = events.events(tag=pointer.tag, kind=PROMOTED, limit=1)
    if not promoted:
        return "no promoted event: promoted before the event log existed"
    watched = events.events(tag=pointer.tag, kind=WATCHED, limit=1)
    if watched and watched[0].id > promoted[0].id:
        return "already watched since its promotion"
    return None


class Watcher:
    """The monitor's post-swap watch (one :meth:`step` per cycle).

    Args:
        home: the tuneloop home (champion pointer, model store).
        cfg: the watch settings.
        traffic: the traffic store (rows read in bounded seq ranges).
        audit: where the :class:`WatchState` persists.
        metrics: ``rollbacks`` is counted there.
    """

    def __init__(self, home: Home, cfg: WatchConfig, traffic: TrafficLog, audit: AuditLog,
                 metrics: MonitorMetrics) -> None:
        self.home, self.cfg, self.traffic, self.audit, self.metrics = home, cfg, traffic, audit, metrics
        self.events = EventLog(home.store_url)
        self._calibrations: dict[str, Calibration | None] = {}

    def state(self) -> WatchState | None:
        """The stored watch state, or None before the first."""
        raw = self.audit.get_state(WATCH_STATE_KEY)
        return WatchState(**raw) if raw else None

    def _save(self, state: WatchState) -> None:
        self.audit.set_state(WATCH_STATE_KEY, state.model_dump())

    def begin(self, pointer: ChampionPointer) -> WatchState:
        """Start watching the champion ``pointer`` names, or store why it needs no watch."""
        reason = not_watched_reason(self.events, pointer)
        if reason is not None:
            state = WatchState(tag=pointer.tag, previous=pointer.previous, done=True, verdict="not_watched",
                               reason=reason)
        else:
            task = str(dict(get_model(self.home, pointer.tag).info.metadata).get(TASK_KEY, DEFAULT_TASK))
            state = WatchState(tag=pointer.tag, previous=pointer.previous, task=task,
                               start_seq=seq_before(self.traffic, pointer.promoted_at),
                               gate=gate_figure(self.events, self.home, pointer.tag, task))
            log.info("watching %s (replaced %s) from seq %d; gate %s", state.tag, state.previous, state.start_seq,
                     state.gate)
        self._save(state)
        return state

    def calibration(self, tag: str) -> Calibration | None:
        """Model ``tag``'s confidence calibration (cached; None without one): :func:`load_calibration`."""
        if tag not in self._calibrations:
            path = Path(get_model(self.home, tag).path)
            reference = load_reference(path / REFERENCE_FILE) if (path / REFERENCE_FILE).exists() else None
            self._calibrations[tag] = load_calibration(path, reference)
        return self._calibrations[tag]

    def rows(self, state: WatchState) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
        """(the tag's window rows, the previous champion's last rows before the swap, whether the
        window's seq range is complete); each read is a seq range of ``requests x search_factor`` rows."""
        span = self.cfg.requests * self.cfg.search_factor
        window = self.traffic.read_window(state.start_seq, state.start_seq + span)
        new = window[window["model_tag"] == state.tag].head(self.cfg.requests)
        before = self.traffic.read_window(max(0, state.start_seq - span), state.start_seq)
        previous = before[before["model_tag"] == state.previous].tail(self.cfg.requests)
        return new, previous, self.traffic.max_seq() >= state.start_seq + span

    def signals(self, state: WatchState, new: pd.DataFrame, previous: pd.DataFrame) -> list[WatchSignal]:
        """The look's signals for the task (module docstring of :mod:`tuneloop.monitoring.watch`)."""
        cfg, gate = self.cfg, state.gate.get("value")
        latency = latency_signal(_numbers(new, "latency_ms"), _numbers(previous, "latency_ms"), cfg)
        if state.task == "generation":
            from tuneloop.monitoring.gen_quality import row_rouge

            rouge, before = row_rouge(new), row_rouge(previous) if len(previous) else np.empty(0)
            rouge, before = rouge[~np.isnan(rouge)], before[~np.isnan(before)]
            return [feedback_rouge_signal(rouge, live_baseline(gate, before, cfg), cfg),
                    logprob_signal(_numbers(new, "mean_logprob"), _numbers(previous, "mean_logprob"), cfg), latency]
        correct = _label_correct(new)
        gate = live_baseline(gate, _label_correct(previous), cfg)
        above = []
        for tag, rows in ((state.tag, new), (state.previous, previous)):
            calibration = self.calibration(tag) if tag else None
            above.append(calibration.above_threshold(_numbers(rows, "confidence")) if calibration else np.empty(0))
        return [feedback_accuracy_signal(correct, gate, cfg), estimate_signal(above[0], above[1], cfg), latency]

    def step(self, pointer: ChampionPointer) -> WatchVerdict | None:
        """One look: start a watch if the champion changed, else look at the open watch; roll back on
        a regression (module docstring). Returns the look's verdict, or None when nothing is watched.

        Raises:
            tuneloop.state.registry.ModelNotFoundError: the champion is not in the store.
            sqlalchemy.exc.OperationalError: the store cannot be reached.
        """
        state = self.state()
        if state is not None and not state.done and state.tag != pointer.tag:  # replaced before its watch ended
            self.events.record(WATCHED, f"superseded by {pointer.tag} after {state.looks} looks", tag=state.tag,
                               actor=ACTOR, detail={"verdict": SUPERSEDED, "looks": state.looks,
                                                    "start_seq": state.start_seq, "champion": pointer.tag})
        if state is None or state.tag != pointer.tag:
            state = self.begin(pointer)
        if state.done:
            return None
        new, previous, span_done = self.rows(state)
        now = time.time()
        if (len(new) >= self.cfg.requests or span_done) and state.complete_at is None:
            state.complete_at = now
        final = state.complete_at is not None and now - state.complete_at >= self.cfg.feedback_grace_seconds
        verdict = judge(self.signals(state, new, previous), len(new), final, self.cfg)
        state.looks += 1
        if verdict.verdict == ROLLED_BACK:
            self._roll_back(state, verdict)
        elif verdict.verdict == KEPT:
            self._end(state, KEPT, verdict)
        else:
            self._save(state)
        return verdict

    def _detail(self, state: WatchState, verdict: WatchVerdict, outcome: str) -> dict:
        return {"verdict": outcome, "requests": verdict.served, "looks": state.looks, "final": verdict.final,
                "level": verdict.level, "start_seq": state.start_seq, "previous": state.previous, "gate": state.gate,
                "signals": [s.model_dump() for s in verdict.signals]}

    def _end(self, state: WatchState, outcome: str, verdict: WatchVerdict) -> None:
        self.events.record(WATCHED, verdict.reason, tag=state.tag, actor=ACTOR,
                           detail=self._detail(state, verdict, outcome))
        self._save(state.model_copy(update={"done": True, "verdict": outcome, "reason": verdict.reason}))
        log.info("watch of %s ended: %s (%s)", state.tag, outcome, verdict.reason)

    def _roll_back(self, state: WatchState, verdict: WatchVerdict) -> None:
        """Roll ``state.tag`` back, unless the pointer moved meanwhile (then the next look starts over)."""
        from tuneloop.state.registry import read_champion

        current = read_champion(self.home)
        if current is None or current.tag != state.tag:
            log.warning("watch of %s: the champion moved to %s before the rollback; not rolled back", state.tag,
                        current.tag if current else None)
            return
        try:
            restored = rollback(self.home, f"post-swap watch: {verdict.reason}", actor=ACTOR,
                                detail={"watch": self._detail(state, verdict, ROLLED_BACK)})
        except ModelNotFoundError as exc:
            log.error("watch of %s: regression but no model to roll back to: %s", state.tag, exc)
            self._end(state, "regressed", verdict.model_copy(update={"reason": f"{verdict.reason}; {exc}"}))
            return
        self.metrics.rollbacks.inc()
        log.warning("rolled back %s to %s: %s", state.tag, restored.tag, verdict.reason)
        self._end(state, ROLLED_BACK, verdict)


def live_baseline(gate: float | None, previous_scores: np.ndarray, cfg: WatchConfig) -> float | None:
    """What the new champion's live feedback quality is tested against: the gate's figure, or the
    previous champion's live figure on its last labelled requests before the swap when that is lower
    (and rests on at least ``cfg.min_feedback`` of them).

    The gate's holdout is mostly the original test split; live traffic after a drift is harder than
    that (in the Banking77 demo the promoted challenger scored 0.89 on the holdout and 0.76 on the
    drifted traffic, where the champion it replaced scored 0.59): against the gate's figure alone the
    watch would roll back the better model. A rollback serves the previous champion again, so it is
    a regression only when the new model does worse than the gate promised *and* than what the
    rollback would bring back.

    Args:
        gate: the gate's figure (accuracy or ROUGE-L, 0..1) or None.
        previous_scores: per labelled request of the previous champion, 1/0 correct or ROUGE-L, shape (m,).
        cfg: the watch settings.
    """
    scores = np.asarray(previous_scores, dtype=float)
    if len(scores) < cfg.min_feedback:
        return gate
    live = float(scores.mean())
    return live if gate is None else min(gate, live)


def _label_correct(frame: pd.DataFrame) -> np.ndarray:
    """Per row with feedback: whether the logged label matched the reviewer's, shape (n_labelled,)."""
    if not len(frame):
        return np.empty(0, dtype=bool)
    labelled = frame[frame["true_label"].notna()]
    return (labelled["true_label"].astype(str) == labelled["label"].astype(str)).to_numpy()


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``frame[column]`` as floats without NaN (empty when the column is missing)."""
    import pandas as pd

    if column not in frame.columns:
        return np.empty(0)
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    return values[~np.isnan(values)]
