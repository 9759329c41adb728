"""Scheduled retraining: a crontab schedule (``tuneloop monitor --retrain-cron "0 3 * * 0"``,
``MonitorConfig.retrain_cron``) on which the monitor retrains on the accumulated feedback even when no
drift was detected.

Each firing, in order:

1. new feedback? The newest feedback ``seq`` is compared with the feedback cursor the last completed
   retrain stored (state key ``feedback_cursor``, drift, job and scheduled retrains alike). None since:
   audited ``retrain_skipped``, nothing trained;
2. with ``--no-retrain`` (``ActContext.defer_retrain``): audited ``retrain_due``, which ``tuneloop
   retrain`` serves like a drift decision's;
3. otherwise :func:`tuneloop.monitoring.act.run_retrain`, the drift retrain's own path: the store's
   ``retrain`` job lock (``retrain_busy`` when a drift retrain or another process holds it), every label
   up to the newest one, the challenger's reference re-baselined on recent traffic, the same gate, the
   promotion when it wins; the challenger's lineage records the trigger ``{"kind": "schedule", "cron",
   "feedback_seq": [cursor, newest]}``. After a completed retrain (promoted or rejected) the feedback
   cursor moves to the newest label it trained on.

Every firing is one row of the decisions table (``signals = {"schedule": {...}}``; no window is judged,
so the window is the monitor's cursor and its size 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tuneloop.monitoring.act import DEFERRED, RETRAIN_DUE, RETRAIN_SHADOWING, ActContext, run_retrain
from tuneloop.monitoring.cron import cron_trigger
from tuneloop.monitoring.monitor_config import CURSOR_KEY, FEEDBACK_CURSOR_KEY
from tuneloop.monitoring.retrain_job import newest_feedback_seq
from tuneloop.state.registry import require_champion

log = logging.getLogger(__name__)

SCHEDULE = "schedule"  # the lineage trigger kind of a scheduled retrain
SKIPPED = "retrain_skipped"  # the audited action of a firing without new feedback
JOB_ID = "retrain-schedule"  # the APScheduler job's id
COMPLETED = ("retrain_promoted", "retrain_rejected", RETRAIN_SHADOWING)
# A firing that could not start on time (the process was suspended, or the scheduler's threads were busy)
# still runs within this many seconds; later, it waits for the next one (chosen: an hour, so a weekly
# retrain is not lost to a short stall and a stale one does not pile up).
MISFIRE_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class ScheduledRetrain:
    """What one firing did.

    Attributes:
        action: ``retrain_skipped``, ``retrain_due``, or :func:`~tuneloop.monitoring.act.run_retrain`'s
            (``retrain_promoted``, ``retrain_rejected``, ``retrain_busy``, ``retrain_failed``).
        reason: why, in words (the audit row's).
        retrain: ``RetrainOutcome.to_dict()`` of a completed retrain, else None.
        decision_id: the audit row's id.
    """

    action: str
    reason: str
    retrain: dict | None
    decision_id: int


def scheduled_retrain(ctx: ActContext, cron: str) -> ScheduledRetrain:
    """One firing of the retrain schedule (the steps of the module docstring).

    Args:
        ctx: the monitor's home, store, configuration and metrics (``defer_retrain``: record only).
        cron: the schedule's expression, recorded with the decision and the challenger's lineage.

    Returns:
        The ScheduledRetrain (also audited).

    Raises:
        tuneloop.state.registry.ModelNotFoundError: the home has no champion.
    """
    champion = require_champion(ctx.home).tag
    cursor = int(ctx.audit.get_state(FEEDBACK_CURSOR_KEY, 0) or 0)
    newest = newest_feedback_seq(ctx.traffic)
    schedule = {"kind": SCHEDULE, "cron": cron, "feedback_seq": [cursor, newest]}
    head = f"Scheduled retrain (cron '{cron}', UTC)"
    outcome, cursor_after = None, None
    if newest <= cursor:
        action, reason = SKIPPED, f"{head}: no feedback since the last retrain (feedback seq {cursor}): skipped."
    elif ctx.defer_retrain:
        ctx.metrics.retrains.labels(DEFERRED).inc()
        action, reason = RETRAIN_DUE, (f"{head}: feedback seq {cursor + 1}..{newest} is new. Deferred (--no-retrain): "
                                       "`tuneloop retrain` runs it.")
    else:
        log.info("%s: retraining on feedback up to seq %d", head, newest)
        result = run_retrain(ctx, champion, f"{head}: feedback seq {cursor + 1}..{newest} is new.",
                             feedback_until=newest, trigger=schedule)
        action, reason, outcome, cursor_after = result.action, result.reason, result.outcome, result.feedback_cursor
    window = int(ctx.audit.get_state(CURSOR_KEY, 0) or 0)
    row = ctx.audit.record(window_start_seq=window, window_end_seq=window, window_size=0,
                           signals={"schedule": schedule}, degraded=False, decision=action, reason=reason,
                           champion_tag=champion, challenger_tag=(outcome or {}).get("challenger_tag"), retrain=outcome)
    if action in COMPLETED and cursor_after is not None:
        ctx.audit.set_state(FEEDBACK_CURSOR_KEY, cursor_after)
    log.info("%s", reason)
    return ScheduledRetrain(action, reason, outcome, row)


def add_retrain_schedule(scheduler, ctx: ActContext, cron: str):
    """Add the retrain schedule to an APScheduler ``scheduler`` (job :data:`JOB_ID`, one firing at a time,
    missed firings coalesced); a failed firing is logged and the schedule kept.

    Args:
        scheduler: an APScheduler 3 scheduler (``BackgroundScheduler``), started or not.
        ctx: what each firing acts with (:func:`scheduled_retrain`).
        cron: a crontab expression (:func:`tuneloop.monitoring.cron.cron_trigger`).

    Returns:
        The ``apscheduler.job.Job``.

    Raises:
        ValueError: ``cron`` is not a valid expression.
    """
    trigger = cron_trigger(cron)

    def fire() -> None:
        try:
            scheduled_retrain(ctx, cron)
        except Exception:  # keep the schedule; the log has the traceback
            log.exception("scheduled retrain failed")

    job = scheduler.add_job(fire, trigger, id=JOB_ID, replace_existing=True, coalesce=True, max_instances=1,
                            misfire_grace_time=MISFIRE_GRACE_SECONDS)
    log.info("scheduled retraining on cron '%s' (UTC)", cron)
    return job
