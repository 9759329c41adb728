"""The post-swap watch: its pure decisions (monitoring/watch.py) on made-up samples, and one look after
another through the store (monitoring/watch_step.py) with traffic written straight into a SQLite home."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from conftest import save_tiny_llm, save_tiny_model
from scipy.stats import binomtest, ttest_1samp

from tuneloop.monitoring.watch import (
    ESTIMATED_ACCURACY,
    FEEDBACK_ACCURACY,
    FEEDBACK_ROUGE,
    KEPT,
    LATENCY,
    ROLLED_BACK,
    WATCHING,
    WatchConfig,
    WatchSignal,
    estimate_signal,
    feedback_accuracy_signal,
    feedback_rouge_signal,
    judge,
    latency_signal,
    logprob_signal,
)

CFG = WatchConfig()
RNG = np.random.default_rng(0)


def _correct(n: int, right: int) -> np.ndarray:
    return np.array([True] * right + [False] * (n - right))


def _neutral(n: int = 100) -> list[WatchSignal]:
    """Label-free and latency signals of a model as good as the previous one."""
    conf = RNG.random(n) > 0.2
    lat = RNG.normal(20, 2, n)
    return [estimate_signal(conf, conf.copy(), CFG), latency_signal(lat, lat + 0.1, CFG)]


def test_a_bad_models_live_accuracy_rolls_it_back_at_an_interim_look():
    sig = feedback_accuracy_signal(_correct(40, 12), gate_accuracy=0.90, cfg=CFG)
    assert sig.name == FEEDBACK_ACCURACY and sig.n == 40 and sig.value == pytest.approx(0.30) and sig.baseline == 0.90
    # H0: accuracy >= gate - tolerance = 0.85, exact binomial
    assert sig.p_value == pytest.approx(binomtest(12, 40, 0.85, alternative="less").pvalue) and sig.p_value < 1e-12
    verdict = judge([sig, *_neutral()], served=60, final=False, cfg=CFG)
    assert verdict.verdict == ROLLED_BACK and verdict.level == CFG.interim_alpha
    assert [s.name for s in verdict.signals if s.fired] == [FEEDBACK_ACCURACY]
    assert "feedback_accuracy 0.3 vs 0.9" in verdict.reason


def test_a_good_model_is_kept_at_the_final_look_and_watched_before():
    sig = feedback_accuracy_signal(_correct(150, 131), gate_accuracy=0.90, cfg=CFG)  # 0.873 vs 0.90
    assert sig.p_value > 0.5 and not sig.practical
    assert judge([sig, *_neutral()], served=120, final=False, cfg=CFG).verdict == WATCHING
    verdict = judge([sig, *_neutral()], served=200, final=True, cfg=CFG)
    assert verdict.verdict == KEPT and verdict.level == CFG.alpha and not any(s.fired for s in verdict.signals)
    assert verdict.reason.startswith("no regression in 200 requests")


def test_small_samples_never_fire():
    all_wrong = feedback_accuracy_signal(_correct(CFG.min_feedback - 1, 0), 0.95, CFG)
    assert all_wrong.p_value is None and all_wrong.n == 29 and all_wrong.value == 0.0
    few = CFG.min_rows - 1
    est = estimate_signal(np.zeros(few, bool), np.ones(500, bool), CFG)
    slow = latency_signal(np.full(few, 900.0), np.full(500, 10.0), CFG)
    lp = logprob_signal(np.full(few, -9.0), np.full(500, -0.5), CFG)
    rouge = feedback_rouge_signal(np.zeros(CFG.min_feedback - 1), 0.6, CFG)
    for sig in (est, slow, lp, rouge):
        assert sig.p_value is None and not sig.fired, sig
    for final in (False, True):
        verdict = judge([all_wrong, est, slow, rouge], served=few, final=final, cfg=CFG)
        assert verdict.verdict == (KEPT if final else WATCHING) and "tested: none" in verdict.reason


def test_no_gate_figure_means_no_feedback_test():
    sig = feedback_accuracy_signal(_correct(100, 0), None, CFG)
    assert sig.p_value is None and sig.value == 0.0


def test_generation_rouge_l_against_the_gate():
    bad = np.clip(RNG.normal(0.20, 0.1, 40), 0, 1)
    sig = feedback_rouge_signal(bad, gate_rouge=0.45, cfg=CFG)
    assert sig.name == FEEDBACK_ROUGE and sig.practical
    assert sig.p_value == pytest.approx(ttest_1samp(bad, 0.40, alternative="less").pvalue) and sig.p_value < 1e-8
    assert judge([sig], served=40, final=False, cfg=CFG).verdict == ROLLED_BACK
    good = np.clip(RNG.normal(0.46, 0.1, 40), 0, 1)
    fine = feedback_rouge_signal(good, gate_rouge=0.45, cfg=CFG)
    assert fine.p_value > 0.5 and judge([fine], served=200, final=True, cfg=CFG).verdict == KEPT
    constant = feedback_rouge_signal(np.full(40, 0.1), gate_rouge=0.45, cfg=CFG)  # no spread: no t statistic
    assert constant.p_value == 0.0 and constant.practical


def test_generation_logprob_drop_needs_significance_and_the_margin():
    prev = RNG.normal(-0.8, 0.2, 200)
    worse = logprob_signal(prev[:100] - 0.6, prev[100:], CFG)
    assert worse.practical and worse.p_value < 1e-10
    slightly = logprob_signal(prev[:100] - 0.1, prev[100:], CFG)  # significant-ish but under 0.25 nats
    assert not slightly.practical
    assert not judge([slightly], served=200, final=True, cfg=CFG).signals[0].fired


def test_estimate_drop_fires_on_a_lower_atc_share():
    sig = estimate_signal(np.array([True] * 40 + [False] * 60), np.array([True] * 85 + [False] * 15), CFG)
    assert sig.name == ESTIMATED_ACCURACY and sig.value == 0.40 and sig.baseline == 0.85
    assert sig.practical and sig.p_value < 1e-9
    assert judge([sig], served=100, final=False, cfg=CFG).verdict == ROLLED_BACK


def test_latency_needs_the_practical_margin():
    prev = RNG.normal(10, 1, 200)
    tiny_rise = latency_signal(prev + 3, prev, CFG)  # significant, but 3 ms < 10 ms and 30 % < 50 %
    assert tiny_rise.p_value < 1e-10 and not tiny_rise.practical
    doubled = latency_signal(prev * 2 + 5, prev, CFG)
    assert doubled.practical and doubled.value == pytest.approx(np.median(prev * 2 + 5))
    verdict = judge([tiny_rise], served=200, final=True, cfg=CFG)
    assert verdict.verdict == KEPT
    assert judge([doubled], served=200, final=True, cfg=CFG).signals[0].name == LATENCY


def test_holm_corrects_across_signals_and_interim_looks_use_the_stricter_level():
    def sig(name: str, p: float) -> WatchSignal:
        return WatchSignal(name=name, method="made up", n=100, min_n=30, margin=0.0, p_value=p, practical=True)

    three = [sig("a", 0.03), sig("b", 0.04), sig("c", 0.9)]  # each < 0.05 alone, none after Holm
    verdict = judge(three, served=200, final=True, cfg=CFG)
    assert [s.adjusted_p for s in verdict.signals] == pytest.approx([0.09, 0.09, 0.9])
    assert verdict.verdict == KEPT
    one = [sig("a", 0.01)]
    assert judge(one, served=200, final=True, cfg=CFG).verdict == ROLLED_BACK
    assert judge(one, served=100, final=False, cfg=CFG).verdict == WATCHING  # Haybittle-Peto: 0.001 before the end


# --- through the store ------------------------------------------------------------------------

def _log(home, tag: str, n: int, right: int | None, start: float, labels=("card_arrival", "lost_card"),
         latency_ms: float = 20.0) -> None:
    """Log ``n`` predictions of ``tag`` (label ``labels[0]``); the first ``right`` of them get the same
    true label, the next ones another (None: no feedback)."""
    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    traffic = TrafficLog(home.store_url)
    ids = [uuid.uuid4().hex for _ in range(n)]
    traffic.log_predictions([PredictionRecord(
        request_id=rid, created_at=start + i * 1e-3, text=f"where is my card {i}", label=labels[0], confidence=0.9,
        top3=[(labels[0], 0.9)], model_tag=tag, latency_ms=latency_ms + (i % 5)) for i, rid in enumerate(ids)])
    if right is not None:
        for i, rid in enumerate(ids):
            traffic.add_feedback(rid, labels[0] if i < right else labels[1])


def _watcher(home, **cfg):
    from tuneloop.monitoring.exporter import MonitorMetrics
    from tuneloop.monitoring.watch_step import Watcher
    from tuneloop.state.audit import AuditLog
    from tuneloop.state.traffic_store import TrafficLog

    return Watcher(home, WatchConfig(**cfg), TrafficLog(home.store_url), AuditLog(home.store_url), MonitorMetrics())


def _promote_with_gate(home, seed: int, accuracy: float) -> str:
    from tuneloop.state.events import GATED, EventLog
    from tuneloop.state.registry import promote

    tag = save_tiny_model(home, seed=seed)
    EventLog(home.store_url).record(GATED, "test gate", tag=tag, actor="test",
                                    detail={"champion": {"accuracy": 0.8}, "challenger": {"accuracy": accuracy}})
    promote(home, tag, reason="test promotion", actor="test")
    return tag


def test_watcher_rolls_back_a_bad_promotion_and_a_restart_resumes(champion_home):
    from tuneloop.state.events import BLOCKED, WATCHED, EventLog
    from tuneloop.state.registry import read_champion

    home = champion_home
    old = read_champion(home).tag
    _log(home, old, 60, right=None, start=time.time() - 60)
    bad = _promote_with_gate(home, seed=1, accuracy=0.9)
    first = _watcher(home, requests=100)
    assert first.step(read_champion(home)).verdict == WATCHING  # nothing served yet
    state = first.state()
    assert state.tag == bad and state.previous == old and state.gate["value"] == 0.9
    assert state.gate["source"].startswith("gated event") and not state.done

    _log(home, bad, 40, right=5, start=time.time())  # 5 of 40 right vs a gate of 0.90
    resumed = _watcher(home, requests=100)  # a restarted monitor: same state, same watch
    verdict = resumed.step(read_champion(home))
    assert verdict.verdict == ROLLED_BACK and verdict.served == 40 and not verdict.final
    assert read_champion(home).tag == old
    assert resumed.metrics.rollbacks.family().samples[0].value == 1.0
    events = EventLog(home.store_url)
    watched = events.events(tag=bad, kind=WATCHED)
    assert [e.detail["verdict"] for e in watched] == ["rolled_back"] and watched[0].actor == "monitor"
    assert watched[0].detail["looks"] == 2 and watched[0].detail["gate"]["value"] == 0.9
    assert events.is_blocked(bad) and events.events(tag=bad, kind=BLOCKED)
    # the restored champion is not watched, and nothing else happens on later looks
    assert resumed.step(read_champion(home)) is None
    assert resumed.state().verdict == "not_watched" and resumed.state().reason == "restored by a rollback"


def test_watcher_keeps_a_good_promotion_when_its_window_closes(champion_home):
    from tuneloop.state.events import WATCHED, EventLog
    from tuneloop.state.registry import read_champion

    home = champion_home
    old = read_champion(home).tag
    _log(home, old, 50, right=None, start=time.time() - 60)
    good = _promote_with_gate(home, seed=0, accuracy=0.9)
    watcher = _watcher(home, requests=60)
    _log(home, good, 40, right=37, start=time.time())
    assert watcher.step(read_champion(home)).verdict == WATCHING
    _log(home, good, 30, right=28, start=time.time())  # 70 served: the window (60) is complete
    verdict = watcher.step(read_champion(home))
    assert verdict.verdict == KEPT and verdict.final and verdict.served == 60
    feedback = verdict.signals[0]
    assert feedback.name == FEEDBACK_ACCURACY and feedback.n == 60 and feedback.value == pytest.approx(57 / 60)
    assert {s.name: s.p_value is not None for s in verdict.signals} == {
        FEEDBACK_ACCURACY: True, ESTIMATED_ACCURACY: True, LATENCY: True}
    assert read_champion(home).tag == good
    assert [e.detail["verdict"] for e in EventLog(home.store_url).events(tag=good, kind=WATCHED)] == ["kept"]
    assert watcher.step(read_champion(home)) is None and watcher.metrics.rollbacks.family().samples[0].value == 0
    watcher.audit.set_state("watch", None)  # a lost state: the watched event says it is done
    assert watcher.step(read_champion(home)) is None
    assert watcher.state().reason == "already watched since its promotion"


def test_a_champion_promoted_over_during_its_watch_is_superseded(champion_home):
    from tuneloop.state.events import WATCHED, EventLog
    from tuneloop.state.registry import read_champion

    home = champion_home
    first = _promote_with_gate(home, seed=1, accuracy=0.9)
    watcher = _watcher(home)
    assert watcher.step(read_champion(home)).verdict == WATCHING
    second = _promote_with_gate(home, seed=2, accuracy=0.9)
    assert watcher.step(read_champion(home)).verdict == WATCHING
    assert watcher.state().tag == second and watcher.state().previous == first
    (event,) = EventLog(home.store_url).events(tag=first, kind=WATCHED)
    assert event.detail["verdict"] == "superseded" and event.detail["champion"] == second


def test_a_first_model_is_not_watched(champion_home):
    from tuneloop.state.registry import read_champion

    watcher = _watcher(champion_home)
    assert watcher.step(read_champion(champion_home)) is None
    assert watcher.state().reason.startswith("first model")


def test_the_watch_config_is_validated_where_it_enters():
    from pydantic import ValidationError

    from tuneloop.monitoring.monitor import MonitorConfig

    assert MonitorConfig(watch={"requests": 50}).watch.requests == 50
    with pytest.raises(ValidationError):
        MonitorConfig(watch={"requests": 5})
    with pytest.raises(ValidationError):
        MonitorConfig(watch={"alpah": 0.1})


def _log_generations(home, tag: str, n: int, corrected: str | None, start: float, logprob: float = -0.7) -> None:
    """Log ``n`` generations of ``tag`` replying "your order is on its way"; each gets ``corrected`` as the
    reviewer's reply (None: no feedback)."""
    from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord, TrafficLog

    traffic = TrafficLog(home.store_url)
    ids = [uuid.uuid4().hex for _ in range(n)]
    traffic.log_predictions([PredictionRecord(
        request_id=rid, created_at=start + i * 1e-3, text=f"where is order {i}?", label="stop",
        confidence=float(np.exp(logprob)), top3=[], model_tag=tag, latency_ms=40.0 + i % 7,
        generation=GenerationRecord(reply="your order is on its way", finish_reason="stop", prompt_tokens=9,
                                    completion_tokens=6, mean_logprob=logprob + 0.01 * (i % 5)))
        for i, rid in enumerate(ids)])
    if corrected is not None:
        for rid in ids:
            traffic.add_generation_feedback(rid, reply=corrected)


def test_watcher_rolls_back_a_generation_model_whose_replies_miss_the_reviewers(llm_champion_home):
    from tuneloop.monitoring.watch import MEAN_LOGPROB
    from tuneloop.state.events import GATED, EventLog
    from tuneloop.state.registry import promote, read_champion

    home = llm_champion_home
    old = read_champion(home).tag
    _log_generations(home, old, 40, corrected=None, start=time.time() - 60)
    new = save_tiny_llm(home)  # the champion's weights under a new tag
    EventLog(home.store_url).record(GATED, "test gate", tag=new, actor="test",
                                    detail={"champion": {"rougeL": 0.5}, "challenger": {"rougeL": 0.6}})
    promote(home, new, reason="test promotion", actor="test")
    watcher = _watcher(home, requests=50)
    assert watcher.step(read_champion(home)).verdict == WATCHING
    state = watcher.state()
    assert state.task == "generation" and state.gate["metric"] == "rougeL" and state.gate["value"] == 0.6
    assert state.gate["source"].startswith("gated event")
    _log_generations(home, new, 35, corrected="sorry, I cannot find that order; please send its number",
                     start=time.time())
    verdict = watcher.step(read_champion(home))
    assert verdict.verdict == ROLLED_BACK and read_champion(home).tag == old
    rouge, logprob, latency = verdict.signals
    assert rouge.name == FEEDBACK_ROUGE and rouge.fired and rouge.n == 35
    assert rouge.value == pytest.approx(0.25)  # LCS "order ... its": P 2/6, R 2/10
    assert logprob.name == MEAN_LOGPROB and logprob.p_value is not None and not logprob.fired
    assert latency.name == LATENCY and not latency.fired


def test_live_baseline_keeps_a_challenger_that_beats_its_predecessor_on_harder_live_traffic():
    """The Banking77 demo's case: gate 0.89 on the holdout, drifted live traffic 0.76 for the new champion and
    0.59 for the one it replaced. Against the gate alone the good challenger would be rolled back."""
    from tuneloop.monitoring.watch import WatchConfig, feedback_accuracy_signal
    from tuneloop.monitoring.watch_step import live_baseline

    cfg = WatchConfig()
    new = np.array([1] * 76 + [0] * 24)
    old = np.array([1] * 59 + [0] * 41)
    against_gate = feedback_accuracy_signal(new, 0.89, cfg)
    assert against_gate.p_value < 0.05 and against_gate.practical  # the final look tests at 0.05
    assert live_baseline(0.89, old, cfg) == pytest.approx(0.59)
    kept = feedback_accuracy_signal(new, live_baseline(0.89, old, cfg), cfg)
    assert kept.p_value > 0.5 and not kept.practical
    # a bad model stays caught: the baseline is never above the gate, and too few old labels leave the gate's
    assert live_baseline(0.89, np.array([1] * 95 + [0] * 5), cfg) == 0.89
    assert live_baseline(0.89, old[: cfg.min_feedback - 1], cfg) == 0.89
    assert feedback_accuracy_signal(np.array([1] * 20 + [0] * 80), live_baseline(0.89, old, cfg), cfg).p_value < 1e-6
