"""The loop's pieces: demo pools never leak holdout texts, feedback splits deterministically,
the gate judges, a retrain on feedback promotes a challenger, and a monitor cycle audits its
decision."""

from __future__ import annotations

import random
import time

import pandas as pd
import pytest
from conftest import TINY_LABELS

from tuneloop.apps.demo_data import build_pools, make_queries
from tuneloop.monitoring.gate import GateConfig, judge
from tuneloop.monitoring.retrain import RetrainConfig, retrain_and_gate, split_feedback
from tuneloop.state.audit import AuditLog
from tuneloop.state.registry import read_champion
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog


def _frame(labels, n, tag):
    return pd.DataFrame([{"text": f"{tag} {l} query {i}", "label": l} for l in labels for i in range(n)])


def test_demo_pools_are_disjoint_from_holdout():
    labels = [f"intent_{i}" for i in range(12)]
    train, test = _frame(labels, 20, "train"), _frame(labels, 8, "test")
    pools = build_pools(train, test, scarce_intents=3, scarce_examples=5, seed=1)
    assert len(pools.scarce_intents) == 3
    counts = pools.initial_train["label"].value_counts()
    assert all(counts[l] == 5 for l in pools.scarce_intents) and counts.max() == 20
    held = set(pools.holdout["text"])
    assert not held & set(pools.known_pool["text"]) and not held & set(pools.scarce_pool["text"])
    assert set(pools.scarce_pool["label"]) == set(pools.scarce_intents)
    assert not set(pools.known_pool["label"]) & set(pools.scarce_intents)
    assert len(pools.holdout) == 12 * 4  # half of each intent's test rows
    q = make_queries(pools, 400, 0.6, 0.3, random.Random(0))
    share = sum(x.label in pools.scarce_intents for x in q) / len(q)
    assert 0.5 < share < 0.7 and 0.2 < sum(x.noisy for x in q) / len(q) < 0.4
    assert make_queries(pools, 20, 0.6, 0.3, random.Random(5)) == make_queries(pools, 20, 0.6, 0.3, random.Random(5))


def test_split_feedback_is_deterministic_per_request():
    fb = pd.DataFrame({"request_id": [f"r{i}" for i in range(200)], "text": [f"t{i}" for i in range(200)],
                       "true_label": ["a"] * 200})
    train1, held1 = split_feedback(fb, 0.2)
    train2, held2 = split_feedback(fb.iloc[::-1], 0.2)
    assert set(held1["text"]) == set(held2["text"]) and 20 < len(held1) < 60
    assert len(train1) + len(held1) == 200


def test_gate_needs_a_margin():
    champ = {"accuracy": 0.80, "macro_f1": 0.78}
    assert judge(champ, {"accuracy": 0.85, "macro_f1": 0.84}, GateConfig(min_gain=0.01), 100).promoted
    verdict = judge(champ, {"accuracy": 0.80, "macro_f1": 0.785}, GateConfig(min_gain=0.01), 100)
    assert not verdict.promoted and "needs >= 0.0100" in verdict.reason
    assert not judge(champ, {"accuracy": 0.7, "macro_f1": 0.9}, GateConfig(), 100).promoted  # accuracy fell


def _log(traffic: TrafficLog, rows: list[tuple[str, str]], tag: str, feedback_every: int = 0) -> list[str]:
    ids = []
    recs = []
    for i, (text, label) in enumerate(rows):
        rid = f"{time.time_ns()}-{i}"
        recs.append(PredictionRecord(rid, time.time(), text, label, 0.9, [(label, 0.9)], tag, 5.0))
        ids.append(rid)
    traffic.log_predictions(recs)
    if feedback_every:
        for rid, (_, label) in list(zip(ids, rows))[::feedback_every]:
            traffic.add_feedback(rid, label)
    return ids


@pytest.mark.timeout(300)
def test_retrain_on_feedback_saves_and_promotes_challenger(home, tmp_path):
    from conftest import write_intent_csv as _write_csv
    from conftest import write_tiny_model

    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    data = tmp_path / "data"
    data.mkdir()
    _write_csv(data / "train.csv", 10)
    _write_csv(data / "test.csv", 3, seed=1, offset=1000)
    base = tmp_path / "base"
    write_tiny_model(base, labels=["a", "b"])
    first = train(TrainConfig(data=str(data), base_model=str(base), epochs=1, batch_size=8, progress=False), home)
    traffic = TrafficLog(home.traffic_db_path)
    rows = [(f"{l.replace('_', ' ')} from feedback {i}", l) for l in TINY_LABELS for i in range(10)]
    _log(traffic, rows, first.tag, feedback_every=1)
    cfg = RetrainConfig(overrides={"epochs": 1, "base_model": str(base)}, gate=GateConfig(min_gain=-1.0, max_accuracy_drop=1.0))
    outcome = retrain_and_gate(home, first.tag, traffic.labelled(), cfg)
    assert outcome.promoted and read_champion(home).tag == outcome.challenger_tag != first.tag
    assert read_champion(home).previous == first.tag
    assert outcome.feedback_train_rows + outcome.feedback_holdout_rows == 40
    assert outcome.holdout_rows == 12 + outcome.feedback_holdout_rows
    strict = RetrainConfig(overrides={"epochs": 1, "base_model": str(base)}, gate=GateConfig(min_gain=1.0))
    rejected = retrain_and_gate(home, outcome.challenger_tag, traffic.labelled(), strict)
    assert not rejected.promoted and read_champion(home).tag == outcome.challenger_tag
    assert "keep champion" in rejected.reason


def test_monitor_cycle_skips_small_windows_then_audits(champion_home):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig

    cfg = MonitorConfig(metrics_port=None, evidently_project="tuneloop-test",
                        policy={"min_window": 30, "min_new_labels": 1000})
    mon = Monitor(champion_home, cfg)
    traffic = TrafficLog(champion_home.traffic_db_path)
    tag = read_champion(champion_home).tag
    ref = mon.reference(tag)
    _log(traffic, [(t, l) for t, l in zip(ref["text"], ref["label"])], tag)
    first = mon.cycle()
    assert first.action == "skip_small_window" and "20 new rows < min_window 30" in first.reason
    _log(traffic, [(t, l) for t, l in zip(ref["text"], ref["label"])], tag)
    result = mon.cycle()
    assert result.action in {"none", "wait"} and result.window_start_seq == 1 and result.window_end_seq == 40
    audit = AuditLog(champion_home.traffic_db_path)
    decisions = audit.decisions()
    assert len(decisions) == 1 and decisions.iloc[0]["window_size"] == 40
    assert {s["name"] for s in decisions.iloc[0]["signals"]["signals"]} >= {"text_drift", "label_drift", "confidence_drift"}
    assert audit.get_state("cursor") == 40
    assert (champion_home.reports_dir / "window-000000001-000000040.html").exists()
    assert any(champion_home.evidently_dir.iterdir())
    body = __import__("prometheus_client").generate_latest(mon.metrics.registry).decode()
    assert "tuneloop_monitor_window_rows 40.0" in body and 'tuneloop_monitor_drift_score{signal="text_drift"}' in body
