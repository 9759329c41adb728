"""The gate's shadow stage (monitoring/shadow.py): a challenger that passed the holdout gate waits,
answers sampled live requests in the monitor's process, and is promoted only when it agrees with the
reviewers' feedback at least as well as the champion did on the same requests; dropped when worse or
when feedback does not come; never a logged prediction; off by default."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_LABELS, save_tiny_llm, save_tiny_model

from tuneloop.monitoring.gate import GateConfig, ShadowConfig
from tuneloop.monitoring.shadow import SHADOW_KEY, ShadowStage, begin
from tuneloop.monitoring.shadow_rules import agreement_scores, in_sample, judge_shadow
from tuneloop.state.audit import AuditLog
from tuneloop.state.events import PROMOTED, SHADOWED, EventLog
from tuneloop.state.registry import get_model, read_champion
from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord, TrafficLog


def _log(traffic: TrafficLog, texts: list[str], labels: list[str], tag: str, replies: list[str] | None = None) -> list[str]:
    """Log one answered request per text (as the service would) and return their request ids."""
    ids = [uuid.uuid4().hex for _ in texts]
    traffic.log_predictions([
        PredictionRecord(rid, time.time(), text, label, 0.9, [(label, 0.9)], tag, 5.0,
                         generation=GenerationRecord(replies[i], "length", 10, 8, -1.0) if replies else None)
        for i, (rid, text, label) in enumerate(zip(ids, texts, labels))])
    return ids


def _challenger_labels(home, tag: str, texts: list[str]) -> list[str]:
    from tuneloop.training.predict import Classifier

    return list(Classifier.load(get_model(home, tag).path, device="cpu").predict(texts)[0])


def _other(label: str) -> str:
    return TINY_LABELS[(TINY_LABELS.index(label) + 1) % len(TINY_LABELS)]


def _pending(home, cfg: ShadowConfig, n_before: int = 5):
    """A home with a tiny champion, a saved tiny challenger made pending after ``n_before`` logged requests."""
    champion = read_champion(home).tag
    challenger = save_tiny_model(home, seed=1)
    traffic, audit = TrafficLog(home.store_url), AuditLog(home.store_url)
    _log(traffic, [f"old request {i}" for i in range(n_before)], ["top_up"] * n_before, champion)
    begin(home, audit, challenger, champion, cfg, since_seq=traffic.max_seq(), feedback_cursor=0)
    return champion, challenger, traffic, audit


def test_sample_verdict_and_agreement_are_pure_and_stated():
    ids = [f"req-{i}" for i in range(4000)]
    picked = in_sample(ids, 0.25, seed=3)
    assert picked.shape == (4000,) and 0.22 < picked.mean() < 0.28
    assert (in_sample(ids[::-1], 0.25, seed=3) == picked[::-1]).all()  # per request, not per position
    assert not (in_sample(ids, 0.25, seed=4) == picked).all() and in_sample(ids, 1.0).all()
    cfg = ShadowConfig(min_rows=4, tolerance=0.05)
    assert judge_shadow(np.array([1, 1, 0, 1.0]), np.array([1, 1, 1, 1.0]), cfg, "accuracy").promote is False  # .75 < .95
    at_edge = judge_shadow(np.array([1, 1, 1, 0.8]), np.array([1, 1, 1, 1.0]), cfg, "accuracy")  # .95 >= 1 - .05
    assert at_edge.promote and at_edge.rows == 4 and "challenger >= champion - 0.0500" in at_edge.reason
    with pytest.raises(ValueError, match="needs >= 4"):
        judge_shadow(np.ones(3), np.ones(3), cfg, "accuracy")
    assert agreement_scores("classification", ["a", "b", "c"], ["a", "x", "c"]).tolist() == [1.0, 0.0, 1.0]
    rouge = agreement_scores("generation", ["your card arrives in five days", "no"], ["your card arrives in five days", "yes"])
    assert rouge.tolist() == [1.0, 0.0]


def test_off_by_default_and_the_cycle_without_a_pending_challenger_is_unchanged(champion_home):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig

    assert GateConfig().shadow.enabled is False and MonitorConfig().retrain.gate.shadow.enabled is False
    with pytest.raises(ValueError):
        ShadowConfig(sample_share=0)
    mon = Monitor(champion_home, MonitorConfig(metrics_port=None, evidently_project=None, save_html=False,
                                               embeddings=False, policy={"min_window": 20, "min_new_labels": 1000}))
    tag = read_champion(champion_home).tag
    _log(mon.traffic, [f"where is my card {i}" for i in range(20)], ["card_arrival"] * 20, tag)
    result = mon.cycle()
    assert result.action != "skip_small_window" and result.shadow is None
    assert mon.audit.get_state(SHADOW_KEY) is None and EventLog(champion_home.store_url).events(kind=SHADOWED) == []


def test_a_challenger_that_agrees_better_is_promoted_and_shadow_answers_are_never_logged(champion_home):
    cfg = ShadowConfig(enabled=True, sample_share=1.0, min_rows=20, max_wait_windows=5)
    champion, challenger, traffic, audit = _pending(champion_home, cfg)
    events = EventLog(champion_home.store_url)
    assert [e.detail["verdict"] for e in events.events(kind=SHADOWED)] == ["pending"]
    texts = [f"my card has not arrived yet, request {i}" for i in range(30)]
    theirs = _challenger_labels(champion_home, challenger, texts)
    ids = _log(traffic, texts, [_other(x) for x in theirs], champion)  # the champion answered each one differently
    stage = ShadowStage(champion_home, traffic, audit)
    first = stage.step(traffic.read_window(0))  # the 5 requests logged before it was pending are not shadowed
    assert (first.verdict, first.shadowed, first.added, first.with_feedback, first.windows) == ("pending", 30, 30, 0, 1)
    assert set(audit.get_state(SHADOW_KEY)["rows"]) == set(ids)
    for rid, label in list(zip(ids, theirs))[:25]:  # reviewers side with the challenger on 25 requests
        traffic.add_feedback(rid, label)
    cursor = traffic.max_seq()
    later = _log(traffic, ["top up my account please"] * 3, ["top_up"] * 3, champion)
    second = stage.step(traffic.read_window(cursor))
    assert second.verdict == "promoted" and second.with_feedback == 25 and second.added == 3 and second.windows == 2
    assert second.challenger_agreement == 1.0 and second.champion_agreement == 0.0
    assert read_champion(champion_home).tag == challenger and read_champion(champion_home).previous == champion
    verdict = events.events(kind=SHADOWED)[-1]
    assert verdict.tag == challenger and verdict.actor == "monitor" and verdict.detail["verdict"] == "promoted"
    assert verdict.detail["challenger_agreement"] == 1.0 and verdict.detail["champion_agreement"] == 0.0
    assert verdict.detail["rows"] == 25 and verdict.detail["shadowed"] == 33
    promoted = events.events(kind=PROMOTED)[-1]
    assert promoted.tag == challenger and promoted.actor == "monitor" and promoted.detail["shadow"]["rows"] == 25
    assert audit.get_state(SHADOW_KEY) is None
    # 5 + 30 + 3 requests logged, all answered by the champion: the 33 shadow answers are nowhere in the log
    window = traffic.read_window(0)
    assert traffic.count_predictions() == 38 and set(window["model_tag"]) == {champion}
    assert stage.step(traffic.read_window(0)) is None  # nothing pending any more
    assert len(later) == 3


def test_a_worse_challenger_is_dropped(champion_home):
    cfg = ShadowConfig(enabled=True, sample_share=1.0, min_rows=10, max_wait_windows=5, tolerance=0.1)
    champion, challenger, traffic, audit = _pending(champion_home, cfg)
    texts = [f"refund my purchase number {i}" for i in range(12)]
    logged = [_other(x) for x in _challenger_labels(champion_home, challenger, texts)]
    ids = _log(traffic, texts, logged, champion)
    for rid, label in zip(ids, logged):  # reviewers confirm every champion answer
        traffic.add_feedback(rid, label)
    outcome = ShadowStage(champion_home, traffic, audit).step(traffic.read_window(5))
    assert outcome.verdict == "dropped" and outcome.challenger_agreement == 0.0 and outcome.champion_agreement == 1.0
    assert "drop the challenger" in outcome.reason and "- 0.1000" in outcome.reason
    assert read_champion(champion_home).tag == champion and audit.get_state(SHADOW_KEY) is None
    event = EventLog(champion_home.store_url).events(kind=SHADOWED)[-1]
    assert event.tag == challenger and event.detail["verdict"] == "dropped" and event.detail["rows"] == 12


def test_not_enough_feedback_drops_the_challenger_after_max_wait_windows(champion_home):
    cfg = ShadowConfig(enabled=True, sample_share=0.5, min_rows=5, max_wait_windows=2, seed=7)
    champion, challenger, traffic, audit = _pending(champion_home, cfg)
    stage = ShadowStage(champion_home, traffic, audit)
    outcomes = []
    for window in range(2):
        cursor = traffic.max_seq()
        ids = _log(traffic, [f"lost card {window}-{i}" for i in range(20)], ["lost_card"] * 20, champion)
        traffic.add_feedback(ids[0], "lost_card")  # one label per window: never 5 on the shadowed requests
        outcomes.append(stage.step(traffic.read_window(cursor)))
    assert outcomes[0].verdict == "pending" and 4 <= outcomes[0].added <= 16  # about half of 20 (seeded)
    assert outcomes[1].verdict == "dropped" and outcomes[1].windows == 2 and outcomes[1].with_feedback <= 2
    assert "not enough feedback" in outcomes[1].reason and "within 2 (max_wait_windows)" in outcomes[1].reason
    assert read_champion(champion_home).tag == champion and audit.get_state(SHADOW_KEY) is None


def test_a_champion_that_changed_meanwhile_drops_the_challenger(champion_home):
    from tuneloop.state.registry import promote

    champion, challenger, traffic, audit = _pending(champion_home, ShadowConfig(enabled=True))
    other = save_tiny_model(champion_home, seed=2)
    promote(champion_home, other, reason="manual")
    _log(traffic, ["top up"] * 3, ["top_up"] * 3, other)
    outcome = ShadowStage(champion_home, traffic, audit).step(traffic.read_window(0))
    assert outcome.verdict == "dropped" and "champion changed" in outcome.reason
    assert read_champion(champion_home).tag == other


def test_generation_challenger_is_judged_on_rouge_l_against_reviewers_replies(llm_champion_home):
    from tuneloop.training.generator import Generator

    home = llm_champion_home
    champion = read_champion(home).tag
    challenger = save_tiny_llm(home, seed=1)
    traffic, audit = TrafficLog(home.store_url), AuditLog(home.store_url)
    cfg = ShadowConfig(enabled=True, sample_share=1.0, min_rows=4, max_new_tokens=6)
    begin(home, audit, challenger, champion, cfg, since_seq=0, feedback_cursor=0)
    prompts = [f"how do I cancel order number {i}?" for i in range(4)]
    ids = _log(traffic, prompts, ["cancel_order"] * 4, champion, replies=["please wait for the courier"] * 4)
    theirs = [c.text for c in Generator.load(get_model(home, challenger).path, device="cpu").generate(prompts, max_new_tokens=6)]
    assert all(t.strip() for t in theirs)
    for rid, reply in zip(ids, theirs):  # reviewers' corrected replies are what the challenger says
        traffic.add_generation_feedback(rid, reply=reply)
    outcome = ShadowStage(home, traffic, audit).step(traffic.read_window(0))
    assert outcome.verdict == "promoted" and outcome.with_feedback == 4
    assert outcome.challenger_agreement > 0.9 > outcome.champion_agreement
    assert read_champion(home).tag == challenger
    assert traffic.count_predictions() == 4


def test_the_monitor_cycle_runs_the_stage_on_judged_windows(champion_home):
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig

    cfg = ShadowConfig(enabled=True, sample_share=1.0, min_rows=50, max_wait_windows=3)
    champion, challenger, traffic, audit = _pending(champion_home, cfg)
    mon = Monitor(champion_home, MonitorConfig(metrics_port=None, evidently_project=None, save_html=False,
                                               embeddings=False, policy={"min_window": 20, "min_new_labels": 1000}))
    _log(traffic, [f"where is my new card {i}" for i in range(20)], ["card_arrival"] * 20, champion)
    result = mon.cycle()
    assert result.shadow["verdict"] == "pending" and result.shadow["added"] == 20
    assert result.shadow["challenger_tag"] == challenger and traffic.count_predictions() == 25


@pytest.mark.timeout(300)
def test_with_the_shadow_stage_on_a_winning_retrain_is_kept_pending(home, tmp_path):
    from conftest import write_intent_csv, write_tiny_model

    from tuneloop.monitoring.act import RETRAIN_SHADOWING, ActContext, run_retrain
    from tuneloop.monitoring.exporter import MonitorMetrics
    from tuneloop.monitoring.monitor_config import MonitorConfig
    from tuneloop.state.events import GATED
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    data = Path(tmp_path / "data")
    data.mkdir()
    write_intent_csv(data / "train.csv", 6)
    write_intent_csv(data / "test.csv", 2, seed=1, offset=1000)
    base = tmp_path / "base"
    write_tiny_model(base, labels=["a", "b"])
    first = train(TrainConfig(data=str(data), base_model=str(base), epochs=1, batch_size=8, progress=False), home)
    traffic, audit = TrafficLog(home.store_url), AuditLog(home.store_url)
    for rid in _log(traffic, [f"top up feedback {i}" for i in range(8)], ["top_up"] * 8, first.tag)[:4]:
        traffic.add_feedback(rid, "top_up")
    cfg = MonitorConfig(metrics_port=None, retrain={
        "overrides": {"epochs": 1, "base_model": str(base)},
        "gate": {"min_gain": -1.0, "max_accuracy_drop": 1.0, "shadow": {"enabled": True, "min_rows": 30}}})
    result = run_retrain(ActContext(home, cfg, traffic, audit, MonitorMetrics()), first.tag, "Test.")
    challenger = result.outcome["challenger_tag"]
    assert result.action == RETRAIN_SHADOWING and "in shadow" in result.reason and result.outcome["shadow_pending"]
    assert result.outcome["promoted"] is False and read_champion(home).tag == first.tag
    state = audit.get_state(SHADOW_KEY)
    assert state["challenger"] == challenger and state["since_seq"] == 8 and state["config"]["min_rows"] == 30
    assert state["feedback_cursor"] == result.feedback_cursor > 0
    events = EventLog(home.store_url)
    assert events.events(kind=GATED)[-1].detail["promoted"] is True
    assert [e.detail["verdict"] for e in events.events(tag=challenger, kind=SHADOWED)] == ["pending"]
