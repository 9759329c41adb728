"""What the monitor decides with: :class:`MonitorConfig`, loadable from YAML (``tuneloop monitor --config``),
and the keys under which the monitor keeps its state between cycles in the audit table.

Its own module so that the cycle's stages (:mod:`~tuneloop.monitoring.observe`,
:mod:`~tuneloop.monitoring.act`) and :mod:`~tuneloop.monitoring.monitor`, which wires them, all read it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneloop.monitoring.cron import cron_trigger
from tuneloop.monitoring.label_queue import DEFAULT_QUEUE_SIZE
from tuneloop.monitoring.policy import DriftPolicy
from tuneloop.monitoring.retrain import RetrainConfig
from tuneloop.monitoring.signals import MIN_ROWS
from tuneloop.monitoring.watch import WatchConfig

# State keys in the audit table (AuditLog.get_state / set_state).
CURSOR_KEY = "cursor"  # seq of the newest traffic row judged so far
POLICY_STATE_KEY = "policy_state"  # the PolicyState the next decide() starts from
FEEDBACK_CURSOR_KEY = "feedback_cursor"  # feedback seq of the newest label the last retrain saw
WATCH_STATE_KEY = "watch"  # the post-swap watch (tuneloop.monitoring.watch_step.WatchState)

INTERVAL_SECONDS = 30.0  # chosen: `tuneloop monitor --interval` default (README, "Commands")
# Chosen bound on the rows one cycle reads and judges (the newest ones): the drift tests subsample to
# DriftConfig.max_current_rows (500) anyway; accuracy and its estimates use all of them.
MAX_WINDOW = 5000
# `--metrics-port` default: the port monitoring/prometheus/prometheus.yml scrapes (job tuneloop-monitor).
METRICS_PORT = 9108
EVIDENTLY_PROJECT = "tuneloop-monitoring"  # the Evidently workspace project of every window's snapshot
# torch threads while embedding: 1 thread embedded 500 texts in 3.9 s, 2 threads in 10.3 s on the shared
# 2-core machine under load (monitoring/embeddings.py, embed_texts), and 1 leaves a core to the service.
EMBED_THREADS = 1


class MonitorConfig(BaseModel):
    """Everything the monitor decides with. Loadable from YAML (``tuneloop monitor --config``)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(INTERVAL_SECONDS, gt=0, description="Seconds between checks.")
    max_window: int = Field(MAX_WINDOW, ge=MIN_ROWS,
                            description="At most this many newest rows are judged per window.")
    metrics_port: int | None = Field(METRICS_PORT, description="Port of the monitor's /metrics on 127.0.0.1; None: off.")
    evidently_project: str | None = Field(EVIDENTLY_PROJECT, description="Evidently workspace project; None: off.")
    save_html: bool = Field(True, description="Write Evidently's HTML report for each window.")
    embeddings: bool = Field(True, description="Embed each window with the champion (embedding_drift signal).")
    embed_threads: int | None = Field(EMBED_THREADS, ge=1, description="torch threads while embedding (None: all "
                                      "cores). 1 leaves a core to the service and is 2.6x faster when the cores "
                                      "are busy.")
    label_queue_size: int = Field(DEFAULT_QUEUE_SIZE, ge=0, description="Requests kept in <home>/label_queue.json; "
                                  "0: off.")
    drift: dict = Field(default_factory=dict, description="DriftConfig fields other than those the policy sets "
                        "(alpha, min_labels, max_accuracy_drop come from the policy, so report and decision agree).")
    policy: DriftPolicy = Field(default_factory=DriftPolicy)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig, description="The post-swap watch of every promoted "
                               "champion and its automatic rollback (tuneloop.monitoring.watch).")
    retrain_cron: str | None = Field(None, description="Also retrain on this crontab schedule (minute hour day-of-month "
                                     "month day-of-week, UTC; e.g. '0 3 * * 0': Sundays 03:00), even without drift, "
                                     "when feedback came in since the last retrain; same gate. None: only on drift.")

    @field_validator("retrain_cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cron_trigger(value)  # raises ValueError saying what is wrong
        return " ".join(value.split())
