"""The demo's warm-start comparison and post-swap watch figures for ``report.json``.

``warm_start``: after the demo's promotion, one more retrain of the same champion on the same feedback
(every label up to the newest one the promoted retrain used, so the same training rows and the same
holdout), started from the *other* warm start and gated but never promoted
(:func:`tuneloop.monitoring.retrain.retrain_and_gate` with ``promote_winner=False``). Both runs' time
and holdout primary metric go side by side. The promoted run trained while the demo's traffic went on
(at ``retrain_rate``) and the monitor waited; the comparison run trains after the traffic stopped:
``under_traffic`` says which, and ``train_seconds`` (fine-tuning alone) is the fairer time.

``watch``: the post-swap watch's verdict on the promoted champion, from its ``watched`` /
``rolled_back`` events in the home's event log.
"""

from __future__ import annotations

import logging

from tuneloop.monitoring.monitor_config import MonitorConfig
from tuneloop.monitoring.retrain import RetrainConfig, retrain_and_gate
from tuneloop.state.audit import AuditLog
from tuneloop.state.events import ROLLED_BACK, WATCHED, EventLog
from tuneloop.state.home import Home
from tuneloop.state.registry import get_model
from tuneloop.state.traffic_store import TrafficLog
from tuneloop.training.task import task_of

log = logging.getLogger(__name__)

MONITOR_CONFIG_FILE = "monitor.yaml"  # what tuneloop.apps.demo.monitor_process writes in the run folder
COMPARISON = "warm_start_comparison"  # the lineage trigger kind of the comparison's challenger


def monitor_retrain_config(run_home: Home) -> RetrainConfig:
    """The ``retrain`` section of the demo monitor's config (``<run>/monitor.yaml``); the defaults
    when the file is missing."""
    import yaml

    path = run_home.root / MONITOR_CONFIG_FILE
    raw = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    return MonitorConfig(**raw).retrain


def promoted_retrain(run_home: Home) -> dict | None:
    """The first audited retrain that promoted its challenger (``RetrainOutcome.to_dict()``), or None."""
    decisions = AuditLog(run_home.store_url).decisions()
    for outcome in (decisions["retrain"] if len(decisions) else []):
        if isinstance(outcome, dict) and outcome.get("promoted"):
            return outcome
    return None


def _entry(run_home: Home, outcome: dict, metric: str, under_traffic: bool) -> dict:
    meta = dict(get_model(run_home, outcome["challenger_tag"]).info.metadata)
    return {"seconds": round(float(outcome["seconds"]), 1), "metric": metric,
            "value": float(outcome["challenger_metrics"][metric]), "tag": outcome["challenger_tag"],
            "train_seconds": outcome.get("train_seconds") or meta.get("train_seconds"),
            "epochs_run": meta.get("epochs_run"), "started_from": outcome.get("warm_start"),
            "learning_rate": (meta.get("train_config") or {}).get("learning_rate"),
            "promoted": bool(outcome["promoted"]), "under_traffic": under_traffic,
            "holdout_rows": int(outcome["holdout_rows"])}


def compare_warm_starts(run_home: Home, outcome: dict, cfg: RetrainConfig) -> dict:
    """Retrain ``outcome``'s champion once more from the other warm start on the same feedback; gate only.

    Args:
        run_home: the demo run's home.
        outcome: the promoted retrain (``RetrainOutcome.to_dict()``, :func:`promoted_retrain`); its
            challenger's lineage names the newest feedback seq it trained on.
        cfg: the monitor's retrain config (its ``warm_start`` is the one the promoted run used).

    Returns:
        ``{"champion": {...}, "base": {...}, "default": cfg.warm_start, "champion_value": the champion's
        holdout value, "feedback_seq_until": int, "same_holdout": bool}``; each side ``{"seconds" (whole
        retrain: train, save, gate), "metric" (the task's primary metric), "value" (on the holdout),
        "train_seconds", "epochs_run", "learning_rate", "tag", "started_from", "promoted",
        "under_traffic", "holdout_rows"}``.

    Raises:
        tuneloop.state.registry.ModelNotFoundError: a tag of ``outcome`` is not in the store.
    """
    default = cfg.warm_start
    other = "base" if default == "champion" else "champion"
    meta = dict(get_model(run_home, outcome["challenger_tag"]).info.metadata)
    until = (((meta.get("lineage") or {}).get("feedback") or {}).get("feedback_seq") or [None, None])[1]
    labelled = TrafficLog(run_home.store_url).labelled()
    if until is not None:
        labelled = labelled[labelled["feedback_seq"] <= until].reset_index(drop=True)
    log.info("warm-start comparison: retraining %s from %s on feedback up to seq %s (not promoted)",
             outcome["champion_tag"], other, until)
    extra = retrain_and_gate(run_home, outcome["champion_tag"], labelled, cfg.model_copy(update={"warm_start": other}),
                             lineage={"kind": COMPARISON, "of": outcome["challenger_tag"]}, actor="demo",
                             promote_winner=False).to_dict()
    metric = task_of(meta).primary_metric
    return {default: _entry(run_home, outcome, metric, under_traffic=True),
            other: _entry(run_home, extra, metric, under_traffic=False),
            "default": default, "champion_value": float(outcome["champion_metrics"][metric]),
            "feedback_seq_until": until, "same_holdout": outcome["holdout_rows"] == extra["holdout_rows"]}


def watch_outcome(run_home: Home, tag: str | None, requests: int) -> dict:
    """The post-swap watch's outcome for the promoted champion ``tag``.

    Args:
        run_home: the demo run's home (its event log).
        tag: the promoted challenger (None: nothing was promoted).
        requests: requests the new champion answered in the demo (reported while the watch is pending).

    Returns:
        The newest ``watched`` or ``rolled_back`` event of ``tag`` as ``{"verdict", "reason", "at",
        **detail}`` (verdict ``kept`` or ``rolled_back``); ``{"verdict": "pending", "requests": n}``
        when the watch had not ended by the end of the demo; ``{"verdict": "none"}`` without a promotion.
    """
    if tag is None:
        return {"verdict": "none", "requests": 0}
    events = [e for e in EventLog(run_home.store_url).events(tag=tag) if e.kind in (WATCHED, ROLLED_BACK)]
    if not events:
        return {"verdict": "pending", "requests": int(requests)}
    last = events[-1]
    verdict = last.detail.get("verdict") or ("rolled_back" if last.kind == ROLLED_BACK else "kept")
    return {**last.detail, "verdict": verdict, "reason": last.reason, "at": last.created_at, "event": last.kind}
