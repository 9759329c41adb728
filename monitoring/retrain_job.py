"""``tuneloop retrain``: one retrain -> gate -> promote as a job an external scheduler runs (a Kubernetes
CronJob, cron), for when monitors run with ``--no-retrain``.

A run, in order:

1. takes the store's ``retrain`` job lock (:func:`tuneloop.monitoring.act.retrain_lock`: a PostgreSQL
   advisory lock, or a ``flock`` beside the SQLite file), without waiting; when another run (or a
   monitor retraining in-process) holds it, the run is audited ``retrain_locked`` and exits 3;
2. looks for a due retrain: the newest ``retrain_due`` decision a monitor recorded whose id is above
   the one the last completed run served (state key :data:`SERVED_KEY`). Nothing due (and no
   ``--force``): audited ``retrain_skipped``, exit 0. So the job is idempotent: run it as often as you
   like, it trains once per due decision;
3. retrains through the monitor's own code path (:func:`tuneloop.monitoring.act.run_retrain`: every
   label, the challenger's reference re-baselined on recent traffic, gate, promote), audits the outcome
   (``retrain_promoted``/``retrain_rejected``, exit 0; ``retrain_failed``, exit 1: the decision stays
   due, so the next run retries), and after a completed retrain stores the feedback cursor and the
   served decision id.

With ``nproc`` > 1, step 3 runs in ``nproc`` torchrun processes (:mod:`tuneloop.training.distributed`)
while this process keeps the lock; rank 0 of them audits, and this process reads its row back.

Every row of a run carries ``signals = {"job": {...}}`` (run id, due decision id, forced, nproc, the
newest feedback seq it trains on), and the window of the decision it served.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tuneloop.monitoring.act import RETRAIN_DUE, RETRAIN_SHADOWING, ActContext, retrain_lock, run_retrain
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.monitor_config import FEEDBACK_CURSOR_KEY, MonitorConfig
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import require_champion
from tuneloop.state.schema import Decision as DecisionRow
from tuneloop.state.schema import Feedback
from tuneloop.state.traffic_store import TrafficLog

log = logging.getLogger(__name__)

SERVED_KEY = "retrain_job_served"  # monitor_state: id of the newest retrain_due decision a run has served
EXIT_DONE, EXIT_FAILED, EXIT_LOCKED = 0, 1, 3  # `tuneloop retrain` exit codes (2: invalid options, Typer's)
LOCKED, SKIPPED, FAILED = "retrain_locked", "retrain_skipped", "retrain_failed"
COMPLETED = ("retrain_promoted", "retrain_rejected", RETRAIN_SHADOWING)


@dataclass(frozen=True)
class DueRetrain:
    """The decision a run serves: the newest ``retrain_due`` row (id 0 and no window when forced
    without one), with the signals its policy counted (``fired``; empty when unknown)."""

    decision_id: int = 0
    window_start_seq: int = 0
    window_end_seq: int = 0
    window_size: int = 0
    reason: str = ""
    fired: tuple[str, ...] = ()

    def trigger(self, job: dict) -> dict:
        """The lineage trigger of a run serving this decision: ``{"kind": "job", "decision_id", "window",
        "signals", "reason", "run_id"}``, or ``{"kind": "manual", "run_id"}`` for a forced run without one."""
        if not self.decision_id:
            return {"kind": "manual", "run_id": job.get("run_id")}
        return {"kind": "job", "decision_id": self.decision_id, "window": [self.window_start_seq, self.window_end_seq],
                "signals": list(self.fired), "reason": self.reason, "run_id": job.get("run_id")}


@dataclass(frozen=True)
class JobResult:
    """What a run did: the audited ``action`` (retrain_promoted, retrain_rejected, retrain_failed,
    retrain_skipped, retrain_locked), its ``reason``, the process ``exit_code`` (:data:`EXIT_DONE`,
    :data:`EXIT_FAILED`, :data:`EXIT_LOCKED`), ``RetrainOutcome.to_dict()`` of a completed retrain, and
    the id of the run's audit row."""

    action: str
    reason: str
    exit_code: int
    retrain: dict | None = None
    decision_id: int | None = None


def open_store(home: Home) -> tuple[TrafficLog, AuditLog]:
    """The traffic log and audit table of ``home``'s store (``home.store_url``)."""
    return TrafficLog(home.store_url), AuditLog(home.store_url)


def pending_retrain(audit: AuditLog) -> DueRetrain | None:
    """The newest ``retrain_due`` decision, unless a completed run has served it (or a newer one)."""
    with Session(audit.engine) as session:
        row = session.scalars(select(DecisionRow).where(DecisionRow.decision == RETRAIN_DUE)
                              .order_by(DecisionRow.id.desc()).limit(1)).first()
    if row is None or row.id <= int(audit.get_state(SERVED_KEY, 0)):
        return None
    return _due(row)


def _due(row: DecisionRow) -> DueRetrain:
    """The DueRetrain of a ``retrain_due`` row."""
    fired = (json.loads(row.signals) if row.signals else {}).get("fired") or ()
    return DueRetrain(row.id, row.window_start_seq, row.window_end_seq, row.window_size, row.reason, tuple(fired))


def newest_feedback_seq(traffic: TrafficLog) -> int:
    """The ``seq`` of the newest feedback row (0 without feedback): a run trains on feedback up to it."""
    with traffic.engine.connect() as conn:
        return int(conn.scalar(select(func.max(Feedback.seq))) or 0)


def due_by_id(audit: AuditLog, decision_id: int) -> DueRetrain:
    """The ``retrain_due`` decision ``decision_id`` (0: none, a forced run).

    Raises:
        LookupError: no ``retrain_due`` decision has that id.
    """
    if not decision_id:
        return DueRetrain()
    with Session(audit.engine) as session:
        row = session.get(DecisionRow, decision_id)
        if row is None or row.decision != RETRAIN_DUE:
            raise LookupError(f"decision {decision_id} is not a {RETRAIN_DUE} decision")
        return _due(row)


def record(audit: AuditLog, due: DueRetrain, action: str, reason: str, champion_tag: str, job: dict,
           outcome: dict | None = None) -> int:
    """Audit one run (``signals = {"job": job}``, the window of ``due``); returns the row id."""
    return audit.record(window_start_seq=due.window_start_seq, window_end_seq=due.window_end_seq,
                        window_size=due.window_size, signals={"job": job}, degraded=bool(due.decision_id),
                        decision=action, reason=reason, champion_tag=champion_tag,
                        challenger_tag=(outcome or {}).get("challenger_tag"), retrain=outcome)


def exit_code(action: str) -> int:
    """The exit code of a run that ended in ``action``."""
    return {LOCKED: EXIT_LOCKED, FAILED: EXIT_FAILED}.get(action, EXIT_DONE)


def serve_due(home: Home, cfg: MonitorConfig, due: DueRetrain, job: dict) -> JobResult:
    """Retrain for ``due`` with the lock already held (by this process or the launcher of this torchrun
    worker): :func:`~tuneloop.monitoring.act.run_retrain`, then audit and store the cursors.

    On ranks other than 0 of a distributed run, training ends the process (``SystemExit(0)``) before
    anything is audited."""
    traffic, audit = open_store(home)
    champion = require_champion(home).tag
    why = due.reason.split(". ")[0] if due.decision_id else "forced (--force), no retrain due"
    ctx = ActContext(home, cfg, traffic, audit, MonitorMetrics())
    result = run_retrain(ctx, champion, f"Job for decision {due.decision_id} ({why}).", lock=False,
                         feedback_until=job.get("feedback_seq"), trigger=due.trigger(job), actor="retrain")
    row = record(audit, due, result.action, result.reason, champion, job, result.outcome)
    if result.action in COMPLETED:
        audit.set_state(FEEDBACK_CURSOR_KEY, result.feedback_cursor)
        audit.set_state(SERVED_KEY, max(due.decision_id, int(audit.get_state(SERVED_KEY, 0))))
    return JobResult(result.action, result.reason, exit_code(result.action), result.outcome, row)


def serve_job(home: Home, cfg: MonitorConfig, job: dict) -> JobResult:
    """A torchrun worker's part of a distributed run: :func:`serve_due` for the decision the launching
    run chose (``job["due_decision_id"]``), the lock being held by that run."""
    return serve_due(home, cfg, due_by_id(AuditLog(home.store_url), int(job.get("due_decision_id") or 0)), job)


def run_job(home: Home, cfg: MonitorConfig, *, force: bool = False, nproc: int = 1, launch=None) -> JobResult:
    """One ``tuneloop retrain`` run (the steps of the module docstring).

    Args:
        home: the home (model store, champion pointer) and its store (``home.store_url``).
        cfg: the monitor configuration; its ``retrain`` section says how to retrain and gate.
        force: retrain even when no retrain is due.
        nproc: training processes; above 1, ``launch(job)`` runs the retrain under torchrun.
        launch: ``launch(job: dict) -> int`` (the workers' exit code): starts the workers, which call
            :func:`serve_due` with ``job``; required when ``nproc`` > 1.

    Returns:
        The JobResult (its ``exit_code`` is the command's).

    Raises:
        tuneloop.state.registry.ModelNotFoundError: the home has no champion.
        ValueError: ``nproc`` > 1 without ``launch``.
    """
    if nproc > 1 and launch is None:
        raise ValueError("nproc > 1 needs a launch function")
    traffic, audit = open_store(home)
    champion = require_champion(home).tag
    job = {"run_id": uuid.uuid4().hex, "forced": force, "nproc": nproc, "due_decision_id": None}
    with retrain_lock(home) as held:
        if not held:
            reason = "Another retrain holds the store's retrain lock: this run did nothing."
            return JobResult(LOCKED, reason, EXIT_LOCKED, None, record(audit, DueRetrain(), LOCKED, reason, champion, job))
        due = pending_retrain(audit)
        if due is None and not force:
            served = int(audit.get_state(SERVED_KEY, 0))
            reason = (f"No retrain due: no monitor decision `{RETRAIN_DUE}` newer than decision {served}, the last one "
                      "served (--force retrains anyway).")
            return JobResult(SKIPPED, reason, EXIT_DONE, None, record(audit, DueRetrain(), SKIPPED, reason, champion, job))
        due = due or DueRetrain()
        job.update(due_decision_id=due.decision_id, feedback_seq=newest_feedback_seq(traffic))
        log.info("retraining %s for decision %d in %d process(es), feedback up to seq %d", champion,
                 due.decision_id, nproc, job["feedback_seq"])
        if nproc <= 1:
            return serve_due(home, cfg, due, job)
        code = launch(job)
        return _read_back(audit, due, job, champion, code)


def _read_back(audit: AuditLog, due: DueRetrain, job: dict, champion: str, code: int) -> JobResult:
    """The result rank 0 audited for ``job``; when it audited nothing (a worker crashed), audit the
    failure here."""
    with Session(audit.engine) as session:
        row = session.scalars(select(DecisionRow).where(DecisionRow.signals.contains(job["run_id"]))
                              .order_by(DecisionRow.id.desc()).limit(1)).first()
        if row is not None:
            outcome = json.loads(row.retrain) if row.retrain else None
            code = exit_code(row.decision) if code == 0 else EXIT_FAILED
            return JobResult(row.decision, row.reason, code, outcome, row.id)
    reason = f"Retrain workers exited with code {code} before auditing a result."
    return JobResult(FAILED, reason, EXIT_FAILED, None, record(audit, due, FAILED, reason, champion, job))
