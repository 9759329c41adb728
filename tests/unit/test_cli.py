"""The console script: every subcommand explains itself, bad input exits 2 with a message, and
--set reaches any TrainConfig field; `tuneloop tune` writes a config that `train --config` takes."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from tuneloop.apps.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "tune", "serve", "monitor", "demo"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_help_lists_every_field():
    from tuneloop.training.config import TrainConfig

    out = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert all(f"{name} (default" in out for name in TrainConfig.model_fields)


def test_bad_inputs_exit_2_with_a_message(tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "nope"), "--home", str(tmp_path / "h")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["train", "--data", "x", "--set", "method=bogus", "--home", str(tmp_path / "h")])
    assert r.exit_code == 2 and "method" in r.output
    r = runner.invoke(app, ["train", "--data", "x", "--set", "nonsense"])
    assert r.exit_code == 2 and "FIELD=VALUE" in r.output
    r = runner.invoke(app, ["monitor", "--home", str(tmp_path / "empty"), "--once"])
    assert r.exit_code == 1 and "no champion" in r.output


def test_set_reaches_nested_fields():
    from tuneloop.apps.train_cli import build_config

    cfg = build_config(None, "quick", {"data": "d"}, ["augment.share=0.5", "lora_target_modules=[query, value]",
                                                      "label_smoothing=0.1"])
    assert cfg.augment.share == 0.5 and cfg.lora_target_modules == ["query", "value"] and cfg.label_smoothing == 0.1
    assert cfg.method == "freeze"  # the quick preset's strategy survives


@pytest.mark.timeout(600)
def test_tune_writes_a_config_train_accepts(tmp_path):
    from conftest import write_intent_csv as _write_csv
    from conftest import write_tiny_model

    data = tmp_path / "data"
    data.mkdir()
    _write_csv(data / "train.csv", 10)
    _write_csv(data / "test.csv", 2, seed=1, offset=1000)
    base = tmp_path / "base"
    write_tiny_model(base, labels=["a", "b"])
    out = tmp_path / "best.yaml"
    r = runner.invoke(app, ["tune", "--data", str(data), "--trials", "3", "--minutes", "5", "--out", str(out),
                            "--set", f"base_model={base}", "--set", "batch_size=8"])
    assert r.exit_code == 0, r.output
    best = yaml.safe_load(out.read_text())
    assert best["data"] == str(data) and 2 <= best["epochs"] <= 6 and best["batch_size"] in (16, 32, 64)
    from tuneloop.training.config import TrainConfig

    assert TrainConfig.from_yaml(out).learning_rate == best["learning_rate"]
