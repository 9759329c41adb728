"""Assemble the demo's ``report.json`` from the replay outcomes, the audit table and the traffic log.

Request indices are 0-based, in the order the demo sent them across all phases. A window's alarm
is placed at the index of its last request (its ``window_end_seq`` in the traffic log). A *drift
alarm* is a decision that found the model degraded (alarm confirmed over consecutive windows).
"""

from __future__ import annotations

import time

import pandas as pd

from tuneloop.apps.demo_data import DemoPools
from tuneloop.apps.demo_warm_start import watch_outcome
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import read_champion
from tuneloop.state.traffic_store import TrafficLog
from tuneloop.training.evaluate import classification_metrics

PHASES = ("in_distribution", "drift", "after_retrain")


def _initial_metrics(initial, pools: DemoPools, test_df: pd.DataFrame) -> dict:
    clf = initial.classifier
    known = pools.holdout[~pools.holdout["label"].isin(pools.scarce_intents)]
    pred_known, _ = clf.predict(known["text"].tolist())
    m_known = classification_metrics(known["label"].tolist(), pred_known, per_class=False)
    pred_all, _ = clf.predict(test_df["text"].tolist())
    m_all = classification_metrics(test_df["label"].tolist(), pred_all, per_class=False)
    scarce = test_df[test_df["label"].isin(pools.scarce_intents)]
    scarce_acc = (classification_metrics(scarce["label"].tolist(), clf.predict(scarce["text"].tolist())[0],
                                         per_class=False)["accuracy"] if len(scarce) else None)
    return {"tag": initial.tag, "test_accuracy": m_known["accuracy"], "test_macro_f1": m_known["macro_f1"],
            "test_rows": m_known["n"], "test_accuracy_all": m_all["accuracy"], "test_macro_f1_all": m_all["macro_f1"],
            "test_rows_all": m_all["n"], "scarce_intents_test_accuracy": scarce_acc,
            "train_seconds": round(initial.seconds, 1), "epochs_run": initial.epochs_run}


def decision_timeline(run_home: Home, out: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(traffic, decisions) of a demo run; each decision gets ``end_index`` and ``end_phase``, the
    replayed request (index in sending order, phase) that closed its window. Shared by both demos."""
    traffic = TrafficLog(run_home.store_url).read_window(0)
    seq_to_index = dict(zip(traffic["seq"], traffic["request_id"].map(dict(zip(out["request_id"], out["index"])))))
    decisions = AuditLog(run_home.store_url).decisions()
    if len(decisions):
        decisions["end_index"] = decisions["window_end_seq"].map(seq_to_index)
        decisions["end_phase"] = decisions["end_index"].map(dict(zip(out["index"], out["phase"])))
    return traffic, decisions


def detection(out: pd.DataFrame, decisions: pd.DataFrame) -> tuple[int | None, int | None]:
    """(drift onset: the first ``drift`` request's index, the index closing the first degraded window after it)."""
    drift_rows = out[out["phase"] == "drift"]
    onset = int(drift_rows["index"].min()) if len(drift_rows) else None
    detected = None
    if onset is not None and len(decisions):
        hits = decisions[decisions["degraded"] & (decisions["end_index"] >= onset)]
        detected = int(hits["end_index"].min()) if len(hits) else None
    return onset, detected


def swap_figures(out: pd.DataFrame, run_home: Home, initial_tag: str, promoted: bool) -> dict:
    """Failed requests within 5 s around the swap to the promoted champion, and how long after the
    promotion its first answer came (``out`` columns ok, model_tag, sent_at)."""
    pointer = read_champion(run_home)
    if not (promoted and pointer is not None and pointer.tag != initial_tag):
        return {"failed_requests": 0, "promoted_at": None, "first_answer_by_new_model_s": None}
    ok = out["ok"].astype(bool)
    new = out[ok & (out["model_tag"] == pointer.tag)]
    first_new = float(new["sent_at"].min()) if len(new) else pointer.promoted_at
    around = out[(out["sent_at"] >= pointer.promoted_at - 5) & (out["sent_at"] <= first_new + 5)]
    return {"failed_requests": int((~around["ok"].astype(bool)).sum()), "requests_around_swap": int(len(around)),
            "promoted_at": pointer.promoted_at, "first_answer_by_new_model_s": round(first_new - pointer.promoted_at, 2)}


def decision_rows(decisions: pd.DataFrame) -> list[dict]:
    """The report's ``decisions`` list."""
    return [{"end_index": None if pd.isna(r.end_index) else int(r.end_index), "phase": r.end_phase,
             "decision": r.decision, "degraded": bool(r.degraded), "reason": r.reason}
            for r in decisions.itertuples()] if len(decisions) else []


def estimation_error(decisions: pd.DataFrame, traffic: pd.DataFrame, out: pd.DataFrame) -> dict:
    """CBPE's error: each judged window's estimated accuracy (from calibrated confidences, no labels)
    against the true live accuracy of the same requests (the replay knows every true label).

    Returns:
        ``{"windows", "mae_points", "by_phase": {phase: {"windows", "mae_points"}}, "per_window": [...]}``;
        ``mae_points`` None when no window carried an estimate.
    """
    truth = dict(zip(out["request_id"], out["predicted"] == out["label"]))
    rows = []
    for d in decisions.itertuples():
        est = (d.signals or {}).get("estimated_accuracy")
        span = traffic[(traffic["seq"] >= d.window_start_seq) & (traffic["seq"] <= d.window_end_seq)]
        ok = [truth[r] for r in span["request_id"] if r in truth]
        if est is None or not ok:
            continue
        rows.append({"end_index": None if pd.isna(d.end_index) else int(d.end_index), "phase": d.end_phase,
                     "estimated_accuracy": float(est), "true_accuracy": float(sum(ok) / len(ok)), "rows": len(ok)})
    per = pd.DataFrame(rows)
    if per.empty:
        return {"windows": 0, "mae_points": None, "by_phase": {}, "per_window": []}
    per["error_points"] = (per["estimated_accuracy"] - per["true_accuracy"]).abs() * 100
    by_phase = {str(k): {"windows": int(len(g)), "mae_points": round(float(g["error_points"].mean()), 2)}
                for k, g in per.groupby("phase")}
    return {"windows": int(len(per)), "mae_points": round(float(per["error_points"].mean()), 2),
            "by_phase": by_phase, "per_window": per.round(4).to_dict(orient="records")}


def build_report(cfg, run_home: Home, pools: DemoPools, initial, test_df: pd.DataFrame, outcomes: list,
                 started: float, warm_start: dict | None = None) -> dict:
    """The demo report (see the module docstring and README for every key). ``warm_start``: the
    comparison of :func:`tuneloop.apps.demo_warm_start.compare_warm_starts` (None: not run)."""
    out = pd.DataFrame([o.to_dict() for o in outcomes]).sort_values("index") if outcomes else pd.DataFrame(
        columns=["index", "phase", "ok", "label", "predicted", "request_id", "sent_at", "model_tag"])
    traffic, decisions = decision_timeline(run_home, out)
    phases = []
    for name in PHASES:
        rows = out[out["phase"] == name]
        ok = rows[rows["ok"]]
        dec = decisions[decisions["end_phase"] == name] if len(decisions) else decisions
        phases.append({
            "name": name, "requests": int(len(rows)), "failed_requests": int((~rows["ok"]).sum()),
            "live_accuracy": float((ok["predicted"] == ok["label"]).mean()) if len(ok) else None,
            "drift_alarms": int(dec["degraded"].sum()) if len(dec) else 0,
            "windows_judged": int(len(dec)),
            "feedback_sent": int(rows["feedback"].sum()) if "feedback" in rows else 0,
            "first_request": int(rows["index"].min()) if len(rows) else None,
            "models": sorted(ok["model_tag"].dropna().unique().tolist()),
        })
    onset, detected = detection(out, decisions)
    retrains = decisions[decisions["retrain"].notna()] if len(decisions) else decisions
    retrain = {"triggered": bool(len(retrains)), "challenger_tag": None, "challenger_accuracy": None,
               "champion_accuracy": None, "promoted": False, "seconds": None}
    if len(retrains):
        first = retrains.iloc[0]["retrain"]
        promoted = retrains[retrains["retrain"].map(lambda r: r["promoted"])]
        chosen = promoted.iloc[0]["retrain"] if len(promoted) else first
        retrain = {"triggered": True, "challenger_tag": chosen["challenger_tag"],
                   "challenger_accuracy": chosen["challenger_metrics"]["accuracy"],
                   "champion_accuracy": chosen["champion_metrics"]["accuracy"],
                   "challenger_macro_f1": chosen["challenger_metrics"]["macro_f1"],
                   "champion_macro_f1": chosen["champion_metrics"]["macro_f1"],
                   "promoted": bool(chosen["promoted"]), "seconds": round(chosen["seconds"], 1),
                   "holdout_rows": chosen["holdout_rows"], "feedback_train_rows": chosen["feedback_train_rows"],
                   "gate_reason": chosen["reason"], "retrains": int(len(retrains))}
    swap = swap_figures(out, run_home, initial.tag, retrain["promoted"])
    reports = sorted({p for p in decisions["report_path"].dropna()}) if len(decisions) else []
    report = {
        "config": cfg.model_dump(mode="json"),
        "pools": pools.describe(),
        "initial_model": _initial_metrics(initial, pools, test_df),
        "phases": phases,
        "drift_onset_request": onset,
        "drift_detected_at_request": detected,
        "detection_delay_requests": (detected - onset) if detected is not None and onset is not None else None,
        "retrain": retrain,
        "swap": swap,
        "watch": watch_outcome(run_home, retrain["challenger_tag"] if retrain["promoted"] else None,
                               int((out["ok"].astype(bool) & (out["model_tag"] == retrain["challenger_tag"])).sum())),
        "warm_start": warm_start,
        "estimation_error": (estimation_error(decisions, traffic, out) if len(decisions)
                             else {"windows": 0, "mae_points": None, "by_phase": {}, "per_window": []}),
        "decisions": decision_rows(decisions),
        "evidently_reports": [p for p in reports] + [p.replace(".json", ".html") for p in reports],
        "evidently_workspace": str(run_home.evidently_dir),
        "wall_seconds": round(time.time() - started, 1),
    }
    report["checks"] = checks(report)
    return report


def checks(report: dict) -> dict[str, bool]:
    """The acceptance criteria of the demo, each True/False."""
    ph = {p["name"]: p for p in report["phases"]}
    drift_acc, after_acc = ph["drift"]["live_accuracy"], ph["after_retrain"]["live_accuracy"]
    delay = report["detection_delay_requests"]
    return {
        "initial_test_accuracy>=0.85": report["initial_model"]["test_accuracy"] >= 0.85,
        "no_alarm_in_distribution": ph["in_distribution"]["drift_alarms"] == 0,
        "detected_within_300_requests": delay is not None and delay <= 300,
        "retrain_promoted": bool(report["retrain"]["promoted"]),
        "after_retrain_accuracy_gain>=0.15": (drift_acc is not None and after_acc is not None
                                             and after_acc - drift_acc >= 0.15),
        "zero_failed_requests": all(p["failed_requests"] == 0 for p in report["phases"])
                                and report["swap"]["failed_requests"] == 0,
    }
