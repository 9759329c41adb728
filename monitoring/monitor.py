"""The monitoring loop: every cycle reads the traffic logged since the last check, embeds it with the
champion, compares it with the champion's reference sample (Evidently), estimates accuracy from
calibrated confidences, exports the signals, decides with the policy, refreshes the labelling queue,
and when the model has degraded and enough labels came in, retrains, gates and promotes.

A cycle runs three stages, each in its own module with a typed result:

* observe (:mod:`tuneloop.monitoring.observe`): the window, its signals, the policy state and the
  feedback cursor -> :class:`~tuneloop.monitoring.observe.Observation`; reads only;
* decide (:mod:`tuneloop.monitoring.decide`): the policy's verdict -> :class:`~tuneloop.monitoring.policy.Decision`;
  pure;
* act (:mod:`tuneloop.monitoring.act`): report files, gauges, label queue, retrain/gate/promote, audit
  row and stored state -> :class:`~tuneloop.monitoring.act.ActionResult`.

``Monitor.cycle()`` is one step and is what tests call; :func:`run_scheduler` runs it every
``interval_seconds`` with APScheduler (``max_instances=1``, ``coalesce``): a cycle that is still
retraining makes the next ones skip, and the store's ``retrain`` job lock (a PostgreSQL advisory
lock, or a ``flock`` beside the SQLite file: :mod:`tuneloop.state.job_lock`) keeps a second monitor
process, or a ``tuneloop retrain`` run, from retraining at the same time.

Past one machine (APScheduler cannot share its job store between processes), the monitor runs with
``defer_retrain`` (``tuneloop monitor --no-retrain``): it observes and decides as usual, and records a
``retrain`` decision as ``retrain_due``; ``tuneloop retrain`` (:mod:`tuneloop.monitoring.retrain_job`),
run by an external scheduler, serves it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC

import pandas as pd

from tuneloop.monitoring.act import ActContext, ActionResult, act, retrain_lock  # noqa: F401 (retrain_lock re-exported)
from tuneloop.monitoring.decide import SKIP_SMALL_WINDOW, decide_window, small_window_reason
from tuneloop.monitoring.drift import DriftConfig
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.monitor_config import MonitorConfig  # noqa: F401 (re-exported: the CLI and tests import it here)
from tuneloop.monitoring.observe import (  # noqa: F401 (ChampionView re-exported)
    ChampionCache,
    ChampionView,
    Observation,
    ObserveContext,
    WindowSpan,
    observe,
    read_span,
)
from tuneloop.monitoring.policy import Decision
from tuneloop.monitoring.schedule import add_retrain_schedule
from tuneloop.monitoring.shadow import ShadowStage
from tuneloop.monitoring.tasks import monitoring_task
from tuneloop.monitoring.watch import ROLLED_BACK, WatchVerdict
from tuneloop.monitoring.watch_step import Watcher
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import ChampionPointer, require_champion
from tuneloop.state.traffic_store import TrafficLog

log = logging.getLogger(__name__)

MIN_MISFIRE_GRACE_SECONDS = 1  # APScheduler's misfire_grace_time must be a positive number of seconds


@dataclass
class CycleResult:
    """What one cycle did: ``action`` (a policy action, ``skip_small_window``, or for a retrain decision
    ``retrain_promoted``/``retrain_rejected``/``retrain_busy``/``retrain_failed``, or ``retrain_due`` when
    retraining is deferred), its reason, the
    window's seq range (for a skipped cycle: the stored cursor and the newest seq), whether the model
    is degraded, the JSON report path and the retrain outcome (``RetrainOutcome.to_dict()``) if any, and
    the post-swap watch's look (``WatchVerdict.model_dump()``) when a promoted champion is watched."""

    action: str
    reason: str
    window_start_seq: int = 0
    window_end_seq: int = 0
    degraded: bool = False
    report_json: str | None = None
    retrain: dict | None = None
    shadow: dict | None = None  # ShadowOutcome.to_dict() of the shadow stage's step, when a challenger is pending
    watch: dict | None = None  # WatchVerdict.model_dump() of the post-swap watch's look, when a champion is watched

    @classmethod
    def skipped(cls, span: WindowSpan, reason: str) -> CycleResult:
        """A cycle whose pending rows were too few to judge."""
        return cls(SKIP_SMALL_WINDOW, reason, span.cursor, span.end)

    @classmethod
    def of(cls, observation: Observation, decision: Decision, result: ActionResult) -> CycleResult:
        """A judged window's result."""
        return cls(result.action, result.reason, observation.span.start, observation.span.end, decision.degraded,
                   str(result.report_json) if result.report_json else None, result.retrain)


WARM_UP_ROWS = 100  # a window of the policy's default minimum size: every signal runs as on real traffic


class Monitor:
    """One home's monitor. State (window cursor, policy state, feedback cursor) persists in the traffic DB.

    Args:
        home: the tuneloop home.
        cfg: the monitor configuration.
        metrics: where to export gauges (a fresh ``MonitorMetrics`` by default).
        defer_retrain: record ``retrain_due`` instead of retraining (``--no-retrain``; ``tuneloop retrain``
            serves it).
    """

    def __init__(self, home: Home, cfg: MonitorConfig, metrics: MonitorMetrics | None = None,
                 defer_retrain: bool = False) -> None:
        self.home, self.cfg, self.defer_retrain = home.ensure(), cfg, defer_retrain
        self.metrics = metrics or MonitorMetrics()
        self.traffic = TrafficLog(home.store_url)
        self.audit = AuditLog(home.store_url)
        self.champion = ChampionCache(self.home, cfg.embeddings, cfg.embed_threads)
        self.shadow = ShadowStage(self.home, self.traffic, self.audit, threads=cfg.embed_threads)
        self.drift_config: DriftConfig = cfg.policy.drift_config(**cfg.drift)
        self.metrics.interval.set(cfg.interval_seconds)
        self.watcher = Watcher(self.home, cfg.watch, self.traffic, self.audit, self.metrics)

    def reference(self, tag: str) -> pd.DataFrame:
        """The champion's reference sample (cached per tag)."""
        return self.champion.reference(tag)

    def champion_view(self, tag: str) -> ChampionView:
        """The champion's classifier, reference embeddings, calibration and vocabulary (cached per tag;
        the first call loads the model and embeds the reference sample: seconds)."""
        return self.champion.view(tag)

    def observe_context(self) -> ObserveContext:
        """Where :func:`~tuneloop.monitoring.observe.observe` looks."""
        return ObserveContext(self.traffic, self.audit, self.champion, self.drift_config, self.cfg.max_window)

    def act_context(self) -> ActContext:
        """What :func:`~tuneloop.monitoring.act.act` changes."""
        return ActContext(self.home, self.cfg, self.traffic, self.audit, self.metrics, self.defer_retrain)

    def warm_up(self) -> float:
        """Load what the champion's signals need (its model, the reference sample's embeddings, the
        calibration) and compute the signals once, reference against itself, writing nothing; so
        the first real window is judged as fast as the next ones. A cold first cycle took 17-18 s
        in the demo (2 shared cores), long enough for ~430 requests to pile into the next window
        and delay detection by as much. Returns the seconds it took.

        Raises:
            tuneloop.state.registry.ModelNotFoundError: there is no champion.
        """
        started = time.time()
        tag = require_champion(self.home).tag
        reference, view = self.champion.reference(tag), self.champion.view(tag)
        sample = reference.sample(WARM_UP_ROWS, replace=len(reference) < WARM_UP_ROWS, random_state=0).assign(
            seq=0, request_id="", created_at=0.0, top3="[]", model_tag=tag, latency_ms=0.0,
            true_label=reference.get("true_label"))
        monitoring_task(view.task).window_report(reference, sample, self.drift_config, view,
                                                 self.champion.embed_threads, metadata={"champion": tag, "window": "warm-up"})
        return time.time() - started

    def cycle(self) -> CycleResult:
        """Check the traffic since the last cycle once: observe, decide, act (see the module docstring)."""
        started = time.time()
        self.metrics.last_check.set(started)
        champion = require_champion(self.home)
        watched = self.watch(champion)
        if watched is not None and watched.verdict == ROLLED_BACK:
            champion = require_champion(self.home)  # the window is judged against the restored champion
        self.metrics.set_champion(champion.tag)
        span = read_span(self.audit, self.traffic)
        too_small = small_window_reason(span, self.cfg.policy)
        if too_small is not None:
            skipped = CycleResult.skipped(span, too_small)
            skipped.watch = watched.model_dump() if watched else None
            return skipped
        observation = observe(self.observe_context(), span, champion.tag)
        decision = decide_window(observation, self.cfg.policy)
        result = act(self.act_context(), observation, decision)
        self.metrics.last_cycle.set(time.time())
        self.metrics.cycle_seconds.set(time.time() - started)
        log.info("window %s (%d rows): %s", span.label, len(observation.window), result.reason)
        judged = CycleResult.of(observation, decision, result)
        # a challenger pending in the gate's shadow stage answers this window's sampled requests here, in
        # the monitor's process, never in the service's (tuneloop.monitoring.shadow)
        try:
            shadowed = self.shadow.step(observation.window)
        except Exception:  # the drift loop must survive a failed shadow step; the state stays, the next cycle retries
            log.exception("shadow stage step failed")
            shadowed = None
        judged.shadow = shadowed.to_dict() if shadowed else None
        judged.watch = watched.model_dump() if watched else None
        return judged

    def watch(self, champion: ChampionPointer) -> WatchVerdict | None:
        """One look of the post-swap watch at ``champion`` (:mod:`tuneloop.monitoring.watch_step`); it may
        roll the champion back. None when the watch is off or nothing is watched. A look that fails is
        logged with its traceback and the cycle goes on: the watch's state is unchanged, the next cycle
        looks again."""
        if not self.cfg.watch.enabled:
            return None
        try:
            return self.watcher.step(champion)
        except Exception:  # the drift loop must survive a failed look; the log has the cause
            log.exception("post-swap watch of %s failed", champion.tag)
            return None


def run_scheduler(monitor: Monitor, interval_seconds: float, stop_after: float | None = None) -> None:
    """Run ``monitor.cycle`` now and then every ``interval_seconds`` until SIGINT/SIGTERM (or
    ``stop_after`` seconds). Blocks the calling thread. Returns without waiting for a cycle that
    is still running (a retrain): the caller exits the process, abandoning it, which is safe
    because a model version is written to the store and promoted atomically or not at all.
    With ``monitor.cfg.retrain_cron`` a second job retrains on that schedule too, drift or not
    (:mod:`tuneloop.monitoring.schedule`; under the same retrain lock)."""
    import signal
    import threading
    from datetime import datetime

    from apscheduler.schedulers.background import BackgroundScheduler

    stop = threading.Event()
    grace = max(MIN_MISFIRE_GRACE_SECONDS, int(interval_seconds))
    sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                                              "misfire_grace_time": grace})

    def job() -> None:
        try:
            monitor.cycle()
        except Exception:  # keep the schedule; the log has the traceback
            log.exception("monitor cycle failed")

    sched.add_job(job, "interval", seconds=interval_seconds, id="monitor-cycle", replace_existing=True,
                  next_run_time=datetime.now(UTC))
    if monitor.cfg.retrain_cron:  # retraining on a calendar too, without drift (tuneloop.monitoring.schedule)
        add_retrain_schedule(sched, monitor.act_context(), monitor.cfg.retrain_cron)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sched.start()
    try:
        stop.wait(stop_after)
    finally:
        sched.shutdown(wait=False)
