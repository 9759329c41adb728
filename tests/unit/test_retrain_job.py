"""Retraining as a job: `tuneloop monitor --no-retrain` records `retrain_due` on a drifted window and trains
nothing; `tuneloop retrain` retrains only when a retrain is due (or --force), exits 3 when another run
holds the store's retrain lock, 1 when the retrain fails (the decision stays due), and audits every
run; two concurrent runs on one store (SQLite, PostgreSQL): one retrains, the other is locked out."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import TINY_LABELS
from typer.testing import CliRunner

from tuneloop.apps.cli import app
from tuneloop.monitoring.act import RETRAIN_DUE, retrain_lock
from tuneloop.monitoring.monitor import Monitor, MonitorConfig
from tuneloop.monitoring.retrain_job import SERVED_KEY, pending_retrain
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import get_model, read_champion
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

runner = CliRunner()
# One drifted window decides `retrain` at once: confirmed by itself, no labels needed, one signal enough.
DRIFT_CFG = {"metrics_port": None, "evidently_project": None, "save_html": False, "label_queue_size": 0,
             "embeddings": False, "policy": {"min_window": 30, "confirm_windows": 1, "min_new_labels": 0,
                                             "min_signals": 1}}


def _versions(home: Home) -> list[str]:
    return sorted(p.name for p in home.models_dir.glob("*/*") if p.is_dir() and p.name != "latest")


def _log(traffic: TrafficLog, texts: list[str], labels: list[str], tag: str, feedback: bool = False) -> None:
    recs = [PredictionRecord(f"{time.time_ns()}-{i}", time.time(), t, l, 0.9, [(l, 0.9)], tag, 5.0)
            for i, (t, l) in enumerate(zip(texts, labels))]
    traffic.log_predictions(recs)
    if feedback:
        for rec in recs:
            traffic.add_feedback(rec.request_id, rec.label)


def _drifted_window(home: Home, n: int = 40) -> None:
    """``n`` requests nothing like the tiny champion's reference ("where is my card number i")."""
    tag = read_champion(home).tag
    texts = [f"zebra quantum xylophone invoice {i} {'!' * (i % 7)} OK??" for i in range(n)]
    _log(TrafficLog(home.store_url), texts, [TINY_LABELS[i % 4] for i in range(n)], tag)


def _write_cfg(path, **extra) -> str:
    path.write_text(yaml.safe_dump({**DRIFT_CFG, **extra}))
    return str(path)


def test_the_commands_explain_the_job_and_the_launcher():
    def help_text(command: str) -> str:  # words as printed, whatever the wrapping
        return " ".join(runner.invoke(app, [command, "--help"], terminal_width=200).output.split())

    out = help_text("retrain")
    assert "Exit codes: 0 done" in out and "3 another run" in out and "--db-url" in out and "--nproc" in out
    assert "--no-retrain" in help_text("monitor")
    train_help = help_text("train")
    assert "torch.distributed.run --standalone --nproc_per_node N" in train_help and "FSDP" in train_help and "DeepSpeed" in train_help


def test_no_retrain_monitor_records_retrain_due_and_trains_nothing(champion_home):
    before = _versions(champion_home)
    mon = Monitor(champion_home, MonitorConfig(**DRIFT_CFG), defer_retrain=True)
    _drifted_window(champion_home)
    result = mon.cycle()
    assert result.action == RETRAIN_DUE and result.degraded and result.retrain is None, result.reason
    assert result.reason.startswith("retrain: degraded") and "Deferred (--no-retrain)" in result.reason
    get = mon.metrics.registry.get_sample_value
    assert get("tuneloop_monitor_retrains_total", {"outcome": "deferred"}) == 1
    assert get("tuneloop_monitor_retrains_total", {"outcome": "promoted"}) == 0
    assert get("tuneloop_monitor_decisions_total", {"action": "retrain"}) == 1
    audit = AuditLog(champion_home.store_url)
    (row,) = audit.decisions().itertuples()
    assert row.decision == RETRAIN_DUE and row.window_start_seq == 1 and row.window_end_seq == 40
    assert pending_retrain(audit).decision_id == row.id
    assert _versions(champion_home) == before  # nothing trained


def test_retrain_runs_only_when_due_and_audits_every_run(champion_home, tmp_path):
    home = ["--home", str(champion_home.root)]
    cfg = _write_cfg(tmp_path / "monitor.yaml")
    before = _versions(champion_home)
    nothing = runner.invoke(app, ["retrain", *home, "--config", cfg])
    assert nothing.exit_code == 0 and nothing.output.startswith("retrain_skipped: No retrain due"), nothing.output

    _drifted_window(champion_home)
    monitored = runner.invoke(app, ["monitor", *home, "--config", cfg, "--once", "--no-retrain", "--quiet"])
    assert monitored.exit_code == 0 and monitored.output.startswith("retrain_due: retrain: degraded"), monitored.output
    audit = AuditLog(champion_home.store_url)
    due = pending_retrain(audit).decision_id

    with retrain_lock(champion_home) as held:  # a retrain in progress elsewhere
        assert held
        locked = runner.invoke(app, ["retrain", *home, "--config", cfg])
    assert locked.exit_code == 3 and locked.output.startswith("retrain_locked:"), locked.output

    # the tiny champion records no training data: the retrain fails, exit 1, and the decision stays due
    failed = runner.invoke(app, ["retrain", *home, "--config", cfg])
    assert failed.exit_code == 1 and failed.output.startswith("retrain_failed:"), failed.output
    assert pending_retrain(audit).decision_id == due and audit.get_state(SERVED_KEY) is None

    rows = audit.decisions()
    assert list(rows["decision"]) == ["retrain_skipped", RETRAIN_DUE, "retrain_locked", "retrain_failed"]
    jobs = [s["job"] for s in rows["signals"] if "job" in s]
    assert [j["due_decision_id"] for j in jobs] == [None, None, due]  # the lock comes before the due check
    assert len({j["run_id"] for j in jobs}) == 3 and rows.iloc[3]["window_end_seq"] == 40
    assert _versions(champion_home) == before


def _trained_home(root, store: str | None, tiny_data, tiny_base, feedback_rows: int = 10) -> tuple[Home, int]:
    """A home whose champion was trained on ``tiny_data`` (so a retrain can reload its data), with
    labelled feedback logged and a monitor's ``retrain_due`` decision recorded; returns it and the id."""
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    home = Home(root, db_url=store).ensure()
    first = train(TrainConfig(data=str(tiny_data), base_model=str(tiny_base), epochs=1, batch_size=8, progress=False),
                  home)
    rows = [(f"{l.replace('_', ' ')} from feedback {i}", l) for l in TINY_LABELS for i in range(feedback_rows)]
    _log(TrafficLog(home.store_url), [t for t, _ in rows], [l for _, l in rows], first.tag, feedback=True)
    due = AuditLog(home.store_url).record(window_start_seq=1, window_end_seq=len(rows), window_size=len(rows),
                                          signals={"signals": []}, degraded=True, decision=RETRAIN_DUE,
                                          reason="retrain: degraded (test)", champion_tag=first.tag)
    return home, due


def _retrain_cfg(path, tiny_base) -> str:
    return _write_cfg(path, retrain={"overrides": {"epochs": 1, "base_model": str(tiny_base)},
                                     "gate": {"min_gain": -1.0, "max_accuracy_drop": 1.0}})


@pytest.mark.timeout(400)
def test_two_concurrent_retrains_never_overlap(store_url, tmp_path, tiny_data, tiny_base):
    home, due = _trained_home(tmp_path / "home", store_url, tiny_data, tiny_base)
    cfg = _retrain_cfg(tmp_path / "monitor.yaml", tiny_base)
    first = read_champion(home).tag
    env = {**os.environ, "TUNELOOP_DB_URL": store_url}  # the store through the environment, as in a CronJob
    cmd = [sys.executable, "-m", "tuneloop.apps.cli", "retrain", "--home", str(home.root), "--config", cfg, "--quiet"]
    started = time.time()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=360)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 3], outs
    winner = outs[codes.index(0)]
    assert "retrain_promoted:" in winner and f"Job for decision {due}" in winner, winner
    assert "retrain_locked:" in outs[codes.index(3)]

    audit = AuditLog(store_url)
    rows = audit.decisions()
    runs = rows[rows["id"] > due]
    assert sorted(runs["decision"]) == ["retrain_locked", "retrain_promoted"]
    done, locked = runs.set_index("decision").loc["retrain_promoted"], runs.set_index("decision").loc["retrain_locked"]
    # no overlap: the loser was refused while the winner trained, i.e. before the winner's outcome was audited
    assert started < locked["created_at"] < done["created_at"]
    assert done["retrain"]["champion_tag"] == first and done["challenger_tag"] == read_champion(home).tag != first
    trigger = get_model(home, read_champion(home).tag).info.metadata["lineage"]["trigger"]  # models show's lineage
    assert (trigger["kind"], trigger["decision_id"], trigger["window"]) == ("job", due, [1, 40])
    assert len(_versions(home)) == 2  # the champion and one challenger
    assert audit.get_state(SERVED_KEY) == due and audit.get_state("feedback_cursor") > 0

    again = runner.invoke(app, ["retrain", "--home", str(home.root), "--db-url", store_url, "--config", cfg])
    assert again.exit_code == 0 and again.output.startswith("retrain_skipped:"), again.output  # served: idempotent
    assert len(_versions(home)) == 2


@pytest.mark.timeout(400)
def test_retrain_nproc_2_trains_in_two_processes_and_audits_once(tmp_path, tiny_data, tiny_base):
    """`retrain --nproc 2`: the launching run holds the lock and picks the due decision; two torchrun
    workers train (identical parameters), rank 0 gates, promotes and audits one row, which the launcher
    reads back."""
    import json

    home, due = _trained_home(tmp_path / "home", None, tiny_data, tiny_base)
    cfg, trace = _retrain_cfg(tmp_path / "monitor.yaml", tiny_base), tmp_path / "trace"
    first = read_champion(home).tag
    cmd = [sys.executable, "-m", "tuneloop.apps.cli", "retrain", "--home", str(home.root), "--config", cfg, "--quiet",
           "--nproc", "2"]
    run = subprocess.run(cmd, env={**os.environ, "TUNELOOP_DDP_TRACE": str(trace)}, capture_output=True, text=True,
                         timeout=360)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1].startswith(f"retrain_promoted: Job for decision {due}"), run.stdout
    params = [json.loads((trace / f"rank{r}-params.json").read_text()) for r in (0, 1)]
    assert params[0]["sha256"] == params[1]["sha256"] and {p["world_size"] for p in params} == {2}
    audit = AuditLog(home.store_url)
    rows = audit.decisions()
    (row,) = rows[rows["id"] > due].itertuples()
    assert row.decision == "retrain_promoted" and row.signals["job"]["nproc"] == 2
    assert row.signals["job"]["due_decision_id"] == due and row.challenger_tag == read_champion(home).tag != first
    assert len(_versions(home)) == 2 and audit.get_state(SERVED_KEY) == due
