"""The monitor wires the new signals: one cycle embeds the window with the champion, estimates its
accuracy from calibrated confidences, exports every figure, audits the decision with its signals, and
publishes the labelling queue when a retrain is warranted but labels are missing (tiny champion)."""

from __future__ import annotations

import json
import time

import prometheus_client
from conftest import TINY_LABELS

from tuneloop.monitoring.label_queue import QUEUE_FILE, read_queue
from tuneloop.state.audit import AuditLog
from tuneloop.state.registry import read_champion
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

DRIFTED = ["I lost my card yesterday, what do I do", "how do I top up by bank transfer?", "refund has not arrived!!",
           "my new card still has not come", "can I get my money back for this", "top-up failed twice today"]


def _log(traffic, texts, tag, labels=None):
    recs = [PredictionRecord(f"{time.time_ns()}-{i}", time.time(), t, TINY_LABELS[0], 0.3 + 0.01 * i,
                             [(TINY_LABELS[0], 0.3)], tag, 5.0) for i, t in enumerate(texts)]
    traffic.log_predictions(recs)
    for rec, label in zip(recs, labels or []):
        if label is not None:
            traffic.add_feedback(rec.request_id, label)
    return recs


def _sample(registry, name, **labels):
    return registry.get_sample_value(name, labels or None)


def test_cycle_exports_every_signal_and_queues_requests_to_label(champion_home):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig

    cfg = MonitorConfig(metrics_port=None, interval_seconds=5, evidently_project="t", label_queue_size=10,
                        policy={"min_window": 20, "min_new_labels": 1000})
    mon = Monitor(champion_home, cfg)
    traffic, tag = TrafficLog(champion_home.traffic_db_path), read_champion(champion_home).tag
    reg = mon.metrics.registry
    assert mon.cycle().action == "skip_small_window"  # no traffic: checked, nothing judged
    assert _sample(reg, "tuneloop_monitor_last_check_timestamp_seconds") > 0
    assert _sample(reg, "tuneloop_monitor_last_cycle_timestamp_seconds") == 0
    assert _sample(reg, "tuneloop_monitor_champion_info", tag=tag) == 1
    assert _sample(reg, "tuneloop_monitor_interval_seconds") == 5
    assert _sample(reg, "tuneloop_monitor_retrains_total", outcome="failed") == 0  # series exist from the start

    texts = (DRIFTED * 10)[:60]
    labels = [TINY_LABELS[(i % 3) + 1] if i % 2 == 0 else None for i in range(60)]  # all wrong: accuracy 0
    _log(traffic, texts, tag, labels)
    result = mon.cycle()
    assert result.degraded and result.action == "need_labels", result.reason
    body = prometheus_client.generate_latest(reg).decode()
    for signal in ("text_drift", "descriptor_drift", "embedding_drift", "label_drift", "confidence_drift",
                   "accuracy_drop"):
        assert f'tuneloop_monitor_drift_p_value{{signal="{signal}"}}' in body, signal
    assert _sample(reg, "tuneloop_monitor_drift_fired", signal="embedding_drift") == 1
    assert _sample(reg, "tuneloop_monitor_descriptor_mean", descriptor="oov_share", sample="current") > 0
    assert _sample(reg, "tuneloop_monitor_feedback_accuracy") == 0 and _sample(reg, "tuneloop_monitor_window_labels") == 30
    assert _sample(reg, "tuneloop_monitor_feedback_accuracy_ci", bound="high") < 0.15
    assert 0 <= _sample(reg, "tuneloop_monitor_estimated_accuracy") <= 1
    assert _sample(reg, "tuneloop_monitor_need_labels") == 1 and _sample(reg, "tuneloop_monitor_degraded") == 1
    assert _sample(reg, "tuneloop_monitor_labels_needed") == 1000 - 30
    assert _sample(reg, "tuneloop_monitor_decisions_total", action="need_labels") == 1
    assert _sample(reg, "tuneloop_monitor_label_queue_size") == 10
    assert any(_sample(reg, "tuneloop_monitor_intent_recall", intent=i) is not None for i in TINY_LABELS)

    queue = read_queue(champion_home.root / QUEUE_FILE)
    assert queue["champion"] == tag and len(queue["items"]) == 10
    unlabelled = {t for t, l in zip(texts, labels) if l is None}
    assert all(item["text"] in unlabelled for item in queue["items"])
    scores = [item["score"] for item in queue["items"]]
    assert scores == sorted(scores, reverse=True) and all(item["novelty"] is not None for item in queue["items"])

    (row,) = AuditLog(champion_home.traffic_db_path).decisions().itertuples()
    sig = row.signals
    assert sig["labels_needed"] == 970 and sig["estimated_accuracy"] is not None and sig["accuracy_ci"]
    fired = {s["name"] for s in sig["signals"] if s["fired"]}
    assert {"embedding_drift", "accuracy_drop"} <= fired
    assert "need_labels" in row.reason and "label the queued requests" in row.reason
    saved = json.loads(open(row.report_path).read())
    metrics = {m["metric_name"].split("(")[0] for m in saved["evidently"]["metrics"]}
    assert {"ValueDrift", "EmbeddingsDriftScore", "MeanValue"} <= metrics


def test_monitor_without_embeddings_still_judges(champion_home):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig

    mon = Monitor(champion_home, MonitorConfig(metrics_port=None, evidently_project=None, save_html=False,
                                               embeddings=False, label_queue_size=0, policy={"min_window": 20}))
    _log(TrafficLog(champion_home.traffic_db_path), DRIFTED * 4, read_champion(champion_home).tag)
    result = mon.cycle()
    assert result.action in {"none", "wait", "need_labels"}
    (row,) = AuditLog(champion_home.traffic_db_path).decisions().itertuples()
    emb = next(s for s in row.signals["signals"] if s["name"] == "embedding_drift")
    assert emb["p_value"] is None and "not computed" in emb["method"]
    assert not (champion_home.root / QUEUE_FILE).exists()
