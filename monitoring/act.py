"""Act, the last stage of a monitoring cycle: everything the cycle changes, in this order.

1. publish the window's Evidently report (HTML + JSON under ``<home>/reports``, a snapshot in the
   Evidently workspace);
2. set the window's Prometheus gauges;
3. rewrite the labelling queue (``<home>/label_queue.json``);
4. on a ``retrain`` decision: retrain, gate and promote (:func:`tuneloop.monitoring.retrain.retrain_and_gate`)
   under the store's ``retrain`` job lock (:mod:`tuneloop.state.job_lock`), so that a second monitor
   process or a ``tuneloop retrain`` run never retrains at the same time; or, when the monitor runs
   with ``--no-retrain`` (``ActContext.defer_retrain``), record ``retrain_due`` for ``tuneloop retrain``;
5. append the decision to the audit table;
6. store the window cursor, the policy state and, after a completed retrain, the feedback cursor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from tuneloop.monitoring.drift import save_report
from tuneloop.monitoring.embeddings import novelty
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.label_queue import QUEUE_FILE, has_feedback, rank_for_labelling, write_queue
from tuneloop.monitoring.monitor_config import CURSOR_KEY, FEEDBACK_CURSOR_KEY, POLICY_STATE_KEY, MonitorConfig
from tuneloop.monitoring.observe import Observation
from tuneloop.monitoring.policy import Decision
from tuneloop.monitoring.retrain import retrain_and_gate
from tuneloop.monitoring.shadow import begin as begin_shadow
from tuneloop.monitoring.signals import WindowReport
from tuneloop.monitoring.tasks import task_policy
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.job_lock import job_lock
from tuneloop.state.traffic_store import TrafficLog

log = logging.getLogger(__name__)

RETRAIN_LOCK = "retrain"  # the job lock's name (tuneloop.state.job_lock): one retrain per store at a time
RETRAIN_DUE = "retrain_due"  # the audited action of a retrain decision deferred to `tuneloop retrain`
DEFERRED = "deferred"  # its outcome label on tuneloop_monitor_retrains_total
RETRAIN_SHADOWING = "retrain_shadowing"  # the challenger passed the holdout gate and waits in the shadow stage
SHADOWING = "shadowing"  # its outcome label on tuneloop_monitor_retrains_total
# The challenger's drift reference is re-baselined on the RetrainConfig.reference_rows newest unlabelled
# rows, searched among 4x as many recent rows: enough as long as at most 3/4 of the traffic has feedback.
RECENT_SEARCH_FACTOR = 4
# ... and only with at least half that many (RetrainConfig.reference_rows: with fewer, the challenger keeps
# its validation split as reference).
MIN_RECENT_DIVISOR = 2
# WindowReport figures each audit row carries beside the signals.
AUDITED_FIGURES = frozenset({"n_labels", "accuracy", "accuracy_ci", "macro_f1", "reference_accuracy",
                             "estimated_accuracy", "estimated_accuracy_sd", "estimates", "intents", "figures"})


@contextmanager
def retrain_lock(home: Home) -> Iterator[bool]:
    """The store's ``retrain`` job lock (:func:`tuneloop.state.job_lock.job_lock` on ``home.store_url``):
    a PostgreSQL advisory lock, or a ``flock`` beside the SQLite file. Non-blocking.

    Yields:
        True when acquired (released on exit), False when another process holds it.
    """
    with job_lock(home.store_url, RETRAIN_LOCK) as acquired:
        yield acquired


@dataclass(frozen=True, eq=False)
class ActContext:
    """What acting changes: the home's files, the traffic DB's audit table and state, the metrics.

    Attributes:
        home: the tuneloop home (reports, label queue, model store, retrain lock).
        cfg: the monitor configuration (report, queue and retrain settings, the policy).
        traffic: the traffic log (labelled feedback and recent rows for a retrain).
        audit: the audit table and state.
        metrics: the monitor's Prometheus metrics.
        defer_retrain: on a ``retrain`` decision, record ``retrain_due`` and train nothing (``tuneloop
            monitor --no-retrain``: ``tuneloop retrain`` serves it).
    """

    home: Home
    cfg: MonitorConfig
    traffic: TrafficLog
    audit: AuditLog
    metrics: MonitorMetrics
    defer_retrain: bool = False


@dataclass(frozen=True)
class RetrainResult:
    """What a ``retrain`` decision came to.

    Attributes:
        action: ``retrain_promoted``, ``retrain_rejected``, ``retrain_shadowing`` (passed the holdout gate,
            pending in the shadow stage: :mod:`tuneloop.monitoring.shadow`), ``retrain_busy`` (another process
            holds the lock), ``retrain_failed``, or ``retrain_due`` (deferred to ``tuneloop retrain``).
        reason: the decision's reason and what happened.
        outcome: ``RetrainOutcome.to_dict()`` of a completed retrain, else None.
        feedback_cursor: feedback seq of the newest label the completed retrain trained on (0 without
            labels); None when no retrain completed (the cursor stays).
    """

    action: str
    reason: str
    outcome: dict | None = None
    feedback_cursor: int | None = None


@dataclass(frozen=True)
class ActionResult:
    """What one cycle did.

    Attributes:
        action: the decision's action, or the RetrainResult's for a ``retrain`` decision.
        reason: the reason to go with it.
        report_json: the JSON report written, None when ``save_html`` is off.
        retrain: ``RetrainOutcome.to_dict()`` of a completed retrain, else None.
        feedback_cursor: the feedback cursor after this cycle.
        queue_size: requests in the label queue written, None when the queue is off.
    """

    action: str
    reason: str
    report_json: Path | None
    retrain: dict | None
    feedback_cursor: int
    queue_size: int | None


def publish_report(ctx: ActContext, observation: Observation) -> Path | None:
    """Save the report as HTML + JSON (``save_html``) and add it to the Evidently workspace
    (``evidently_project``); returns the JSON path, or None when not saved."""
    stem, json_path = observation.span.stem, None
    if ctx.cfg.save_html:
        _, json_path = save_report(observation.report, ctx.home.reports_dir, stem)
    if ctx.cfg.evidently_project:
        from tuneloop.monitoring.evidently_ws import add_to_workspace

        add_to_workspace(observation.report, ctx.home.evidently_dir, ctx.cfg.evidently_project, run_name=stem)
    return json_path


def refresh_label_queue(ctx: ActContext, observation: Observation) -> int:
    """Rank the unlabelled rows the tests used (uncertainty + novelty) into ``label_queue.json``;
    returns the queue's length (also exported as a gauge)."""
    report = observation.report
    window = observation.window
    rows = window.iloc[report.current_positions] if report.current_positions is not None else window
    nov = (novelty(report.reference_embeddings, report.current_embeddings)
           if report.current_embeddings is not None else None)
    queue = rank_for_labelling(rows, nov, ctx.cfg.label_queue_size)
    write_queue(ctx.home.root / QUEUE_FILE, queue, observation.champion_tag, observation.span.label)
    ctx.metrics.queue_size.set(len(queue))
    return len(queue)


def run_retrain(ctx: ActContext, champion_tag: str, reason: str, lock: bool = True,
                feedback_until: int | None = None, trigger: dict | None = None,
                actor: str = "monitor") -> RetrainResult:
    """Retrain on every label, gate and promote, unless another process is retraining.

    The challenger's drift reference is re-baselined on recent unlabelled traffic (see the constants
    above). A failed retrain is logged and answered ``retrain_failed``: the loop survives it.

    Args:
        ctx: the home, store, configuration and metrics.
        champion_tag: the model to retrain (its training config is reused).
        reason: why; the result's reason starts with it.
        lock: take the store's retrain lock (:func:`retrain_lock`); False when the caller holds it
            already (``tuneloop retrain``).
        feedback_until: train on feedback rows with ``feedback_seq`` up to this only (None: all), so that
            the processes of a distributed retrain train on the same rows while feedback keeps arriving.
        trigger: what asked for the retrain, saved in the challenger's lineage (``retrain_and_gate``'s
            ``lineage``; :func:`drift_trigger` for a drift decision).
        actor: who retrains, for the model events (``monitor``, ``retrain``).
    """
    with retrain_lock(ctx.home) if lock else nullcontext(True) as acquired:
        if not acquired:
            return RetrainResult("retrain_busy", reason + " Another process is retraining: skipped.")
        labelled = ctx.traffic.labelled()
        if feedback_until is not None:
            labelled = labelled[labelled["feedback_seq"] <= feedback_until].reset_index(drop=True)
        end = ctx.traffic.max_seq()
        size = ctx.cfg.retrain.reference_rows
        recent = ctx.traffic.read_window(max(0, end - RECENT_SEARCH_FACTOR * size), end)
        recent = recent[~has_feedback(recent)].tail(size)
        ctx.metrics.retraining.set(1)
        try:
            outcome = retrain_and_gate(ctx.home, champion_tag, labelled, ctx.cfg.retrain,
                                       recent_unlabelled=recent[["text"]] if len(recent) >= size // MIN_RECENT_DIVISOR
                                       else None, lineage=trigger, actor=actor)
        except Exception as exc:  # the loop must survive a failed retrain; the audit says why
            log.exception("retrain failed")
            ctx.metrics.retrains.labels("failed").inc()
            return RetrainResult("retrain_failed", f"{reason} Retrain failed: {exc!r}")
        finally:
            ctx.metrics.retraining.set(0)
    feedback_cursor = int(labelled["feedback_seq"].max()) if len(labelled) else 0
    if outcome.shadow_pending:  # passed the holdout gate; GateConfig.shadow: promoted or dropped by the shadow stage
        begin_shadow(ctx.home, ctx.audit, outcome.challenger_tag, champion_tag, ctx.cfg.retrain.gate.shadow,
                     since_seq=ctx.traffic.max_seq(), feedback_cursor=feedback_cursor)
        ctx.metrics.retrains.labels(SHADOWING).inc()
        return RetrainResult(RETRAIN_SHADOWING, f"{reason} Gate: {outcome.reason}; in shadow on live requests before "
                             "promotion.", outcome.to_dict(), feedback_cursor)
    verdict = "promoted" if outcome.promoted else "rejected"
    ctx.metrics.retrains.labels(verdict).inc()
    return RetrainResult(f"retrain_{verdict}", f"{reason} Gate: {outcome.reason}.", outcome.to_dict(), feedback_cursor)


def audit_signals(report: WindowReport, decision: Decision) -> dict:
    """The ``signals`` JSON of an audit row: every signal, the report's figures, and the verdict's flags
    (``fired``: the signals the policy counted)."""
    return {"signals": [s.model_dump() for s in report.signals], **report.model_dump(include=set(AUDITED_FIGURES)),
            "alarm": decision.alarm, "strong": decision.strong, "labels_needed": decision.labels_needed,
            "fired": list(decision.fired)}


def drift_trigger(observation: Observation, decision: Decision) -> dict:
    """The lineage trigger of a retrain a drift decision asked for: ``{"kind": "drift", "window": [first,
    last seq], "signals": the fired signals, "reason": the decision's reason}``."""
    return {"kind": "drift", "window": [observation.span.start, observation.span.end],
            "signals": list(decision.fired), "reason": decision.reason}


def act(ctx: ActContext, observation: Observation, decision: Decision) -> ActionResult:
    """Carry out a decision on an observed window (the steps of the module docstring, in order).

    Args:
        ctx: what to change.
        observation: the window.
        decision: the policy's verdict on it.

    Returns:
        The ActionResult; its ``feedback_cursor`` is what the next cycle counts new labels from.
    """
    json_path = publish_report(ctx, observation)
    ctx.metrics.observe_window(observation.report, decision, task_policy(ctx.cfg.policy, observation.task))
    queue_size = refresh_label_queue(ctx, observation) if ctx.cfg.label_queue_size else None
    retrained = None
    if decision.action == "retrain" and ctx.defer_retrain:
        ctx.metrics.retrains.labels(DEFERRED).inc()
        retrained = RetrainResult(RETRAIN_DUE, decision.reason + " Deferred (--no-retrain): `tuneloop retrain` runs it.")
    elif decision.action == "retrain":
        log.info("window %s: %s", observation.span.label, decision.reason)
        log.info("retraining: monitoring cycles pause until the challenger is judged")
        retrained = run_retrain(ctx, observation.champion_tag, decision.reason,
                                trigger=drift_trigger(observation, decision))
    action, reason = (retrained.action, retrained.reason) if retrained else (decision.action, decision.reason)
    outcome = retrained.outcome if retrained else None
    ctx.audit.record(window_start_seq=observation.span.start, window_end_seq=observation.span.end,
                     window_size=len(observation.window), signals=audit_signals(observation.report, decision),
                     degraded=decision.degraded, decision=action, reason=reason, champion_tag=observation.champion_tag,
                     challenger_tag=(outcome or {}).get("challenger_tag"), retrain=outcome,
                     report_path=str(json_path) if json_path else None)
    ctx.audit.set_state(CURSOR_KEY, observation.span.end)
    ctx.audit.set_state(POLICY_STATE_KEY, decision.state.model_dump())
    feedback_cursor = observation.feedback_cursor
    if retrained is not None and retrained.feedback_cursor is not None:
        feedback_cursor = retrained.feedback_cursor
        ctx.audit.set_state(FEEDBACK_CURSOR_KEY, feedback_cursor)
    return ActionResult(action, reason, json_path, outcome, feedback_cursor, queue_size)
