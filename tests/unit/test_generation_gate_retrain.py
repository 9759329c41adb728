"""The gate guards each task's own metric (classification: accuracy, numbers and reason unchanged;
generation: perplexity must not rise beyond its tolerance), and retraining turns each task's feedback
into training and holdout rows."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tuneloop.monitoring.feedback_rows import feedback_rows
from tuneloop.monitoring.gate import GateConfig, judge, run_gate
from tuneloop.monitoring.retrain import feedback_examples, split_feedback


def test_the_classification_gate_keeps_its_numbers_and_reason():
    champion, challenger = {"accuracy": 0.80, "macro_f1": 0.78}, {"accuracy": 0.79, "macro_f1": 0.80}
    verdict = judge(champion, challenger, GateConfig(min_gain=0.01, max_accuracy_drop=0.02), 100)
    assert verdict.promoted
    assert verdict.reason == ("macro_f1: challenger 0.8000 vs champion 0.7800 (gain +0.0200, needs >= 0.0100); "
                              "accuracy 0.7900 vs 0.8000 (drop +0.0100, allowed <= 0.0200) on 100 holdout rows "
                              "-> promote")
    assert not judge(champion, challenger, GateConfig(min_gain=0.01), 100).promoted  # accuracy fell by 0.01 > 0


class StubTask:
    """A task whose evaluate returns canned metrics per predictor (a str key)."""

    def __init__(self, metrics: dict, **attrs) -> None:
        self.metrics = metrics
        self.__dict__.update(attrs)

    def evaluate(self, predictor, rows):
        return self.metrics[predictor]


def test_the_generation_gate_guards_perplexity():
    task = StubTask({"champ": {"rougeL": 0.40, "perplexity": 5.00}, "better": {"rougeL": 0.45, "perplexity": 4.90},
                     "looser": {"rougeL": 0.45, "perplexity": 5.25}},
                    primary_metric="rougeL", guard_metric="perplexity", guard_higher_is_better=False)
    rows = pd.DataFrame({"text": ["a"], "reply": ["b"]})
    ok = run_gate(task, "champ", "better", rows, GateConfig())
    assert ok.promoted and "perplexity 4.9000 vs 5.0000 (rise -0.1000, allowed <= 0.0000)" in ok.reason
    assert ok.reason.startswith("rougeL: challenger 0.4500 vs champion 0.4000 (gain +0.0500")
    worse = run_gate(task, "champ", "looser", rows, GateConfig())
    assert not worse.promoted and "(rise +0.2500, allowed <= 0.0000)" in worse.reason
    assert "keep champion" in worse.reason
    assert run_gate(task, "champ", "looser", rows, GateConfig(max_perplexity_rise=0.3)).promoted
    assert not run_gate(task, "champ", "looser", rows, GateConfig(max_perplexity_rise=0.2)).promoted


def test_a_task_without_a_guard_is_guarded_on_accuracy():
    task = StubTask({"a": {"macro_f1": 0.5, "accuracy": 0.6}, "b": {"macro_f1": 0.6, "accuracy": 0.55}},
                    primary_metric="macro_f1")
    verdict = run_gate(task, "a", "b", pd.DataFrame({"text": ["x"], "label": ["y"]}), GateConfig())
    assert not verdict.promoted and "accuracy 0.5500 vs 0.6000 (drop +0.0500, allowed <= 0.0000)" in verdict.reason
    with pytest.raises(ValueError, match="no tolerance for guard metric 'bleu'"):
        GateConfig().guard_tolerance("bleu")


def test_the_gate_reads_the_generation_task_guard():
    from tuneloop.training.task import get_task

    task = get_task("generation")
    assert (task.primary_metric, task.guard_metric, task.guard_higher_is_better) == ("rougeL", "perplexity", False)


FEEDBACK = pd.DataFrame([
    {"request_id": "r1", "text": "cancel order 1", "reply": "model reply 1", "true_reply": "fixed reply 1", "rating": None},
    {"request_id": "r2", "text": "cancel order 2", "reply": "model reply 2", "true_reply": "fixed reply 2", "rating": -1},
    {"request_id": "r3", "text": "cancel order 3", "reply": "model reply 3", "true_reply": None, "rating": 1},
    {"request_id": "r4", "text": "cancel order 4", "reply": "model reply 4", "true_reply": None, "rating": -1},
    {"request_id": "r5", "text": "cancel order 5", "reply": "", "true_reply": None, "rating": 1},
    {"request_id": "r6", "text": "cancel order 6", "reply": "model reply 6", "true_reply": "  ", "rating": 1},
]).assign(true_label=None, label="stop")


def test_generation_feedback_trains_on_corrections_and_good_replies_only():
    rows = feedback_rows("generation")
    train = rows.train_rows(FEEDBACK)
    assert list(train.columns) == list(rows.columns) == ["text", "reply", "label"]
    assert train.to_dict("records") == [
        {"text": "cancel order 1", "reply": "fixed reply 1", "label": "feedback"},  # corrected
        {"text": "cancel order 2", "reply": "fixed reply 2", "label": "feedback"},  # corrected (rated bad)
        {"text": "cancel order 3", "reply": "model reply 3", "label": "feedback"},  # rated good: its own reply
        {"text": "cancel order 6", "reply": "model reply 6", "label": "feedback"},  # a blank correction is none
    ]  # r4 (bad, no correction) and r5 (good, empty reply) are not trained on
    assert rows.holdout_rows(FEEDBACK)["reply"].tolist() == ["fixed reply 1", "fixed reply 2"]


def test_classification_feedback_rows_are_text_and_true_label():
    rows = feedback_rows("classification")
    fb = pd.DataFrame({"request_id": ["a", "b"], "text": ["t1", "t2"], "true_label": ["x", "z"]})
    assert rows.train_rows(fb).to_dict("records") == [{"text": "t1", "label": "x"}, {"text": "t2", "label": "z"}]
    assert rows.learnable(rows.train_rows(fb), SimpleNamespace(labels=["x", "y"]))["text"].tolist() == ["t1"]
    with pytest.raises(ValueError, match="cannot use the feedback of task 'translation'"):
        feedback_rows("translation")


def test_generation_holdout_is_the_test_split_plus_held_back_corrections():
    n = 200
    labelled = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "text": [f"prompt {i}" for i in range(n)],
                             "reply": [f"model {i}" for i in range(n)],
                             "true_reply": [f"fixed {i}" if i % 2 else None for i in range(n)],
                             "rating": [1 if i % 4 == 0 else (-1 if i % 4 == 2 else None) for i in range(n)]})
    test = pd.DataFrame({"text": ["prompt 1", "a test prompt"], "reply": ["ref 1", "ref 2"], "label": ["g1", "g2"]})
    splits = SimpleNamespace(test=test.assign(extra="dropped"), labels=["g1", "g2"])
    train, held, holdout = feedback_examples("generation", labelled, splits, 0.2)
    _, held_raw = split_feedback(labelled, 0.2)
    assert 20 < len(held_raw) < 60
    assert list(holdout.columns) == ["text", "reply", "label"] and len(holdout) == 2 + len(held)
    assert holdout.iloc[:2].to_dict("records") == test.to_dict("records")
    assert set(held["text"]) == set(held_raw.loc[held_raw["true_reply"].notna(), "text"])
    assert all(r.startswith("fixed") for r in held["reply"])
    # training: every corrected or good-rated request that is not held back and not a holdout text
    expected = {f"prompt {i}" for i in range(n) if i % 2 or i % 4 == 0} - set(held_raw["text"]) - {"prompt 1"}
    assert set(train["text"]) == expected and not set(train["text"]) & set(holdout["text"])
    replies = dict(zip(train["text"], train["reply"]))
    assert all(replies[t] == ("fixed " if int(t.split()[1]) % 2 else "model ") + t.split()[1] for t in replies)
