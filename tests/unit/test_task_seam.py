"""The task seam: a saved model names its task, later stages find it there, and the gate judges on
the task's primary metric."""

from __future__ import annotations

import pandas as pd
import pytest


def test_registry_and_defaults():
    from tuneloop.training.classification import ClassificationTask
    from tuneloop.training.task import DEFAULT_TASK, get_task, task_of

    assert isinstance(get_task("classification"), ClassificationTask)
    assert task_of({}).name == DEFAULT_TASK == "classification"  # versions saved before tasks were recorded
    assert task_of({"task": "classification"}).primary_metric == "macro_f1"
    with pytest.raises(ValueError, match="unknown task 'translation': use one of \\['classification', 'generation'\\]"):
        get_task("translation")


def test_config_rejects_an_unknown_task():
    from pydantic import ValidationError

    from tuneloop.training.config import TrainConfig

    with pytest.raises(ValidationError, match="task"):
        TrainConfig(data="d", task="translation")


def test_a_trained_model_records_its_task_and_loads_through_it(tmp_path, tiny_data, tiny_base):
    from tuneloop.state.home import Home
    from tuneloop.state.registry import get_model
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.task import task_of
    from tuneloop.training.train import train

    home = Home(tmp_path / "home")
    result = train(TrainConfig.for_preset("quick", data=str(tiny_data), base_model=str(tiny_base), epochs=1,
                                          progress=False), home)
    stored = get_model(home, result.tag)
    assert stored.info.metadata["task"] == "classification"
    assert stored.info.metadata["train_config"]["task"] == "classification"
    task = task_of(dict(stored.info.metadata))
    predictor = task.load_predictor(stored.path)
    rows = pd.DataFrame({"text": ["card arrival please", "top up please now"], "label": ["card_arrival", "top_up"]})
    metrics = task.evaluate(predictor, rows)
    assert set(metrics) >= {"accuracy", task.primary_metric} and 0 <= metrics[task.primary_metric] <= 1
    labels, _ = result.classifier.predict(rows["text"].tolist())
    assert metrics["accuracy"] == pytest.approx(sum(a == b for a, b in zip(labels, rows["label"])) / 2)
    with pytest.raises(ValueError, match="at least one row"):
        task.evaluate(predictor, rows.iloc[:0])


def test_the_gate_judges_on_the_primary_metric_unless_told_otherwise():
    from tuneloop.monitoring.gate import GateConfig, judge

    champion, challenger = {"accuracy": 0.80, "macro_f1": 0.70}, {"accuracy": 0.80, "macro_f1": 0.75}
    assert judge(champion, challenger, GateConfig(), 10, primary_metric="macro_f1").promoted
    verdict = judge(champion, challenger, GateConfig(metric="accuracy"), 10, primary_metric="macro_f1")
    assert not verdict.promoted and verdict.reason.startswith("accuracy:")


def test_the_service_finds_the_serving_side_of_a_task():
    from tuneloop.serving.tasks import serving_task

    assert serving_task("classification").name == "classification"
    with pytest.raises(ValueError, match="cannot serve task 'translation'"):
        serving_task("translation")


def test_a_champion_of_an_unknown_task_is_refused_at_load(tmp_path):
    """A version saved by a newer tuneloop with a task this one lacks must leave the old model serving."""
    from conftest import write_tiny_model

    from tuneloop.serving.champion import load_checked
    from tuneloop.serving.tasks import ModelSwapError
    from tuneloop.state.home import Home
    from tuneloop.state.registry import save_model

    home = Home(tmp_path / "home")
    tag = save_model(home, lambda path: write_tiny_model(path), metadata={"task": "translation", "labels": ["a"]})
    with pytest.raises(ModelSwapError, match="unknown task 'translation'") as info:
        load_checked(home, tag)
    assert info.value.reason == "load"


def test_classification_feedback_must_name_a_label_of_the_live_model(tmp_path):
    from types import SimpleNamespace

    from tuneloop.serving.classification import ClassificationServing

    live = SimpleNamespace(tag="m:1", classifier=SimpleNamespace(labels=["a", "b"]))
    assert ClassificationServing().feedback_error(live, "a") is None
    assert ClassificationServing().feedback_error(live, "c") == ("label 'c' is not one of the 2 labels of the live "
                                                                 "model m:1; see `labels`")


def test_the_monitor_finds_the_monitoring_side_of_a_task():
    from tuneloop.monitoring.signals import ALL_SIGNALS
    from tuneloop.monitoring.tasks import monitoring_task

    assert monitoring_task("classification").signals == ALL_SIGNALS
    with pytest.raises(ValueError, match="cannot watch task 'translation'"):
        monitoring_task("translation")
