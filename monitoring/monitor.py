"""The monitoring loop: every cycle reads the traffic logged since the last check, embeds it with the
champion, compares it with the champion's reference sample (Evidently), estimates accuracy from
calibrated confidences, exports the signals, decides with the policy, refreshes the labelling queue,
and when the model has degraded and enough labels came in, retrains, gates and promotes.

``Monitor.cycle()`` is one step and is what tests call; :func:`run_scheduler` runs it every
``interval_seconds`` with APScheduler (``max_instances=1``, ``coalesce``): a cycle that is still
retraining makes the next ones skip, and a file lock (``<home>/.retrain.lock``) keeps a second
monitor process from retraining at the same time.
"""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.monitoring.drift import DriftConfig, compute_signals, load_reference, save_report
from tuneloop.monitoring.embeddings import embed_texts, novelty
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.label_queue import QUEUE_FILE, rank_for_labelling, write_queue
from tuneloop.monitoring.performance import Calibration, load_calibration
from tuneloop.monitoring.policy import DriftPolicy, PolicyState, decide
from tuneloop.monitoring.retrain import RetrainConfig, retrain_and_gate
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import REFERENCE_FILE, get_model, require_champion
from tuneloop.state.traffic_store import TrafficLog

log = logging.getLogger(__name__)


class MonitorConfig(BaseModel):
    """Everything the monitor decides with. Loadable from YAML (``tuneloop monitor --config``)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(30.0, gt=0, description="Seconds between checks.")
    max_window: int = Field(5000, ge=10, description="At most this many newest rows are judged per window.")
    metrics_port: int | None = Field(9108, description="Port of the monitor's /metrics on 127.0.0.1; None: off.")
    evidently_project: str | None = Field("tuneloop-monitoring", description="Evidently workspace project; None: off.")
    save_html: bool = Field(True, description="Write Evidently's HTML report for each window.")
    embeddings: bool = Field(True, description="Embed each window with the champion (embedding_drift signal).")
    embed_threads: int | None = Field(1, ge=1, description="torch threads while embedding (None: all cores). 1 "
                                      "leaves a core to the service and is 2.6x faster when the cores are busy.")
    label_queue_size: int = Field(50, ge=0, description="Requests kept in <home>/label_queue.json; 0: off.")
    drift: dict = Field(default_factory=dict, description="DriftConfig fields other than those the policy sets "
                        "(alpha, min_labels, max_accuracy_drop come from the policy, so report and decision agree).")
    policy: DriftPolicy = Field(default_factory=DriftPolicy)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)


@dataclass
class CycleResult:
    """What one cycle did: ``action`` (a policy action, or ``"no_champion"``), its reason, the
    window's seq range, the report paths and the retrain outcome (dict) if any."""

    action: str
    reason: str
    window_start_seq: int = 0
    window_end_seq: int = 0
    degraded: bool = False
    report_json: str | None = None
    retrain: dict | None = None


@dataclass
class ChampionView:
    """What the monitor needs of the champion besides its reference sample (None where switched off)."""

    classifier: object | None
    reference_embeddings: object | None
    calibration: Calibration | None
    vocab: set[str] | None


@contextmanager
def retrain_lock(home: Home):
    """An exclusive, non-blocking file lock; yields True when acquired, False when another process holds it."""
    home.root.mkdir(parents=True, exist_ok=True)
    with open(home.root / ".retrain.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Monitor:
    """One home's monitor. State (window cursor, policy state) persists in the traffic DB.

    Args:
        home: the tuneloop home.
        cfg: the monitor configuration.
        metrics: where to export gauges (a fresh ``MonitorMetrics`` by default).
    """

    def __init__(self, home: Home, cfg: MonitorConfig, metrics: MonitorMetrics | None = None) -> None:
        self.home, self.cfg = home.ensure(), cfg
        self.metrics = metrics or MonitorMetrics()
        self.traffic = TrafficLog(home.traffic_db_path)
        self.audit = AuditLog(home.traffic_db_path)
        self._reference: tuple[str, pd.DataFrame] | None = None
        self._champion: tuple[str, ChampionView] | None = None
        self.drift_config: DriftConfig = cfg.policy.drift_config(**cfg.drift)
        self.metrics.interval.set(cfg.interval_seconds)

    def reference(self, tag: str) -> pd.DataFrame:
        """The champion's reference sample (cached per tag)."""
        if self._reference is None or self._reference[0] != tag:
            self._reference = (tag, load_reference(Path(get_model(self.home, tag).path) / REFERENCE_FILE))
        return self._reference[1]

    def champion_view(self, tag: str) -> ChampionView:
        """The champion's classifier, reference embeddings, calibration and vocabulary (cached per tag;
        the first call loads the model and embeds the reference sample: seconds)."""
        if self._champion is None or self._champion[0] != tag:
            from tuneloop.training.predict import Classifier

            model_dir = Path(get_model(self.home, tag).path)
            reference = self.reference(tag)
            clf = Classifier.load(model_dir) if self.cfg.embeddings else None
            ref_emb = (embed_texts(clf, reference["text"].astype(str).tolist(), threads=self.cfg.embed_threads)
                       if clf is not None else None)
            vocab = set(clf.tokenizer.get_vocab()) if clf is not None else None
            self._champion = (tag, ChampionView(clf, ref_emb, load_calibration(model_dir, reference), vocab))
        return self._champion[1]

    def cycle(self) -> CycleResult:
        """Check the traffic since the last cycle once; see the module docstring."""
        started = time.time()
        self.metrics.last_check.set(started)
        champion = require_champion(self.home)
        self.metrics.set_champion(champion.tag)
        cursor = int(self.audit.get_state("cursor", 0))
        end = self.traffic.max_seq()
        pending = end - cursor
        if pending < self.cfg.policy.min_window:
            return CycleResult("skip_small_window", f"{pending} new rows < min_window {self.cfg.policy.min_window}",
                               cursor, end)
        window = self.traffic.read_window(max(cursor, end - self.cfg.max_window), end)
        view = self.champion_view(champion.tag)
        embed = ((lambda texts: embed_texts(view.classifier, texts, threads=self.cfg.embed_threads))
                 if view.classifier is not None else None)
        report = compute_signals(self.reference(champion.tag), window, self.drift_config,
                                 metadata={"champion": champion.tag, "window": f"{cursor + 1}-{end}"},
                                 reference_embeddings=view.reference_embeddings, current_embeddings=embed,
                                 calibration=view.calibration, vocab=view.vocab)
        stem = f"window-{cursor + 1:09d}-{end:09d}"
        html_path = json_path = None
        if self.cfg.save_html:
            html_path, json_path = save_report(report, self.home.reports_dir, stem)
        if self.cfg.evidently_project:
            from tuneloop.monitoring.evidently_ws import add_to_workspace

            add_to_workspace(report, self.home.evidently_dir, self.cfg.evidently_project, run_name=stem)
        state = PolicyState(**self.audit.get_state("policy_state", {}))
        fb_cursor = int(self.audit.get_state("feedback_cursor", 0))
        new_labels = len(self.traffic.labelled(after_feedback_seq=fb_cursor))
        decision = decide(report, self.cfg.policy, state, new_labels=new_labels)
        self.metrics.observe_window(report, decision, self.cfg.policy)
        if self.cfg.label_queue_size:
            self._update_label_queue(window, report, champion.tag, f"{cursor + 1}-{end}")
        outcome = None
        action, reason = decision.action, decision.reason
        if decision.action == "retrain":
            log.info("window %d-%d: %s", cursor + 1, end, reason)
            log.info("retraining: monitoring cycles pause until the challenger is judged")
            outcome, action, reason = self._retrain(champion.tag, reason)
        self.audit.record(window_start_seq=cursor + 1, window_end_seq=end, window_size=len(window),
                          signals={"signals": [s.model_dump() for s in report.signals],
                                   **report.model_dump(include={"n_labels", "accuracy", "accuracy_ci", "macro_f1",
                                                                "reference_accuracy", "estimated_accuracy",
                                                                "estimated_accuracy_sd", "estimates", "intents"}),
                                   "alarm": decision.alarm, "strong": decision.strong,
                                   "labels_needed": decision.labels_needed},
                          degraded=decision.degraded, decision=action, reason=reason, champion_tag=champion.tag,
                          challenger_tag=(outcome or {}).get("challenger_tag"), retrain=outcome,
                          report_path=str(json_path) if json_path else None)
        self.audit.set_state("cursor", end)
        self.audit.set_state("policy_state", decision.state.model_dump())
        if outcome is not None:
            self.audit.set_state("feedback_cursor", int(outcome.pop("_feedback_seq", fb_cursor)))
        self.metrics.last_cycle.set(time.time())
        self.metrics.cycle_seconds.set(time.time() - started)
        log.info("window %d-%d (%d rows): %s", cursor + 1, end, len(window), reason)
        return CycleResult(action, reason, cursor + 1, end, decision.degraded, str(json_path) if json_path else None,
                           outcome)

    def _update_label_queue(self, window: pd.DataFrame, report, tag: str, span: str) -> None:
        """Rank the unlabelled rows the tests used (uncertainty + novelty) into ``label_queue.json``."""
        rows = window.iloc[report.current_positions] if report.current_positions is not None else window
        nov = (novelty(report.reference_embeddings, report.current_embeddings)
               if report.current_embeddings is not None else None)
        queue = rank_for_labelling(rows, nov, self.cfg.label_queue_size)
        write_queue(self.home.root / QUEUE_FILE, queue, tag, span)
        self.metrics.queue_size.set(len(queue))

    def _retrain(self, champion_tag: str, reason: str) -> tuple[dict | None, str, str]:
        with retrain_lock(self.home) as acquired:
            if not acquired:
                return None, "retrain_busy", reason + " Another process is retraining: skipped."
            labelled = self.traffic.labelled()
            end = self.traffic.max_seq()
            size = self.cfg.retrain.reference_rows
            recent = self.traffic.read_window(max(0, end - 4 * size), end)
            recent = recent[recent["true_label"].isna()].tail(size)
            self.metrics.retraining.set(1)
            try:
                outcome = retrain_and_gate(self.home, champion_tag, labelled, self.cfg.retrain,
                                           recent_unlabelled=recent[["text"]] if len(recent) >= size // 2 else None)
            except Exception as exc:  # the loop must survive a failed retrain; the audit says why
                log.exception("retrain failed")
                self.metrics.retrains.labels("failed").inc()
                return None, "retrain_failed", f"{reason} Retrain failed: {exc!r}"
            finally:
                self.metrics.retraining.set(0)
        self.metrics.retrains.labels("promoted" if outcome.promoted else "rejected").inc()
        result = outcome.to_dict()
        result["_feedback_seq"] = int(labelled["feedback_seq"].max()) if len(labelled) else 0
        verdict = "promoted" if outcome.promoted else "rejected"
        return result, f"retrain_{verdict}", f"{reason} Gate: {outcome.reason}."


def run_scheduler(monitor: Monitor, interval_seconds: float, stop_after: float | None = None) -> None:
    """Run ``monitor.cycle`` now and then every ``interval_seconds`` until SIGINT/SIGTERM (or
    ``stop_after`` seconds). Blocks the calling thread. Returns without waiting for a cycle that
    is still running (a retrain): the caller exits the process, abandoning it, which is safe
    because a model version is written to the store and promoted atomically or not at all."""
    import signal
    import threading
    from datetime import datetime

    from apscheduler.schedulers.background import BackgroundScheduler

    stop = threading.Event()
    sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1,
                                                              "misfire_grace_time": max(1, int(interval_seconds))})

    def job() -> None:
        try:
            monitor.cycle()
        except Exception:  # keep the schedule; the log has the traceback
            log.exception("monitor cycle failed")

    sched.add_job(job, "interval", seconds=interval_seconds, id="monitor-cycle", replace_existing=True,
                  next_run_time=datetime.now(UTC))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sched.start()
    try:
        stop.wait(stop_after)
    finally:
        sched.shutdown(wait=False)
