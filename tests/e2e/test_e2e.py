"""The whole loop, for real: the shipped MiniLM fine-tuned on a slice of Banking77, a real
``bentoml serve`` and a real ``tuneloop monitor`` process on 127.0.0.1, in-distribution traffic,
drift, retrain, gate, hot swap, and traffic after it. Minutes on 2 CPU cores: marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

N_INTENTS = 12


@pytest.fixture()
def banking77_slice(banking77_dir, tmp_path) -> Path:
    train = pd.read_csv(banking77_dir / "train.csv")
    test = pd.read_csv(banking77_dir / "test.csv")
    intents = sorted(train["category"].unique())[:: 77 // N_INTENTS][:N_INTENTS]
    out = tmp_path / "banking77-slice"
    out.mkdir()
    train[train["category"].isin(intents)].to_csv(out / "train.csv", index=False)
    test[test["category"].isin(intents)].to_csv(out / "test.csv", index=False)
    return out


def test_demo_loop_end_to_end(banking77_slice, home):
    from tuneloop.apps.demo import DemoConfig, run_demo

    # min_new_labels 180: the warm monitor detects the drift ~90 requests after onset, when most of
    # the labels are still in-distribution ones (52 + ~30); retraining then (at 80 labels) gained
    # +0.01 macro F1 and did not help live traffic. 180 labels is what the retrain saw when
    # detection came later (186 in the cold-monitor runs), i.e. ~120 labels of drifted traffic.
    cfg = DemoConfig(data=str(banking77_slice), quick=True, scarce_intents=3, scarce_examples=5,
                     in_distribution_requests=200, after_retrain_requests=200, min_window=60,
                     min_new_labels=180, rate=25.0, monitor_interval=1.0, timeout_minutes=15,
                     compare_warm_start=False)  # one retrain more; tests/unit/test_schedule_retrain.py covers it
    report, run_dir = run_demo(cfg, home)
    assert report["warm_start"] is None
    assert report["watch"]["verdict"] in ("kept", "pending"), report["watch"]  # the good challenger stays
    assert json.loads((run_dir / "report.json").read_text())["retrain"] == report["retrain"]
    phases = {p["name"]: p for p in report["phases"]}
    assert report["initial_model"]["test_accuracy"] >= 0.85, report["initial_model"]
    assert all(p["failed_requests"] == 0 for p in phases.values()), phases
    assert phases["in_distribution"]["drift_alarms"] == 0, report["decisions"]
    assert report["drift_detected_at_request"] is not None, report["decisions"]
    assert report["detection_delay_requests"] <= 300
    assert report["retrain"]["triggered"] and report["retrain"]["promoted"], report["retrain"]
    assert report["retrain"]["challenger_accuracy"] > report["retrain"]["champion_accuracy"]
    assert report["swap"]["failed_requests"] == 0
    assert phases["after_retrain"]["requests"] == 200
    assert phases["after_retrain"]["models"] == [report["retrain"]["challenger_tag"]]
    # Live accuracies over 200-400 requests each: the sd of their difference is ~0.04, and the
    # expected gain on this 12-intent slice ~0.1 (observed +0.09 and more); 0.03 keeps the check
    # meaningful ("retraining helped live traffic") without failing on sampling noise. The full demo
    # checks a gain >= 0.15 on 400-request phases.
    assert phases["after_retrain"]["live_accuracy"] > phases["drift"]["live_accuracy"] + 0.03, phases
    assert report["evidently_reports"] and all(Path(p).exists() for p in report["evidently_reports"])
