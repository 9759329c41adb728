"""`tuneloop models`: list / show / diff / promote / rollback over a home's registry (tables and --json,
exit codes 0 ok, 1 refused, 2 bad input), and the lineage a retrain records (trigger, feedback, data
hash, parent, gate verdict, promotions, rollbacks) as `models show` prints it."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_LABELS, save_tiny_llm, save_tiny_model, write_intent_csv, write_tiny_model
from typer.testing import CliRunner

from tuneloop.apps.cli import app
from tuneloop.apps.models_view import describe_feedback, describe_link, describe_trigger, metric_diff
from tuneloop.state.events import GATED, PROMOTED, ROLLED_BACK, UNBLOCKED, EventLog
from tuneloop.state.home import Home
from tuneloop.state.registry import read_champion
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

runner = CliRunner()
REVIEWERS = ("alice", "bob")


def _models(home: Home, *args: str, width: int = 200):
    return runner.invoke(app, ["models", *args, "--home", str(home.root)], env={"COLUMNS": str(width)})


def _json(home: Home, *args: str) -> dict:
    result = _models(home, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@dataclass(frozen=True)
class Trained:
    """A home whose champion was trained (one epoch) on tiny intent data, so a gate and a retrain can read
    its data; each test works on a copy (:meth:`copy`)."""

    root: Path
    data: Path
    base: Path
    tag: str

    def copy(self, dest: Path) -> Home:
        shutil.copytree(self.root, dest)
        return Home(dest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.train import train

    tmp = tmp_path_factory.mktemp("trained")
    data, base = tmp / "data", tmp / "base"
    data.mkdir()
    write_intent_csv(data / "train.csv", 12)  # as conftest's tiny_data
    write_intent_csv(data / "test.csv", 3, seed=1, offset=1000)
    write_tiny_model(base, labels=["a", "b"])
    home = Home(tmp / "home").ensure()
    # one epoch of every weight at a high rate: test macro F1 0.49, against 0.10 for random weights (seed 3)
    cfg = TrainConfig(data=str(data), base_model=str(base), epochs=1, batch_size=8, progress=False,
                      method="full", learning_rate=5e-3)
    return Trained(home.root, data, base, train(cfg, home).tag)


def _feedback(home: Home, tag: str, per_label: int = 10) -> int:
    """Log ``per_label`` requests per tiny label with reviewers' feedback (alternating alice, bob)."""
    traffic = TrafficLog(home.store_url)
    rows = [(f"{label.replace('_', ' ')} from feedback {i}", label) for label in TINY_LABELS for i in range(per_label)]
    recs = [PredictionRecord(f"{time.time_ns()}-{i}", time.time(), text, label, 0.9, [(label, 0.9)], tag, 5.0)
            for i, (text, label) in enumerate(rows)]
    traffic.log_predictions(recs)
    for i, rec in enumerate(recs):
        traffic.add_feedback(rec.request_id, rec.label, reviewer=REVIEWERS[i % 2])
    return len(recs)


def test_pure_views_format_metrics_triggers_and_feedback():
    rows = metric_diff({"test": {"macro_f1": 0.5, "accuracy": 0.6, "per_class": [1, 2]}, "n": True},
                       {"test": {"macro_f1": 0.75, "ece": 0.1}})
    assert rows == [{"metric": "test.macro_f1", "a": 0.5, "b": 0.75, "diff": 0.25},
                    {"metric": "test.accuracy", "a": 0.6, "b": None, "diff": None},
                    {"metric": "test.ece", "a": None, "b": 0.1, "diff": None}]
    assert describe_trigger(None) == "-"
    assert describe_trigger({"kind": "drift", "window": [41, 120], "signals": ["text_drift", "label_drift"]}) == (
        "drift, window 41-120, signals text_drift, label_drift")
    assert describe_trigger({"kind": "job", "decision_id": 7, "window": [1, 40]}) == "job, decision 7, window 1-40"
    assert describe_feedback({"rows": 0}) == "-"
    assert describe_feedback({"rows": 40, "train_rows": 30, "holdout_rows": 10, "reviewers": ["alice", "bob"],
                              "request_seq": [1, 40]}) == "40 rows (30 train, 10 holdout) by alice, bob; requests seq 1-40"
    event = {"at": "2026-12-03T19:14:57+00:00", "actor": "cli", "reason": "on-call"}
    link = {"missing": False, "trigger": None, "feedback": None, "data_sha256": "ab" * 32, "blocked": True,
            "gate": {"verdict": "refused", "reason": "macro_f1 ... -> keep champion"}, "promotions": [event],
            "rollbacks": [{**event, "actor": None, "reason": "live accuracy fell"}]}
    assert describe_link(link) == [
        ("trigger", "-"), ("feedback", "-"), ("data sha256", "ab" * 32), ("gate", "refused: macro_f1 ... -> keep champion"),
        ("promoted", "2026-12-03 19:14:57 by cli: on-call"), ("rolled back", "2026-12-03 19:14:57: live accuracy fell"),
        ("blocked", "yes (`tuneloop models promote --force` lifts it)")]


def test_list_show_diff_both_tasks_and_bad_input(champion_home):
    home = champion_home
    first = read_champion(home).tag
    second = save_tiny_model(home, seed=1)
    llm = save_tiny_llm(home)
    doc = _json(home, "list")
    assert doc["champion"] == first and doc["previous"] is None
    rows = {r["tag"]: r for r in doc["models"]}
    assert list(rows) == [first, second, llm]  # oldest first, both model names of the store
    assert rows[first]["champion"] and not rows[second]["champion"] and rows[first]["gate"] == "-"
    assert rows[llm]["task"] == "generation" and rows[llm]["name"] == "tuneloop-generator"
    assert rows[llm]["metric"] == {"name": "rougeL", "value": None}
    assert rows[first]["metric"]["name"] == "macro_f1" and rows[first]["base_model"] == "tiny-random-bert"
    assert not any(r["blocked"] for r in rows.values())

    table = _models(home, "list")
    assert table.exit_code == 0 and first in table.output and "tiny-random-llama" in table.output, table.output
    champion_line = next(line for line in table.output.splitlines() if first in line)
    assert champion_line.split()[:2] == ["*", first] and "macro_f1" in champion_line

    shown = _json(home, "show")  # default: the champion
    assert shown["tag"] == first and shown["row"]["champion"] and shown["card"] is None
    assert shown["metrics"] == {"test_accuracy": 0.0} and shown["metadata"]["data_sha256"] == "0" * 64
    (link,) = shown["lineage"]
    assert link["tag"] == first and link["trigger"] is None and link["parent"] is None
    assert [p["reason"] for p in link["promotions"]] == ["first model"]

    diff = _json(home, "diff", first, second)
    assert diff["a"] == first and diff["b"] == second
    assert diff["metrics"] == [{"metric": "test_accuracy", "a": 0.0, "b": 0.0, "diff": 0.0}]
    diff_table = _models(home, "diff", first, second).output
    assert f"a = {first}" in diff_table and "test_accuracy" in diff_table and "+0.0000" in diff_table, diff_table

    missing = _models(home, "show", "tuneloop-classifier:nosuchversion")
    assert missing.exit_code == 2 and "not in the store" in missing.output
    assert _models(home, "diff", first, "Not A Tag!").exit_code == 2
    assert _models(home, "diff", first, "tuneloop-classifier:nosuchversion").exit_code == 2
    nothing = _models(home, "rollback", "--reason", "test")
    assert nothing.exit_code == 2 and "no earlier champion" in nothing.output
    assert _models(home, "promote", first, "--reason", "again").exit_code == 2  # the champion already
    assert _models(home, "promote", second, "--reason", " ").exit_code == 2
    (home.root / "empty").mkdir()
    empty = runner.invoke(app, ["models", "show", "--home", str(home.root / "empty")])
    assert empty.exit_code == 2 and "no champion" in empty.output, empty.output
    nowhere = runner.invoke(app, ["models", "list", "--home", str(home.root / "typo")])
    assert nowhere.exit_code == 2 and "no tuneloop home" in nowhere.output and not (home.root / "typo").exists()


@pytest.mark.timeout(300)
def test_promote_gate_force_block_and_rollback_are_audited(trained, tmp_path):
    home, first = trained.copy(tmp_path / "home"), trained.tag
    worse = save_tiny_model(home, seed=3)  # random weights: no better than the trained champion
    log = EventLog(home.store_url)

    refused = _models(home, "promote", worse, "--reason", "try it", "--json")
    assert refused.exit_code == 1, refused.output
    outcome = json.loads(refused.stdout)
    assert not outcome["promoted"] and outcome["gate"]["holdout_rows"] == 12  # tiny_data's test split
    gap = outcome["gate"]["challenger"]["macro_f1"] - outcome["gate"]["champion"]["macro_f1"]
    assert gap < 0.01 and "keep champion" in outcome["gate"]["reason"]
    (gated,) = log.events(kind=GATED)
    assert gated.tag == worse and gated.actor == "cli" and gated.detail["promoted"] is False
    assert read_champion(home).tag == first
    assert {r["tag"]: r["gate"] for r in _json(home, "list")["models"]}[worse] == "refused"

    forced = _models(home, "promote", worse, "--reason", "on-call override", "--force")
    assert forced.exit_code == 0 and "forced (no gate)" in forced.output, forced.output
    assert read_champion(home).tag == worse
    promoted = log.events(kind=PROMOTED)[-1]
    assert (promoted.tag, promoted.actor, promoted.reason) == (worse, "cli", "on-call override")
    assert promoted.detail["forced"] is True and promoted.detail["previous"] == first
    assert len(log.events(kind=GATED)) == 1  # --force ran no gate

    listed = _json(home, "list")
    assert listed["champion"] == worse and listed["previous"] == first
    back = _json(home, "rollback", "--reason", "live accuracy fell [/x]")
    assert back == {"champion": first, "reverted": worse, "blocked": True, "reason": "live accuracy fell [/x]"}
    assert read_champion(home).tag == first and log.is_blocked(worse)
    rolled = log.events(kind=ROLLED_BACK)[-1]
    assert rolled.tag == worse and rolled.actor == "cli"

    blocked = _models(home, "promote", worse, "--reason", "again", "--min-gain", "-1")
    assert blocked.exit_code == 1 and "is blocked" in blocked.output, blocked.output
    assert len(log.events(kind=GATED)) == 1 and read_champion(home).tag == first  # refused before any gate
    assert _models(home, "promote", worse, "--reason", "fixed upstream", "--force").exit_code == 0
    assert [e.tag for e in log.events(kind=UNBLOCKED)] == [worse] and not log.is_blocked(worse)
    kept = _json(home, "rollback", "--reason", "once more", "--no-block")
    assert kept["blocked"] is False and not log.is_blocked(worse) and read_champion(home).tag == first

    shown = _json(home, "show", worse)
    (link,) = shown["lineage"]
    assert link["gate"]["verdict"] == "refused" and [p["actor"] for p in link["promotions"]] == ["cli", "cli"]
    assert [r["reason"] for r in link["rollbacks"]] == ["live accuracy fell [/x]", "once more"]
    text = _models(home, "show", worse)
    assert text.exit_code == 0 and "refused" in text.output and "live accuracy fell [/x]" in text.output, text.output


@pytest.mark.timeout(300)
def test_lineage_of_a_retrain_shows_as_a_chain(trained, tmp_path):
    from tuneloop.monitoring.act import RETRAIN_DUE
    from tuneloop.monitoring.gate import GateConfig
    from tuneloop.monitoring.retrain import RetrainConfig, retrain_and_gate
    from tuneloop.monitoring.retrain_job import pending_retrain
    from tuneloop.state.audit import AuditLog
    from tuneloop.state.registry import get_model

    home, first = trained.copy(tmp_path / "home"), trained.tag
    n = _feedback(home, first)
    labelled = TrafficLog(home.store_url).labelled()
    permissive = GateConfig(min_gain=-1.0, max_accuracy_drop=1.0)
    cfg = RetrainConfig(overrides={"epochs": 1, "base_model": str(trained.base)}, gate=permissive)
    trigger = {"kind": "drift", "window": [1, n], "signals": ["text_drift", "label_drift"]}
    outcome = retrain_and_gate(home, first, labelled, cfg, lineage=trigger)
    second = outcome.challenger_tag
    assert outcome.promoted and read_champion(home).tag == second

    lineage = get_model(home, second).info.metadata["lineage"]
    assert lineage["trigger"] == trigger and lineage["parent"] == first
    fb = lineage["feedback"]
    assert fb["rows"] == n and fb["train_rows"] == outcome.feedback_train_rows
    assert fb["holdout_rows"] == outcome.feedback_holdout_rows and fb["reviewers"] == list(REVIEWERS)
    assert fb["feedback_seq"] == [int(labelled["feedback_seq"].min()), int(labelled["feedback_seq"].max())]
    assert fb["request_seq"] == [1, n] and fb["request_ids"]["first"] == labelled["request_id"].iloc[0]
    assert lineage["data_sha256"] == get_model(home, first).info.metadata["data_sha256"]
    (gated,) = EventLog(home.store_url).events(kind=GATED)
    assert gated.tag == second and gated.actor == "monitor" and gated.detail["promoted"] is True
    assert gated.detail["holdout_rows"] == outcome.holdout_rows and set(gated.detail["challenger"]) >= {"macro_f1"}

    # a later model's link: a `tuneloop retrain` job serving a monitor's retrain_due decision (a job's real
    # run records it too: test_retrain_job.py::test_two_concurrent_retrains_never_overlap)
    audit = AuditLog(home.store_url)
    due = audit.record(window_start_seq=1, window_end_seq=n, window_size=n, degraded=True, decision=RETRAIN_DUE,
                       signals={"signals": [], "fired": ["embedding_drift"]}, reason="retrain: degraded (test)",
                       champion_tag=second)
    assert pending_retrain(audit).trigger({"run_id": "r1"}) == {
        "kind": "job", "decision_id": due, "window": [1, n], "signals": ["embedding_drift"],
        "reason": "retrain: degraded (test)", "run_id": "r1"}

    shown = _json(home, "show")
    assert [link["tag"] for link in shown["lineage"]] == [second, first]
    newest, oldest = shown["lineage"]
    assert newest["trigger"] == trigger and newest["feedback"] == fb and newest["parent"] == first
    assert oldest["trigger"] is None and [p["reason"] for p in oldest["promotions"]] == ["first model"]
    assert [p["actor"] for p in newest["promotions"]] == ["monitor"] and newest["gate"]["verdict"] == "passed"
    assert newest["data_sha256"] == oldest["data_sha256"] == lineage["data_sha256"]
    assert shown["card"].startswith("# Model card") and shown["row"]["gate"] == "passed"
    text = _models(home, "show", width=250)
    assert text.exit_code == 0, text.output
    for needle in ("drift, window 1-40, signals text_drift, label_drift", "40 rows", "by alice, bob", "Model card",
                   first, second, lineage["data_sha256"][:12]):
        assert needle in text.output, (needle, text.output)
    diff = _json(home, "diff", first, second)
    f1 = next(r for r in diff["metrics"] if r["metric"] == "test.macro_f1")
    assert f1["diff"] == pytest.approx(f1["b"] - f1["a"])
