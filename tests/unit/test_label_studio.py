"""Label Studio: the label queue exported as Label Studio tasks (data + predictions, the model's answer
pre-annotated) with a labeling config, and Label Studio's JSON export read back as reviewer feedback.

The exports below are written in the format Label Studio documents for its "JSON" export
(labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks): tasks with ``id``, ``data`` as
imported, ``annotations`` (``id``, ``result`` of ``{id, from_name, to_name, type, value}``,
``was_cancelled``, ``ground_truth``, ``created_at``, ``updated_at``, ``lead_time``, ``task``,
``completed_by``) and ``predictions``; ``choices`` values are ``{"choices": [...]}``, ``textarea`` values
``{"text": [...]}`` (labelstud.io/tags/choices, /tags/textarea)."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from conftest import TINY_LABELS


def ls_annotation(ann_id: int, result: list[dict], completed_by=7, cancelled: bool = False,
                  updated_at: str = "2026-12-01T10:00:00.000000Z") -> dict:
    """One annotation as Label Studio exports it."""
    return {"id": ann_id, "completed_by": completed_by, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2026-12-01T09:59:00.000000Z", "updated_at": updated_at,
            "lead_time": 4.2, "prediction": {}, "result_count": 0, "task": ann_id, "project": 3, "parent_prediction": 1}


def choice(control: str, value: str, region: str = "r1") -> dict:
    return {"id": region, "from_name": control, "to_name": "text", "type": "choices", "origin": "manual",
            "value": {"choices": [value]}}


def textarea(text: str) -> dict:
    return {"id": "t1", "from_name": "reply", "to_name": "text", "type": "textarea", "origin": "manual",
            "value": {"text": [text]}}


def as_exported(tasks: list[dict], annotations: dict[str, list[dict]]) -> list[dict]:
    """Our exported tasks as Label Studio returns them after labelling: an id per task and its
    annotations (by request id) beside the data and predictions it was given."""
    return [{"id": i + 1, "data": t["data"], "annotations": annotations.get(t["data"]["request_id"], []),
             "predictions": t["predictions"], "drafts": [], "created_at": "2026-12-01T09:00:00.000000Z",
             "updated_at": "2026-12-01T10:00:00.000000Z", "inner_id": i + 1, "total_annotations": 1,
             "cancelled_annotations": 0, "project": 3}
            for i, t in enumerate(tasks)]


def test_labeling_configs_name_the_controls_the_tasks_use():
    from tuneloop.monitoring.label_studio import labeling_config

    labels = ["lost_card", 'a<b & "c"']
    view = ET.fromstring(labeling_config("classification", labels))
    (text,) = view.iter("Text")
    assert text.attrib == {"name": "text", "value": "$text"}
    (choices,) = view.iter("Choices")
    assert choices.attrib["name"] == "label" and choices.attrib["toName"] == "text"
    assert choices.attrib["choice"] == "single"
    assert [c.attrib["value"] for c in choices.iter("Choice")] == labels  # escaped in XML, intact when parsed
    view = ET.fromstring(labeling_config("generation"))
    (area,) = view.iter("TextArea")
    assert area.attrib["name"] == "reply" and area.attrib["toName"] == "text" and area.attrib["editable"] == "true"
    (rating,) = view.iter("Choices")
    assert rating.attrib["name"] == "rating" and [c.attrib["value"] for c in rating] == ["good", "bad"]
    with pytest.raises(ValueError, match="labels"):
        labeling_config("classification", [])
    with pytest.raises(ValueError, match="classification or generation"):
        labeling_config("ranking")


def test_queue_items_become_tasks_with_the_model_answer_pre_annotated():
    from tuneloop.monitoring.label_studio import export_tasks

    items = [{"request_id": "a" * 32, "text": "lost my card", "label": "lost_card", "confidence": 0.41,
              "novelty": 0.3, "score": 0.9, "model_tag": "m:2"},
             {"request_id": "b" * 32, "text": "hmm", "label": "not_a_label", "confidence": 0.2, "score": 0.5}]
    tasks = export_tasks(items, "classification", "m:1", TINY_LABELS)
    assert tasks[0]["data"] == {"text": "lost my card", "request_id": "a" * 32, "model_tag": "m:2",
                                "confidence": 0.41, "queue_score": 0.9}
    (prediction,) = tasks[0]["predictions"]
    assert prediction["model_version"] == "m:2" and prediction["score"] == 0.41
    (result,) = prediction["result"]
    assert result["from_name"] == "label" and result["to_name"] == "text" and result["type"] == "choices"
    assert result["value"] == {"choices": ["lost_card"]} and result["id"]
    assert tasks[1]["data"]["model_tag"] == "m:1" and tasks[1]["predictions"] == []  # not a choice: not pre-annotated
    gen = export_tasks([{"request_id": "c" * 32, "text": "cancel my order", "label": "stop", "confidence": 0.6,
                         "score": 0.7, "reply": "Sure, cancelled."}], "generation", "llm:1")
    assert gen[0]["data"]["reply"] == "Sure, cancelled."
    (result,) = gen[0]["predictions"][0]["result"]
    assert result["type"] == "textarea" and result["from_name"] == "reply" and result["value"] == {"text": ["Sure, cancelled."]}
    assert len({r["id"] for t in tasks + gen for p in t["predictions"] for r in p["result"]}) == 2  # ids differ


def test_an_export_reads_back_as_feedback_newest_annotation_wins():
    from tuneloop.monitoring.label_studio import LabelStudioFormatError, read_export

    data = {"text": "x", "model_tag": "m:1"}
    exported = [
        {"id": 1, "data": {**data, "request_id": "r1"}, "predictions": [],
         "annotations": [ls_annotation(1, [choice("label", "refund")], completed_by=3)]},
        {"id": 2, "data": {**data, "request_id": "r2"}, "predictions": [],
         "annotations": [ls_annotation(2, [choice("label", "top_up")], cancelled=True)]},
        {"id": 3, "data": {**data, "request_id": "r3"}, "predictions": [], "annotations": [
            ls_annotation(3, [choice("label", "refund")], completed_by={"id": 4, "email": "ann@example.org"},
                          updated_at="2026-12-01T11:00:00.000000Z"),
            ls_annotation(4, [choice("label", "lost_card")], completed_by={"id": 5, "email": "bo@example.org"},
                          updated_at="2026-12-01T12:00:00.000000Z")]},
        {"id": 4, "data": data, "annotations": [ls_annotation(5, [choice("label", "refund")])]},
        {"id": 5, "data": {**data, "request_id": "r5"}, "annotations": []},
        {"id": 6, "data": {**data, "request_id": "r6"}, "annotations": [ls_annotation(6, [])]},
        {"id": 7, "data": {**data, "request_id": "g1", "reply": "Sure."},
         "annotations": [ls_annotation(7, [textarea("Sure."), choice("rating", "good")])]},
        {"id": 8, "data": {**data, "request_id": "g2", "reply": "Sure."},
         "annotations": [ls_annotation(8, [textarea("Your order is cancelled."), choice("rating", "bad")])]},
    ]
    plan = read_export(exported)
    rows = {r.request_id: r for r in plan.rows}
    assert list(rows) == ["r1", "r3", "g1", "g2"] and plan.tasks == 8
    assert rows["r1"].label == "refund" and rows["r1"].reviewer == "labelstudio:3"
    assert rows["r3"].label == "lost_card" and rows["r3"].reviewer == "bo@example.org"  # the newer annotation
    assert (rows["g1"].reply, rows["g1"].rating) == (None, 1)  # reply left as the model wrote it: a rating only
    assert (rows["g2"].reply, rows["g2"].rating) == ("Your order is cancelled.", -1)
    assert dict(plan.skipped) == {"cancelled": 1, "no_request_id": 1, "no_annotation": 2, "empty": 1}
    assert plan.several_annotations == 1
    assert {r.reviewer for r in read_export(exported, reviewer="team-a").rows} == {"team-a"}
    for bad in ({"tasks": []}, [1, 2], "x"):
        with pytest.raises(LabelStudioFormatError, match="list of task objects"):
            read_export(bad)


@pytest.fixture()
def queued_home(champion_home, home_db_url):
    """A champion home with 4 logged predictions and 1 logged generation (store: SQLite, then
    PostgreSQL), and a label queue of the 4 predictions, as the monitor writes it."""
    from tuneloop.monitoring.label_queue import QUEUE_FILE, rank_for_labelling, write_queue
    from tuneloop.state.home import Home
    from tuneloop.state.registry import read_champion
    from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord, TrafficLog

    home = Home(champion_home.root, db_url=home_db_url)
    tag = read_champion(home).tag
    traffic = TrafficLog(home.store_url)
    records = [PredictionRecord(f"{i:032x}", time.time(), f"text {i}", TINY_LABELS[i], 0.3 + i / 10,
                                [(TINY_LABELS[i], 0.3 + i / 10)], tag, 3.0) for i in range(4)]
    records.append(PredictionRecord("9" * 32, time.time(), "cancel my order", "stop", 0.5, [], "llm:1", 4.0,
                                    generation=GenerationRecord("Sure.", "stop", 5, 2, -0.7)))
    traffic.log_predictions(records)
    window = traffic.read_window().iloc[:4]
    write_queue(home.root / QUEUE_FILE, rank_for_labelling(window, None, size=10), tag, "1-4")
    return home


def test_export_then_import_round_trip_records_reviewers(queued_home, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.apps.cli import app
    from tuneloop.state.traffic_store import TrafficLog

    home, db = queued_home, ["--db-url", queued_home.db_url] if queued_home.db_url else []
    out, config = tmp_path / "tasks.json", tmp_path / "config.xml"
    result = CliRunner().invoke(app, ["labels", "export", "--home", str(home.root), "--out", str(out),
                                      "--config-out", str(config)])
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text())
    assert [t["data"]["request_id"] for t in tasks] == [f"{i:032x}" for i in range(4)]  # least confident first
    assert all(t["predictions"][0]["result"][0]["value"]["choices"] == [TINY_LABELS[i]] for i, t in enumerate(tasks))
    assert [c.attrib["value"] for c in ET.fromstring(config.read_text()).iter("Choice")] == TINY_LABELS

    rid = [t["data"]["request_id"] for t in tasks]
    gen_task = {"data": {"text": "cancel my order", "request_id": "9" * 32, "reply": "Sure."}, "predictions": []}
    exported = as_exported(tasks + [gen_task, {"data": {"text": "?", "request_id": "f" * 32}, "predictions": []}], {
        rid[0]: [ls_annotation(1, [choice("label", "refund")], completed_by={"id": 2, "email": "ann@example.org"})],
        rid[1]: [ls_annotation(2, [choice("label", "top_up")], completed_by=9)],
        rid[2]: [ls_annotation(3, [choice("label", "top_up")], cancelled=True)],
        rid[3]: [ls_annotation(4, [choice("label", "no_such_label")])],
        "9" * 32: [ls_annotation(5, [textarea("Your order is cancelled."), choice("rating", "bad")])],
        "f" * 32: [ls_annotation(6, [choice("label", "refund")])],
    })
    export_file = tmp_path / "project-3-at-2026-12-01.json"
    export_file.write_text(json.dumps(exported))
    result = CliRunner().invoke(app, ["labels", "import", str(export_file), "--home", str(home.root), *db])
    assert result.exit_code == 0, result.output
    assert "imported 3 feedback row(s) from 6 task(s)" in result.output
    for counted in ("1 cancelled", "1 no annotation", "1 unknown label", "1 unknown request"):
        assert counted in result.output, result.output
    labelled = TrafficLog(home.store_url).labelled().set_index("request_id")
    assert labelled.loc[rid[0], "true_label"] == "refund" and labelled.loc[rid[0], "reviewer"] == "ann@example.org"
    assert labelled.loc[rid[1], "reviewer"] == "labelstudio:9"
    assert labelled.loc["9" * 32, "true_reply"] == "Your order is cancelled." and labelled.loc["9" * 32, "rating"] == -1
    assert len(labelled) == 3
    # the same file again changes nothing; --reviewer names every row's reviewer
    result = CliRunner().invoke(app, ["labels", "import", str(export_file), "--home", str(home.root), *db])
    assert "imported 0 feedback row(s)" in result.output and "3 unchanged" in result.output
    result = CliRunner().invoke(app, ["labels", "import", str(export_file), "--home", str(home.root), *db,
                                      "--reviewer", "team-a"])
    assert "imported 3 feedback row(s)" in result.output and "3 replaced" in result.output
    assert set(TrafficLog(home.store_url).labelled()["reviewer"]) == {"team-a"}
    pd.testing.assert_index_equal(TrafficLog(home.store_url).labelled().set_index("request_id").index, labelled.index)


def test_import_refuses_files_that_are_not_label_studio_exports(champion_home, tmp_path):
    from typer.testing import CliRunner

    from tuneloop.apps.cli import app

    for name, text in (("min.json", json.dumps({"text": "x", "label": "refund"})), ("bad.json", "{not json")):
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(app, ["labels", "import", str(tmp_path / name), "--home", str(champion_home.root)])
        assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    result = CliRunner().invoke(app, ["labels", "import", str(tmp_path / "min.json"), "--home", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no tuneloop" in result.output
