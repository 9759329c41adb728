"""The generation demo's ``report.json``: the classification demo's keys, with live ROUGE-L in place
of live accuracy, and the evaluation figures of the initial model and of the challenger.

Request indices are 0-based in sending order across phases; a window's alarm is placed at the index
of its last request. Live ROUGE-L of a request: its answer against the data set's reply for it
(:func:`tuneloop.training.gen_metrics.rouge_l_each`).
"""

from __future__ import annotations

import time

import pandas as pd

from tuneloop.apps.demo_report import decision_rows, decision_timeline, detection, swap_figures
from tuneloop.state.home import Home
from tuneloop.state.registry import get_model
from tuneloop.training.gen_metrics import rouge_l_each

PHASES = ("in_distribution", "drift", "after_retrain")
SUMMARY = ("perplexity", "rougeL", "bleu", "chrf", "stop_rate", "placeholder_fidelity", "length_ratio", "n", "n_perplexity")


def _metrics(metrics: dict | None) -> dict | None:
    return {k: metrics[k] for k in SUMMARY if k in metrics} if metrics else None


def build_gen_report(cfg, run_home: Home, pools, initial, answers: list[dict], started: float) -> dict:
    """The report (see the module docstring and the README's demo section for every key)."""
    out = pd.DataFrame(answers)
    if out.empty:
        out = pd.DataFrame(columns=["index", "phase", "ok", "reply", "reference", "request_id", "model_tag", "sent_at",
                                    "feedback", "finish_reason"])
    ok = out[out["ok"].astype(bool)]
    out["rouge_l"] = None
    if len(ok):
        out.loc[ok.index, "rouge_l"] = rouge_l_each(ok["reply"].fillna("").tolist(), ok["reference"].tolist())
    _, decisions = decision_timeline(run_home, out)
    phases = []
    for name in PHASES:
        rows = out[out["phase"] == name]
        good = rows[rows["ok"].astype(bool)]
        dec = decisions[decisions["end_phase"] == name] if len(decisions) else decisions
        phases.append({
            "name": name, "requests": int(len(rows)), "failed_requests": int((~rows["ok"].astype(bool)).sum()),
            "live_rouge_l": float(good["rouge_l"].astype(float).mean()) if len(good) else None,
            "stop_rate": float((good["finish_reason"] == "stop").mean()) if len(good) else None,
            "drift_alarms": int(dec["degraded"].sum()) if len(dec) else 0, "windows_judged": int(len(dec)),
            "feedback_sent": int(rows["feedback"].astype(bool).sum()),
            "first_request": int(rows["index"].min()) if len(rows) else None,
            "models": sorted(good["model_tag"].dropna().unique().tolist()),
        })
    onset, detected = detection(out, decisions)
    retrains = decisions[decisions["retrain"].notna()] if len(decisions) else decisions
    retrain = {"triggered": bool(len(retrains)), "challenger_tag": None, "promoted": False, "seconds": None,
               "challenger_metrics": None, "champion_metrics": None}
    if len(retrains):
        promoted = retrains[retrains["retrain"].map(lambda r: bool(r.get("promoted")))]
        chosen = (promoted if len(promoted) else retrains).iloc[0]["retrain"]
        retrain = {"triggered": True, "challenger_tag": chosen.get("challenger_tag"), "promoted": bool(chosen.get("promoted")),
                   "seconds": round(chosen.get("seconds", 0.0), 1), "holdout_rows": chosen.get("holdout_rows"),
                   "feedback_train_rows": chosen.get("feedback_train_rows"), "gate_reason": chosen.get("reason"),
                   "challenger_metrics": _metrics(chosen.get("challenger_metrics")),
                   "champion_metrics": _metrics(chosen.get("champion_metrics")), "retrains": int(len(retrains))}
    swap = swap_figures(out, run_home, initial.tag, retrain["promoted"])
    challenger_eval = None
    if retrain["challenger_tag"]:
        challenger_eval = _metrics(dict(get_model(run_home, retrain["challenger_tag"]).info.metadata)["metrics"]["test"])
    reports = sorted({p for p in decisions["report_path"].dropna()}) if len(decisions) else []
    report = {
        "config": cfg.model_dump(mode="json"),
        "pools": {"train_rows": len(pools.train), "holdout_rows": len(pools.holdout),
                  "replay_known_rows": len(pools.replay_known), "replay_scarce_rows": len(pools.replay_scarce),
                  "scarce_categories": pools.scarce_categories},
        "initial_model": {"tag": initial.tag, "train_seconds": round(initial.seconds, 1), "epochs_run": initial.epochs_run,
                          **{f"test_{k}": v for k, v in (_metrics(initial.test_metrics) or {}).items()}},
        "evaluation": {"initial": _metrics(initial.test_metrics), "challenger": challenger_eval},
        "phases": phases,
        "drift_onset_request": onset,
        "drift_detected_at_request": detected,
        "detection_delay_requests": (detected - onset) if detected is not None and onset is not None else None,
        "retrain": retrain,
        "swap": swap,
        "decisions": decision_rows(decisions),
        "evidently_reports": reports + [p.replace(".json", ".html") for p in reports],
        "evidently_workspace": str(run_home.evidently_dir),
        "wall_seconds": round(time.time() - started, 1),
    }
    report["checks"] = gen_checks(report)
    return report


def gen_checks(report: dict) -> dict[str, bool]:
    """The generation demo's acceptance criteria (issue 11), each True/False."""
    ph = {p["name"]: p for p in report["phases"]}
    drift_r, after_r = ph["drift"]["live_rouge_l"], ph["after_retrain"]["live_rouge_l"]
    delay = report["detection_delay_requests"]
    return {
        "wall_time<=20min": report["wall_seconds"] <= 20 * 60,
        "no_alarm_in_distribution": ph["in_distribution"]["drift_alarms"] == 0,
        "detected_within_200_requests": delay is not None and delay <= 200,
        "retrain_promoted": bool(report["retrain"]["promoted"]),
        "after_retrain_rouge_l_gain>=0.05": drift_r is not None and after_r is not None and after_r - drift_r >= 0.05,
        "zero_failed_requests": all(p["failed_requests"] == 0 for p in report["phases"])
                                and report["swap"]["failed_requests"] == 0,
    }
