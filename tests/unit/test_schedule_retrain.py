"""Scheduled and incremental retraining: crontab expressions keep crontab's meaning (day of week 0 is
Sunday) and invalid ones are refused where they enter; the monitor's scheduler gets a cron job; a firing
with new feedback retrains through the drift retrain's lock and gate, records its trigger, and without new
feedback skips (or, with --no-retrain, records retrain_due); warm start champion starts from the champion's
weights (both tasks), base from the base model; the demo's comparison of the two."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import pytest
from conftest import TINY_LABELS
from pydantic import ValidationError
from typer.testing import CliRunner

from tuneloop.monitoring.cron import cron_trigger, next_fire
from tuneloop.monitoring.monitor import Monitor, MonitorConfig
from tuneloop.monitoring.retrain import RetrainConfig
from tuneloop.state.audit import AuditLog
from tuneloop.state.home import Home
from tuneloop.state.registry import get_model, read_champion
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

THURSDAY_NOON = datetime(2026, 12, 3, 12, tzinfo=UTC)
SUNDAY_3AM = datetime(2026, 12, 6, 3, tzinfo=UTC)
QUIET = {"metrics_port": None, "evidently_project": None, "save_html": False, "label_queue_size": 0,
         "embeddings": False}


def _versions(home: Home) -> list[str]:
    return sorted(p.name for p in home.models_dir.glob("*/*") if p.is_dir() and p.name != "latest")


def _feedback(home: Home, tag: str, n_per_label: int, offset: int = 0) -> None:
    traffic = TrafficLog(home.store_url)
    rows = [(f"{label.replace('_', ' ')} from feedback {i + offset}", label)
            for label in TINY_LABELS for i in range(n_per_label)]
    recs = [PredictionRecord(f"{time.time_ns()}-{i}", time.time(), t, l, 0.9, [(l, 0.9)], tag, 5.0)
            for i, (t, l) in enumerate(rows)]
    traffic.log_predictions(recs)
    for rec in recs:
        traffic.add_feedback(rec.request_id, rec.label)


def _trained_home(root, tiny_data, tiny_base) -> Home:
    """A home whose champion was trained (1 epoch, every weight) from ``tiny_base`` on ``tiny_data``, so
    that a retrain reloads its data and the champion's weights differ from the base's."""
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    home = Home(root).ensure()
    train(TrainConfig(data=str(tiny_data), base_model=str(tiny_base), epochs=1, batch_size=8, progress=False), home)
    return home


def _retrain(tiny_base, **extra) -> dict:
    return {"overrides": {"epochs": 1, "base_model": str(tiny_base)},
            "gate": {"min_gain": -1.0, "max_accuracy_drop": 1.0}, **extra}


def test_cron_expressions_keep_crontab_weekdays_and_invalid_ones_are_refused(tmp_path):
    from tuneloop.apps.monitor_cli import monitor

    # APScheduler 3 reads day of week 0 as Monday; crontab (and the "0 3 * * 0") means Sunday
    assert next_fire("0 3 * * 0", THURSDAY_NOON) == SUNDAY_3AM
    assert next_fire("0 3 * * 7", THURSDAY_NOON) == next_fire("0 3 * * sun", THURSDAY_NOON) == SUNDAY_3AM
    assert next_fire("30 4 * * 1-5", THURSDAY_NOON) == datetime(2026, 12, 4, 4, 30, tzinfo=UTC)  # Friday
    assert next_fire("0 3 * * 5-7", datetime(2026, 12, 5, 4, tzinfo=UTC)) == SUNDAY_3AM  # Sat after 03:00 -> Sun
    assert next_fire("*/15 * * * *", THURSDAY_NOON.replace(minute=1)) == THURSDAY_NOON.replace(minute=15)
    for bad, why in [("0 3 * *", "has 4 fields; it needs 5"), ("61 * * * *", r"maximum value \(59\)"),
                     ("0 3 1 * 0", "restrict one of them"), ("0 3 * * 8", "0-7"), ("0 3 * * fri-mon", "backwards"),
                     ("0 3 * * x", "sun..sat"), ("0 " * 150, "at most 200 characters")]:
        with pytest.raises(ValueError, match=why):
            cron_trigger(bad)
    with pytest.raises(ValidationError, match="retrain_cron"):
        MonitorConfig(retrain_cron="0 3 * *")
    assert MonitorConfig(retrain_cron=" 0  3 * * 0 ").retrain_cron == "0 3 * * 0"
    assert MonitorConfig().retrain_cron is None

    import typer

    app = typer.Typer()
    app.command()(monitor)
    app.command("other")(lambda: None)  # two commands: the group keeps `monitor` as a subcommand
    result = CliRunner().invoke(app, ["monitor", "--home", str(tmp_path / "none"), "--retrain-cron", "0 3 * *"])
    assert result.exit_code == 2 and "Invalid value for '--retrain-cron'" in result.output
    assert "needs 5" in result.output


def test_the_monitor_scheduler_gets_the_cron_job(champion_home, caplog):
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger

    from tuneloop.monitoring.monitor import run_scheduler
    from tuneloop.monitoring.schedule import JOB_ID, MISFIRE_GRACE_SECONDS, add_retrain_schedule

    mon = Monitor(champion_home, MonitorConfig(**QUIET, retrain_cron="0 3 * * 0"))
    sched = BackgroundScheduler(timezone="UTC")
    job = add_retrain_schedule(sched, mon.act_context(), mon.cfg.retrain_cron)
    assert sched.get_job(JOB_ID) is job and isinstance(job.trigger, CronTrigger)
    assert job.trigger.get_next_fire_time(None, THURSDAY_NOON) == SUNDAY_3AM
    assert job.max_instances == 1 and job.coalesce and job.misfire_grace_time == MISFIRE_GRACE_SECONDS

    # run_scheduler adds it beside the cycle (its signal handlers are restored after)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    caplog.set_level("INFO", logger="tuneloop.monitoring.schedule")
    try:
        run_scheduler(mon, 3600, stop_after=0.5)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert "scheduled retraining on cron '0 3 * * 0' (UTC)" in caplog.text
    time.sleep(0.5)  # the first cycle (an empty window: skipped) ends on its thread


@pytest.mark.timeout(300)
def test_a_cron_firing_retrains_on_new_feedback_through_the_gate_and_skips_without(tmp_path, tiny_data, tiny_base):
    from tuneloop.monitoring.act import RETRAIN_DUE, retrain_lock
    from tuneloop.monitoring.retrain_job import pending_retrain
    from tuneloop.monitoring.schedule import scheduled_retrain
    from tuneloop.state.events import GATED, EventLog

    home = _trained_home(tmp_path / "home", tiny_data, tiny_base)
    first = read_champion(home).tag
    cron = "0 3 * * 0"
    cfg = MonitorConfig(**QUIET, retrain_cron=cron, retrain=_retrain(tiny_base, warm_start="base"))
    audit = AuditLog(home.store_url)

    nothing = scheduled_retrain(Monitor(home, cfg).act_context(), cron)  # no feedback at all yet
    assert nothing.action == "retrain_skipped" and "no feedback since the last retrain" in nothing.reason
    assert _versions(home) == [first.split(":")[1]]

    _feedback(home, first, 5)  # 20 labels, seq 1..20
    done = scheduled_retrain(Monitor(home, cfg).act_context(), cron)
    assert done.action == "retrain_promoted", done.reason
    assert done.reason.startswith("Scheduled retrain (cron '0 3 * * 0', UTC): feedback seq 1..20 is new. Gate:")
    assert read_champion(home).tag == done.retrain["challenger_tag"] != first
    assert done.retrain["feedback_train_rows"] + done.retrain["feedback_holdout_rows"] == 20
    assert audit.get_state("feedback_cursor") == 20
    meta = get_model(home, done.retrain["challenger_tag"]).info.metadata
    assert meta["lineage"]["trigger"] == {"kind": "schedule", "cron": cron, "feedback_seq": [0, 20]}
    assert [e.kind for e in EventLog(home.store_url).events(tag=done.retrain["challenger_tag"], kind=GATED)] == [GATED]
    row = audit.decisions().set_index("id").loc[done.decision_id]
    assert row["decision"] == "retrain_promoted" and row["signals"]["schedule"]["cron"] == cron
    assert row["window_size"] == 0 and not row["degraded"]

    again = scheduled_retrain(Monitor(home, cfg).act_context(), cron)  # nothing new since: skip
    assert again.action == "retrain_skipped" and "(feedback seq 20)" in again.reason
    assert len(_versions(home)) == 2

    _feedback(home, first, 1, offset=100)  # 4 new labels, seq 21..24
    with retrain_lock(home) as held:  # a drift retrain (or `tuneloop retrain`) is running
        assert held
        busy = scheduled_retrain(Monitor(home, cfg).act_context(), cron)
    assert busy.action == "retrain_busy" and audit.get_state("feedback_cursor") == 20

    deferred = scheduled_retrain(Monitor(home, cfg, defer_retrain=True).act_context(), cron)  # --no-retrain
    assert deferred.action == RETRAIN_DUE and "feedback seq 21..24 is new" in deferred.reason
    assert pending_retrain(audit).decision_id == deferred.decision_id  # `tuneloop retrain` serves it
    assert len(_versions(home)) == 2 and audit.get_state("feedback_cursor") == 20
    assert list(audit.decisions()["decision"]) == ["retrain_skipped", "retrain_promoted", "retrain_skipped",
                                                   "retrain_busy", RETRAIN_DUE]


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


def test_warm_start_champion_starts_from_the_champions_classifier(tmp_path, tiny_data, tiny_base):
    from tuneloop.monitoring.retrain import retrain_config
    from tuneloop.monitoring.warm_start import warm_start_configs
    from tuneloop.training.model import build_model
    from tuneloop.training.predict import Classifier
    from tuneloop.training.task import task_of

    home = _trained_home(tmp_path / "home", tiny_data, tiny_base)
    champion = get_model(home, read_champion(home).tag)
    meta = dict(champion.info.metadata)
    train_cfg = retrain_config(champion, RetrainConfig(overrides={"base_model": str(tiny_base)}))
    labels = task_of(meta).load_splits(train_cfg).labels
    champion_state = Classifier.load(champion.path, device="cpu").model.state_dict()

    fit, saved, record = warm_start_configs(train_cfg, "champion", str(champion.path), meta, labels, 0.3)
    _, start = build_model(fit, labels)  # what the trainer builds before its first step
    assert _same_weights(start.state_dict(), champion_state)  # encoder and classifier head alike
    assert fit.learning_rate == pytest.approx(train_cfg.learning_rate * 0.3) == saved.learning_rate
    assert saved.base_model == str(tiny_base) and fit.base_model == str(champion.path)
    assert record == {"warm_start": "champion", "requested": "champion", "learning_rate": fit.learning_rate}

    fit_b, saved_b, record_b = warm_start_configs(train_cfg, "base", str(champion.path), meta, labels)
    _, start_b = build_model(fit_b, labels)
    assert fit_b == saved_b == train_cfg and record_b["warm_start"] == "base"
    assert not _same_weights(start_b.state_dict(), champion_state)
    # the base's encoder (its head was for other labels and is new)
    base_state = Classifier.load(tiny_base, device="cpu").model.state_dict()
    assert _same_weights({k: v for k, v in start_b.state_dict().items() if "classifier" not in k},
                         {k: v for k, v in base_state.items() if "classifier" not in k})

    # a champion over other labels cannot lend its head: the run starts from the base, and says why
    _, _, record_c = warm_start_configs(train_cfg, "champion", str(champion.path), {**meta, "labels": ["x", "y"]}, labels)
    assert record_c["warm_start"] == "base" and "labels differ" in record_c["reason"]
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        warm_start_configs(train_cfg, "champion", str(champion.path), meta, labels, 0.0)


def test_warm_start_champion_starts_a_generator_from_the_champions_merged_weights(home, tiny_llm):
    from conftest import save_tiny_llm
    from transformers import AutoModelForCausalLM

    from tuneloop.monitoring.warm_start import warm_start_configs
    from tuneloop.state.registry import promote
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.gen_train import apply_method

    promote(home, save_tiny_llm(home, seed=1), reason="test")  # other weights than the base (seed 0)
    champion = get_model(home, read_champion(home).tag)
    train_cfg = TrainConfig.for_preset("quick", task="generation", data="unused", base_model=str(tiny_llm))
    fit, saved, record = warm_start_configs(train_cfg, "champion", str(champion.path), dict(champion.info.metadata),
                                            None)
    assert record["warm_start"] == "champion" and saved.base_model == str(tiny_llm) and fit.method == "lora"
    assert fit.learning_rate == pytest.approx(train_cfg.learning_rate * 0.3)

    def start_of(cfg) -> dict:  # as gen_train builds it: the folder, then LoRA on top, merged (B = 0 at the start)
        model = apply_method(AutoModelForCausalLM.from_pretrained(cfg.base_model, use_safetensors=True), cfg)
        return model.merge_and_unload().state_dict()

    champion_state = AutoModelForCausalLM.from_pretrained(champion.path, use_safetensors=True).state_dict()
    base_state = AutoModelForCausalLM.from_pretrained(tiny_llm, use_safetensors=True).state_dict()
    assert _same_weights(start_of(fit), champion_state) and not _same_weights(champion_state, base_state)
    fit_b, _, _ = warm_start_configs(train_cfg, "base", str(champion.path), dict(champion.info.metadata), None)
    assert _same_weights(start_of(fit_b), base_state)


@pytest.mark.timeout(300)
def test_demo_warm_start_comparison_retrains_from_the_other_start_without_promoting(tmp_path, tiny_data, tiny_base):
    from tuneloop.apps.demo_warm_start import compare_warm_starts, promoted_retrain, watch_outcome
    from tuneloop.monitoring.schedule import scheduled_retrain
    from tuneloop.state.events import WATCHED, EventLog
    from tuneloop.training.predict import Classifier

    home = _trained_home(tmp_path / "home", tiny_data, tiny_base)
    first = read_champion(home).tag
    _feedback(home, first, 5)
    # a tiny learning-rate factor: a champion-started challenger ends where it started, at the champion
    cfg = MonitorConfig(**QUIET, retrain=_retrain(tiny_base, warm_start="base", warm_start_lr_scale=1e-6))
    done = scheduled_retrain(Monitor(home, cfg).act_context(), "0 3 * * 0")
    outcome = promoted_retrain(home)
    assert done.action == "retrain_promoted" and outcome == done.retrain and outcome["warm_start"] == "base"

    report = compare_warm_starts(home, outcome, cfg.retrain)
    assert report["default"] == "base" and report["same_holdout"] and report["feedback_seq_until"] == 20
    base, champ = report["base"], report["champion"]
    assert base["tag"] == outcome["challenger_tag"] and base["under_traffic"] and base["started_from"] == "base"
    assert champ["started_from"] == "champion" and not champ["promoted"] and not champ["under_traffic"]
    assert champ["metric"] == base["metric"] == "macro_f1" and 0 <= champ["value"] <= 1
    assert champ["seconds"] >= champ["train_seconds"] > 0 and champ["holdout_rows"] == base["holdout_rows"]
    assert champ["learning_rate"] == pytest.approx(base["learning_rate"] * 1e-6)
    assert read_champion(home).tag == outcome["challenger_tag"]  # the comparison promoted nothing
    meta = get_model(home, champ["tag"]).info.metadata
    assert meta["lineage"]["trigger"]["kind"] == "warm_start_comparison" and meta["parent"] == first
    # it started from the first champion's weights and barely moved (learning rate x 1e-6)
    import torch

    start = Classifier.load(get_model(home, first).path, device="cpu").model.state_dict()
    end = Classifier.load(get_model(home, champ["tag"]).path, device="cpu").model.state_dict()
    assert max(float((start[k].float() - end[k].float()).abs().max()) for k in start) < 1e-3
    assert not torch.equal(start["classifier.weight"], Classifier.load(get_model(home, base["tag"]).path,
                                                                       device="cpu").model.state_dict()["classifier.weight"])
    # the post-swap watch figure: pending until a watched event, then its verdict
    tag = outcome["challenger_tag"]
    assert watch_outcome(home, tag, 7) == {"verdict": "pending", "requests": 7}
    EventLog(home.store_url).record(WATCHED, "kept: no regression", tag=tag, actor="monitor",
                                    detail={"verdict": "kept", "requests": 200})
    watched = watch_outcome(home, tag, 7)
    assert watched["verdict"] == "kept" and watched["requests"] == 200 and watched["event"] == WATCHED
    assert watch_outcome(home, None, 0)["verdict"] == "none"
