"""A demo that fails leaves a clear error and no half-made run folder that looks like a complete one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import write_intent_csv


def _banking77_like(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_intent_csv(data / "train.csv", n_per_label=12)
    write_intent_csv(data / "test.csv", n_per_label=4, offset=100)
    return data


def test_a_failed_stage_renames_the_run_folder_and_says_why(tmp_path, monkeypatch):
    import tuneloop.apps.demo as demo
    from tuneloop.state.home import Home

    def broken_train(cfg, home):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "train", broken_train)
    home = Home(tmp_path / "home")
    cfg = demo.DemoConfig(data=str(_banking77_like(tmp_path)), quick=True, scarce_intents=1, scarce_examples=2)
    with pytest.raises(demo.DemoFailed, match="during initial training: RuntimeError: disk full") as info:
        demo.run_demo(cfg, home)
    runs = sorted(p.name for p in home.runs_dir.iterdir())
    assert len(runs) == 1 and runs[0].endswith(".failed"), runs
    failed = home.runs_dir / runs[0]
    assert info.value.run_dir == failed and str(failed) in str(info.value)
    error = (failed / "error.txt").read_text()
    assert error.startswith("stage: initial training") and "disk full" in error
    assert not (failed / "report.json").exists()


def test_bad_input_fails_before_any_run_folder_exists(tmp_path):
    import tuneloop.apps.demo as demo
    from tuneloop.state.home import Home

    home = Home(tmp_path / "home")
    with pytest.raises(Exception, match="missing|not found|No such|exist"):
        demo.run_demo(demo.DemoConfig(data=str(tmp_path / "nowhere"), quick=True), home)
    assert not home.runs_dir.exists() or not any(home.runs_dir.iterdir())


def test_interrupted_runs_are_swept_finished_and_running_ones_kept(tmp_path):
    from tuneloop.apps.demo import PID_FILE, sweep_interrupted_runs

    runs = tmp_path / "runs"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, pid, report in (("demo-1", dead.pid, False), ("demo-2", os.getpid(), False), ("demo-3", None, True)):
        (runs / name).mkdir(parents=True)
        if pid is not None:
            (runs / name / PID_FILE).write_text(str(pid))
        if report:
            (runs / name / "report.json").write_text("{}")
    swept = sweep_interrupted_runs(runs)
    assert [p.name for p in swept] == ["demo-1.failed"]
    assert sorted(p.name for p in runs.iterdir()) == ["demo-1.failed", "demo-2", "demo-3"]
    assert "interrupted" in (runs / "demo-1.failed" / "error.txt").read_text()


def test_the_cli_prints_the_failure_and_exits_1(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import tuneloop.apps.demo as demo
    from tuneloop.apps.cli import app

    def broken_train(cfg, home):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "train", broken_train)
    result = CliRunner().invoke(app, ["demo", "--data", str(_banking77_like(tmp_path)), "--quick", "--scarce-intents",
                                      "1", "--scarce-examples", "2", "--home", str(tmp_path / "home")])
    assert result.exit_code == 1, result.output
    assert "error: the demo failed during initial training: RuntimeError: disk full" in result.output
    assert "error.txt" in result.output and result.exception is None or isinstance(result.exception, SystemExit)
