"""Monitoring a generation champion: synthetic traffic windows against a synthetic reference sample.

No drift -> no alarm; long replies fire reply_drift, low log-probabilities confidence_drift, new prompts
text_drift (and embedding_drift with the shipped encoder); live ROUGE-L is computed from the
reviewers' corrected replies; bad feedback alarms on its own; the policy is fitted to the task's
signals; the exporter publishes the generation gauges.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuneloop.monitoring.generation import generation_signals
from tuneloop.monitoring.policy import DriftPolicy, PolicyState, decide
from tuneloop.monitoring.signals import (
    ALL_SIGNALS,
    CONFIDENCE,
    EMBEDDING,
    GENERATION_SIGNALS,
    RATING,
    REPLY,
    ROUGE,
    TEXT,
)
from tuneloop.monitoring.tasks import monitoring_task, task_policy
from tuneloop.training.gen_metrics import rouge_l_each

PROMPTS = ["cancel my order {n}", "track order number {n}", "change the shipping address of order {n}",
           "get a refund for order {n}", "speak to a human agent about order {n}", "reset the password of account {n}"]
NEW_PROMPTS = ["what is the warranty on blender model {n}", "do you ship to iceland, parcel {n}",
               "my invoice {n} shows a wrong VAT number"]
REPLIES = ["I understand you want to cancel order {{Order Number}}. Open your account and select Cancel.",
           "You can track order {{Order Number}} in the Orders section of your account.",
           "To change the address, open {{Account Settings}} and edit the shipping address.",
           "I'm sorry for the trouble. Request a refund for {{Order Number}} from the Orders page.",
           "I'll connect you with a human agent right away. Please hold on.",
           "To reset your password, click Forgot Password on the login page."]
WRONG = "Our new product line comes with a two-year warranty on all kitchen appliances."
POLICY = task_policy(DriftPolicy(), "generation")
CONFIG = POLICY.drift_config(label_permutations=500)  # p resolution 1/501, well below 0.05/6


def rows(n: int, seed: int, *, long: bool = False, logprob_shift: float = 0.0, prompts: list[str] = PROMPTS,
         corrected: float = 0.0, rated: float = 0.0, bad: float = 0.0, wrong_truth: bool = False) -> pd.DataFrame:
    """``n`` generation rows: a prompt of one of six intents, the model's reply (30 % without their
    placeholder, 90 % stopped), a mean log-probability ~ N(-0.6 + shift, 0.15), and feedback:
    a corrected reply on a ``corrected`` share (the intent's reply, or ``WRONG``), a rating on a ``rated``
    share (bad with probability ``bad``). ``long``: replies 4-7 sentences longer, 30 % stopped."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(len(REPLIES)))
        reply = REPLIES[k]
        if rng.random() < 0.3:
            reply = reply.replace("{{Order Number}}", "your order").replace("{{Account Settings}}", "settings")
        stop = rng.random() < (0.3 if long else 0.9)
        if long:
            reply += " Please note that our team is always here to help you." * int(rng.integers(4, 8))
        out.append({"text": prompts[k % len(prompts)].format(n=int(rng.integers(1000))), "reply": reply,
                    "finish_reason": "stop" if stop else "length", "completion_tokens": len(reply.split()),
                    "mean_logprob": float(rng.normal(-0.6 + logprob_shift, 0.15)),
                    "true_reply": (WRONG if wrong_truth else REPLIES[k]) if rng.random() < corrected else None,
                    "rating": (-1 if rng.random() < bad else 1) if rng.random() < rated else None})
    return pd.DataFrame(out)


def reference(n: int = 300) -> pd.DataFrame:
    """A ``reference.jsonl`` sample: replies with reference replies on 30 %, the last 60 rows prompt-only."""
    ref = rows(n, 0, corrected=0.3).drop(columns=["rating"])
    ref.loc[ref.index[-60:], ["reply", "finish_reason", "completion_tokens", "mean_logprob"]] = None
    return ref


def window(n: int = 200, seed: int = 1, **kwargs) -> pd.DataFrame:
    """A traffic window (``TrafficLog.read_window`` columns of generation rows)."""
    w = rows(n, seed, **kwargs)
    return w.assign(seq=np.arange(1, n + 1), request_id=[f"r{seed}-{i}" for i in range(n)], label=w["finish_reason"],
                    confidence=np.exp(w["mean_logprob"]), model_tag="gen:1", latency_ms=5.0, true_label=None)


@pytest.fixture(scope="module")
def ref() -> pd.DataFrame:
    return reference()


def judged(ref: pd.DataFrame, win: pd.DataFrame):
    report = generation_signals(ref, win, CONFIG)
    return report, decide(report, POLICY, PolicyState())


def test_the_monitor_watches_generation_with_its_own_six_signals():
    task = monitoring_task("generation")
    assert task.signals == GENERATION_SIGNALS == (TEXT, EMBEDDING, REPLY, CONFIDENCE, ROUGE, RATING)
    assert task.sufficient_signals == (ROUGE, RATING)
    assert POLICY.signals == GENERATION_SIGNALS and POLICY.sufficient_signals == (ROUGE, RATING)
    assert POLICY.per_signal_alpha == pytest.approx(0.05 / 6) == CONFIG.alpha


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_drawn_like_the_reference_do_not_alarm(ref, seed):
    report, decision = judged(ref, window(seed=seed, corrected=0.2, rated=0.3, bad=0.05))
    assert [s.name for s in report.signals] == list(GENERATION_SIGNALS)
    assert decision.action == "none" and not decision.alarm and decision.fired == [], decision.reason
    assert report.signal(EMBEDDING).p_value is None  # no encoder given: not computed
    assert report.signal(TEXT).value == pytest.approx(0.5, abs=0.1)
    figures = report.figures
    assert figures["stop_rate"]["current"] == pytest.approx(figures["stop_rate"]["reference"], abs=0.08)
    assert figures["mean_logprob"]["current"] == pytest.approx(-0.6, abs=0.05)
    assert figures["rouge_l"]["current"] == pytest.approx(figures["rouge_l"]["reference"], abs=0.05)
    assert report.n_labels == sum(1 for _, r in window(seed=seed, corrected=0.2, rated=0.3, bad=0.05).iterrows()
                                  if r["true_reply"] is not None or not pd.isna(r["rating"]))


def test_long_replies_fire_reply_drift(ref):
    report, decision = judged(ref, window(long=True))
    assert REPLY in decision.fired and TEXT not in decision.fired and CONFIDENCE not in decision.fired
    details = report.signal(REPLY).details
    assert set(details) == {"reply_length", "stop_rate", "placeholder_rate"}
    assert details["reply_length"]["current_mean"] > 3 * details["reply_length"]["reference_mean"]
    assert details["stop_rate"]["p_value"] < 0.01 and details["stop_rate"]["current_mean"] < 0.45
    assert report.signal(REPLY).p_value == pytest.approx(min(1.0, 3 * min(d["p_value"] for d in details.values())))
    assert report.figures["reply_length"]["current"] > 300 > 100 > report.figures["reply_length"]["reference"]


def test_low_log_probabilities_fire_confidence_drift(ref):
    report, decision = judged(ref, window(logprob_shift=-0.8))
    assert decision.fired == [CONFIDENCE], decision.reason
    sig = report.signal(CONFIDENCE)
    assert sig.details["current_mean_logprob"] == pytest.approx(sig.details["reference_mean_logprob"] - 0.8, abs=0.05)
    assert sig.details["current_mean"] == pytest.approx(float(np.exp(window(logprob_shift=-0.8)["mean_logprob"]).mean()),
                                                        rel=0.05)


def test_new_prompts_fire_text_drift(ref):
    report, decision = judged(ref, window(prompts=NEW_PROMPTS))
    assert TEXT in decision.fired and REPLY not in decision.fired and CONFIDENCE not in decision.fired
    assert report.signal(TEXT).value > 0.9


def test_live_rouge_l_is_computed_from_the_reviewers_corrected_replies(ref):
    win = window(corrected=0.5, wrong_truth=True)
    report = generation_signals(ref, win, CONFIG)
    pairs = win[win["true_reply"].notna()]
    live = rouge_l_each(pairs["reply"].tolist(), pairs["true_reply"].tolist())
    ref_pairs = ref[ref["true_reply"].notna() & ref["reply"].notna()]
    ref_scores = rouge_l_each(ref_pairs["reply"].tolist(), ref_pairs["true_reply"].tolist())
    assert report.figures["rouge_l"]["current"] == pytest.approx(np.mean(live))
    assert report.figures["rouge_l"]["reference"] == pytest.approx(np.mean(ref_scores)) and np.mean(ref_scores) > 0.9
    sig = report.signal(ROUGE)
    assert sig.value == pytest.approx(np.mean(ref_scores) - np.mean(live)) and sig.value > 0.5
    assert sig.details["n_labels"] == len(pairs) >= 30 and sig.fired
    decision = decide(report, POLICY, PolicyState())
    assert decision.alarm and ROUGE in decision.fired  # a sufficient signal: alarms on its own


def test_bad_ratings_alarm_on_their_own_against_the_baseline(ref):
    from scipy.stats import binomtest

    win = window(rated=0.5, bad=0.5)
    report, decision = judged(ref, win)
    rated = pd.to_numeric(win["rating"]).dropna()
    bad = int((rated < 0).sum())
    sig = report.signal(RATING)
    assert sig.value == pytest.approx(bad / len(rated) - CONFIG.baseline_bad_rating_share)
    assert sig.p_value == pytest.approx(binomtest(bad, len(rated), 0.1, alternative="greater").pvalue)
    assert decision.fired == [RATING] and decision.alarm, decision.reason
    assert report.signal(ROUGE).value is None  # no corrected replies


def test_a_rated_reference_gives_the_baseline_and_fisher_p_value(ref):
    from scipy.stats import fisher_exact

    rated_ref = ref.assign(rating=[(-1 if i % 5 == 0 else 1) if i % 2 == 0 else None for i in range(len(ref))])
    win = window(rated=0.5, bad=0.5)
    sig = generation_signals(rated_ref, win, CONFIG).signal(RATING)
    ref_rated = pd.to_numeric(rated_ref["rating"]).dropna()
    ref_bad, rated = int((ref_rated < 0).sum()), pd.to_numeric(win["rating"]).dropna()
    bad = int((rated < 0).sum())
    assert sig.details["baseline_bad_share"] == pytest.approx(ref_bad / len(ref_rated))
    table = [[bad, len(rated) - bad], [ref_bad, len(ref_rated) - ref_bad]]
    assert sig.p_value == pytest.approx(fisher_exact(table, alternative="greater").pvalue)


def test_feedback_signals_need_enough_labels(ref):
    report, decision = judged(ref, window(rated=0.1, bad=0.9, corrected=0.1, wrong_truth=True))
    for name in (ROUGE, RATING):
        sig = report.signal(name)
        assert sig.details["n_labels"] < POLICY.min_labels_for_accuracy and sig.value > 0.3 and not sig.fired
        assert name not in decision.fired
    assert f"need >= {POLICY.min_labels_for_accuracy} labels" in decision.reason


def test_the_policy_is_fitted_to_the_task_signals():
    default = DriftPolicy()
    assert task_policy(default, "classification") is default  # classification: unchanged
    assert default.signals == ALL_SIGNALS
    mine = DriftPolicy(signals=(TEXT, REPLY, ROUGE), sufficient_signals=(ROUGE,), min_signals=1)
    assert task_policy(mine, "generation") is mine  # set signals the task computes are kept
    assert task_policy(mine, "generation").per_signal_alpha == pytest.approx(0.05 / 3)
    other = DriftPolicy(signals=(TEXT, ALL_SIGNALS[3], CONFIDENCE), sufficient_signals=(), min_signals=2)
    fitted = task_policy(other, "generation")  # label_drift is not generation's: the task's own signals count
    assert fitted.signals == GENERATION_SIGNALS and fitted.sufficient_signals == () and fitted.min_signals == 2
    with pytest.raises(ValueError, match="choose a non-empty subset"):
        DriftPolicy(signals=("nope",))


def test_the_exporter_publishes_the_generation_gauges(ref):
    from tuneloop.monitoring.exporter import MonitorMetrics

    report, decision = judged(ref, window(long=True, corrected=0.3, rated=0.4, bad=0.1))
    metrics = MonitorMetrics()
    metrics.observe_window(report, decision, POLICY)
    get = metrics.registry.get_sample_value
    for name, gauge in (("rouge_l", "rouge_l"), ("stop_rate", "stop_rate"), ("mean_logprob", "mean_logprob"),
                        ("bad_rating_share", "bad_rating_share"), ("reply_length", "reply_length_characters")):
        for sample in ("reference", "current"):
            assert get(f"tuneloop_monitor_generation_{gauge}", {"sample": sample}) == pytest.approx(
                report.figures[name][sample]), (name, sample)
    assert get("tuneloop_monitor_drift_fired", {"signal": REPLY}) == 1.0
    assert get("tuneloop_monitor_drift_p_value", {"signal": REPLY}) == pytest.approx(report.signal(REPLY).p_value)
    assert get("tuneloop_monitor_descriptor_mean", {"descriptor": "reply_length", "sample": "current"}) == pytest.approx(
        report.signal(REPLY).details["reply_length"]["current_mean"])
    assert get("tuneloop_monitor_generation_feedback_rows", {"kind": "rated"}) == report.signal(RATING).details["n_labels"]
    assert get("tuneloop_monitor_generation_feedback_rows", {"kind": "corrected"}) == report.signal(ROUGE).details[
        "n_labels"]
    assert get("tuneloop_monitor_window_labels") == report.n_labels > 0


def test_a_generation_champion_embeds_prompts_with_the_shipped_encoder(llm_champion_home):
    """The monitor's champion view of the tiny generation champion: the shipped MiniLM (384-wide) embeds
    its reference prompts; a window of other prompts fires text and embedding drift; warm-up runs."""
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.monitoring.observe import ChampionCache
    from tuneloop.state.registry import require_champion

    tag = require_champion(llm_champion_home).tag
    cache = ChampionCache(llm_champion_home, embeddings=True, embed_threads=1)
    view, reference = cache.view(tag), cache.reference(tag)
    assert view.task == "generation" and view.reference_embeddings.shape == (len(reference), 384)
    assert np.allclose(np.linalg.norm(view.reference_embeddings, axis=1), 1.0, atol=1e-4)
    same = reference.sample(frac=1.0, random_state=1)  # the reference's own prompts, another order
    other = reference.assign(text=[f"is the blender model {i} dishwasher safe" for i in range(len(reference))])
    task = monitoring_task("generation")
    quiet = task.window_report(reference, pd.concat([same] * 2, ignore_index=True), CONFIG, view, 1, {})
    drifted = task.window_report(reference, pd.concat([other] * 2, ignore_index=True), CONFIG, view, 1, {})
    assert quiet.signal(EMBEDDING).p_value is not None and not quiet.signal(EMBEDDING).fired
    assert drifted.signal(EMBEDDING).fired and drifted.signal(TEXT).fired
    mon = Monitor(llm_champion_home, MonitorConfig(metrics_port=None, evidently_project=None, save_html=False))
    assert mon.warm_up() > 0


def test_a_monitor_cycle_judges_generation_traffic_and_its_feedback(llm_champion_home):
    """Generation traffic logged like the service logs it: a window like the reference is quiet; a
    window whose replies are all rated bad alarms on bad_rating_rise alone (waiting for confirmation),
    the gauges and the audit row carry the generation figures, and the label queue skips rated rows."""
    import json
    import time

    from tuneloop.monitoring.label_queue import QUEUE_FILE
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.state.audit import AuditLog
    from tuneloop.state.registry import REFERENCE_FILE, get_model, require_champion
    from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord, TrafficLog

    tag = require_champion(llm_champion_home).tag
    ref = pd.read_json(f"{get_model(llm_champion_home, tag).path}/{REFERENCE_FILE}", lines=True, dtype=False)
    traffic = TrafficLog(llm_champion_home.traffic_db_path)

    def log(n: int, prefix: str) -> list[str]:
        records = []
        for i in range(n):
            row = ref.iloc[i % len(ref)]
            gen = GenerationRecord(reply=row["reply"], finish_reason=row["finish_reason"], prompt_tokens=9,
                                   completion_tokens=int(row["completion_tokens"]), mean_logprob=float(row["mean_logprob"]))
            records.append(PredictionRecord(f"{prefix}{i}", time.time(), row["text"], row["finish_reason"],
                                            float(np.exp(row["mean_logprob"])), [], tag, 5.0, None, gen))
        traffic.log_predictions(records)
        return [r.request_id for r in records]

    cfg = MonitorConfig(metrics_port=None, evidently_project=None, save_html=False, embeddings=False,
                        policy={"min_window": 30, "min_new_labels": 1000}, drift={"label_permutations": 500})
    mon = Monitor(llm_champion_home, cfg)
    log(60, "a")
    quiet = mon.cycle()
    assert quiet.action == "none" and not quiet.degraded, quiet.reason
    assert "0 of 6 signals fired" in quiet.reason and "rouge_drop: no feedback" in quiet.reason
    ids = log(60, "b")
    for rid in ids[:40]:
        traffic.add_generation_feedback(rid, rating=-1)
    bad = mon.cycle()
    assert bad.action == "wait" and "FIRED bad_rating_rise" in bad.reason, bad.reason
    get = mon.metrics.registry.get_sample_value
    assert get("tuneloop_monitor_generation_bad_rating_share", {"sample": "current"}) == 1.0
    assert get("tuneloop_monitor_drift_fired", {"signal": RATING}) == 1.0
    assert get("tuneloop_monitor_policy_alpha") == pytest.approx(0.05 / 6)
    signals = AuditLog(llm_champion_home.traffic_db_path).decisions().iloc[-1]["signals"]
    assert signals["figures"]["bad_rating_share"]["current"] == 1.0 and signals["n_labels"] == 40
    queue = json.loads((llm_champion_home.root / QUEUE_FILE).read_text())["items"]
    assert queue and not {item["request_id"] for item in queue} & set(ids[:40])
