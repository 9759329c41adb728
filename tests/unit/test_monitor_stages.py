"""The monitoring cycle's stages on their own (seconds, no model): the drift signals as one function
each over a WindowContext, assembled in ALL_SIGNALS order; decide's small-window rule and label count;
act's explicit feedback cursor after a retrain that completes, is busy, or fails."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitoring import act as act_module
from tuneloop.monitoring.act import ActContext, act, retrain_lock
from tuneloop.monitoring.decide import decide_window, small_window_reason
from tuneloop.monitoring.drift import SIGNAL_FUNCTIONS, assemble_report, compute_signals
from tuneloop.monitoring.exporter import MonitorMetrics
from tuneloop.monitoring.measure import measure
from tuneloop.monitoring.monitor_config import FEEDBACK_CURSOR_KEY, MonitorConfig
from tuneloop.monitoring.observe import Observation, WindowSpan
from tuneloop.monitoring.policy import Decision, DriftPolicy, PolicyState
from tuneloop.monitoring.retrain import RetrainOutcome
from tuneloop.monitoring.signals import ALL_SIGNALS, DriftConfig, SignalResult, WindowReport
from tuneloop.monitoring.window_context import window_context
from tuneloop.state.audit import AuditLog
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

VOCAB = {"where", "is", "my", "card", "top", "up", "failed", "refund"}
FAST = DriftConfig(label_permutations=200, embedding_permutations=200, max_reference_rows=80, max_current_rows=40)


def _frame(rng: np.random.Generator, n: int, words: list[str], labelled: float = 0.5) -> pd.DataFrame:
    labels = rng.choice(["a", "b", "c"], n)
    return pd.DataFrame({"text": [" ".join(rng.choice(words, 4)) for _ in range(n)], "label": labels,
                         "confidence": rng.beta(6, 1, n),
                         "true_label": np.where(rng.random(n) < labelled, labels, None)})


def test_signal_functions_assemble_the_report_in_all_signals_order():
    rng = np.random.default_rng(0)
    ref, cur = _frame(rng, 120, sorted(VOCAB)), _frame(rng, 60, ["crad", "topp", "refnud", "is"])
    emb_r, emb_c = rng.normal(0, 1, (120, 8)), rng.normal(0.5, 1, (60, 8))
    ctx = window_context(ref, cur, FAST, reference_embeddings=emb_r, current_embeddings=emb_c, vocab=VOCAB)
    assert len(ctx.ref) == 80 and len(ctx.cur) == 40 and ctx.has_embeddings
    assert list(ctx.current_positions) == sorted(ctx.current_positions)
    assert np.array_equal(ctx.current_embeddings, emb_c[ctx.current_positions])
    m = measure(ctx, with_report=False)
    assert list(SIGNAL_FUNCTIONS) == list(ALL_SIGNALS)
    for name, signal in SIGNAL_FUNCTIONS.items():
        assert signal(ctx, m).name == name
    report = assemble_report(ctx, m, started=time.time())
    assert [s.name for s in report.signals] == list(ALL_SIGNALS)
    wrapped = compute_signals(ref, cur, FAST, reference_embeddings=emb_r, current_embeddings=emb_c, vocab=VOCAB,
                              with_report=False)  # the wrapper: the same numbers
    skip = {"computed_at", "seconds"}
    assert wrapped.model_dump(exclude=skip) == report.model_dump(exclude=skip)


def test_window_context_rejects_embeddings_that_do_not_match_their_rows():
    rng = np.random.default_rng(1)
    ref, cur = _frame(rng, 30, sorted(VOCAB)), _frame(rng, 20, sorted(VOCAB))
    with pytest.raises(ValueError, match="current 19 vs 20"):
        window_context(ref, cur, FAST, reference_embeddings=np.zeros((30, 4)), current_embeddings=np.zeros((19, 4)))
    with pytest.raises(ValueError, match="current 3 vs 20"):  # a function that returns too few rows
        window_context(ref, cur, FAST, reference_embeddings=np.zeros((30, 4)),
                       current_embeddings=lambda texts: np.zeros((3, 4)))
    ctx = window_context(ref, cur, FAST, reference_embeddings=np.zeros((30, 4)))  # one side only: no embeddings
    assert not ctx.has_embeddings and ctx.reference_embeddings is None


def _report(n: int = 60, n_labels: int = 0) -> WindowReport:
    signals = [SignalResult(name=name, method="p-value", value=1.0, threshold=0.01, fired=False, p_value=1.0)
               for name in ALL_SIGNALS[:-1]]  # no accuracy_drop figures: no labelled reference rows
    signals.append(SignalResult(name=ALL_SIGNALS[-1], method="drop", value=None, threshold=0.1, fired=False))
    return WindowReport(signals=signals, n_current=n, n_reference=100, n_labels=n_labels, accuracy=None,
                        macro_f1=None, reference_accuracy=None, computed_at=1000.0, seconds=0.1)


def test_decide_skips_small_windows_and_counts_labels_from_the_feedback_cursor():
    policy = DriftPolicy(min_window=50, min_new_labels=40)
    assert small_window_reason(WindowSpan(cursor=10, end=59), policy) == "49 new rows < min_window 50"
    assert small_window_reason(WindowSpan(cursor=10, end=60), policy) is None
    obs = Observation("m:1", WindowSpan(0, 60), pd.DataFrame(), _report(n_labels=30), PolicyState(),
                      feedback_cursor=7, new_labels=12)
    decision = decide_window(obs, policy)
    assert decision.action == "none" and decision.state.labels_since_retrain == 12  # new_labels, not n_labels


def _traffic_with_feedback(home, n: int = 12, labelled: int = 5) -> TrafficLog:
    traffic = TrafficLog(home.traffic_db_path)
    recs = [PredictionRecord(f"r{i}", time.time(), f"text {i}", "a", 0.9, [("a", 0.9)], "m:1", 5.0) for i in range(n)]
    traffic.log_predictions(recs)
    for rec in recs[:labelled]:
        traffic.add_feedback(rec.request_id, "b")
    return traffic


def _act(home, traffic: TrafficLog, metrics: MonitorMetrics | None = None, feedback_cursor: int = 0):
    cfg = MonitorConfig(metrics_port=None, save_html=False, evidently_project=None, label_queue_size=0)
    ctx = ActContext(home, cfg, traffic, AuditLog(home.traffic_db_path), metrics or MonitorMetrics())
    end = traffic.max_seq()
    obs = Observation("m:1", WindowSpan(0, end), traffic.read_window(0, end), _report(n=end), PolicyState(),
                      feedback_cursor=feedback_cursor, new_labels=5)
    decision = Decision(degraded=True, action="retrain", reason="retrain: test.", fired=[],
                        state=PolicyState(windows=1, last_retrain_window=1))
    return act(ctx, obs, decision)


def _outcome(promoted: bool) -> RetrainOutcome:
    return RetrainOutcome("m:1", "m:2", {"accuracy": 0.5}, {"accuracy": 0.6}, promoted, "better", 4, 1, 20, 1.0)


def test_act_retrain_returns_the_feedback_cursor_as_a_field(home, monkeypatch):
    traffic = _traffic_with_feedback(home)
    seen = []
    monkeypatch.setattr(act_module, "retrain_and_gate",
                        lambda home, tag, labelled, cfg, recent_unlabelled=None, **_: seen.append(len(labelled))
                        or _outcome(True))
    result = _act(home, traffic, feedback_cursor=2)
    newest = int(traffic.labelled()["feedback_seq"].max())
    assert seen == [5] and result.action == "retrain_promoted" and result.reason == "retrain: test. Gate: better."
    assert result.feedback_cursor == newest and result.retrain == _outcome(True).to_dict()
    audit = AuditLog(home.traffic_db_path)
    assert audit.get_state(FEEDBACK_CURSOR_KEY) == newest and audit.get_state("cursor") == 12
    (row,) = audit.decisions().itertuples()
    assert row.decision == "retrain_promoted" and row.challenger_tag == "m:2" and row.retrain == result.retrain


def test_act_keeps_the_feedback_cursor_when_the_retrain_is_busy_or_fails(home, monkeypatch):
    traffic = _traffic_with_feedback(home)
    metrics = MonitorMetrics()
    with retrain_lock(home) as held:  # another monitor process is retraining
        assert held
        busy = _act(home, traffic, metrics, feedback_cursor=3)
    assert busy.action == "retrain_busy" and busy.feedback_cursor == 3 and busy.retrain is None

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(act_module, "retrain_and_gate", broken)
    failed = _act(home, traffic, metrics, feedback_cursor=3)
    assert failed.action == "retrain_failed" and "RuntimeError('out of memory')" in failed.reason
    assert failed.feedback_cursor == 3 and AuditLog(home.traffic_db_path).get_state(FEEDBACK_CURSOR_KEY) is None
    assert metrics.registry.get_sample_value("tuneloop_monitor_retrains_total", {"outcome": "failed"}) == 1
    assert metrics.registry.get_sample_value("tuneloop_monitor_retraining") == 0
