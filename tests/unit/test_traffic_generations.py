"""Generations in the traffic store: a generation is a predictions row plus its generations row,
committed together; read_window and labelled carry the reply, its token counts and the reviewer's
corrected reply and rating; migration 0003 goes down and up again and renders for PostgreSQL. Each
store test runs on SQLite and on PostgreSQL (``store_url``)."""

from __future__ import annotations

import importlib.util
import io
import math

import pytest
from sqlalchemy import text


def classification(rid: str, seq_time: float = 1.0):
    from tuneloop.state.traffic_store import PredictionRecord

    return PredictionRecord(rid, seq_time, f"text {rid}", "refund", 0.9, [("refund", 0.9), ("top_up", 0.1)], "clf:1", 2.0)


def generation(rid: str, reply: str = "We will refund you.", finish: str = "stop", first_token_ms: float | None = 12.5):
    from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord

    g = GenerationRecord(reply, finish, 11, 6, -0.5, first_token_ms)
    return PredictionRecord(rid, 2.0, f"prompt {rid}", finish, math.exp(-0.5), [], "llm:1", 30.0, "http-1", g)


def test_generations_are_logged_with_their_prediction_and_read_back(store_url):
    from tuneloop.state.traffic_store import GENERATION_WINDOW_COLUMNS, WINDOW_COLUMNS, TrafficLog

    log = TrafficLog(store_url)
    log.log_predictions([classification("c1"), generation("g1"), generation("g2", "cut", "length", None)])
    window = log.read_window()
    assert list(window.columns) == WINDOW_COLUMNS + ["true_label"] + GENERATION_WINDOW_COLUMNS
    assert list(window.columns)[-7:] == ["reply", "finish_reason", "prompt_tokens", "completion_tokens",
                                        "mean_logprob", "true_reply", "rating"]
    c1, g1, g2 = (window.iloc[i] for i in range(3))
    assert c1["label"] == "refund" and c1[GENERATION_WINDOW_COLUMNS].isna().all()
    assert (g1["text"], g1["label"], g1["top3"], g1["model_tag"]) == ("prompt g1", "stop", "[]", "llm:1")
    assert g1["confidence"] == pytest.approx(math.exp(-0.5))
    assert (g1["reply"], g1["finish_reason"], g1["prompt_tokens"], g1["completion_tokens"]) == (
        "We will refund you.", "stop", 11, 6)
    assert g1["mean_logprob"] == -0.5 and g2["reply"] == "cut" and g2["finish_reason"] == "length"
    assert window[["true_label", "true_reply", "rating"]].isna().all().all()
    with log.engine.connect() as db:
        assert db.execute(text("SELECT request_id, first_token_ms FROM generations ORDER BY request_id")).tuples().all() == [
            ("g1", 12.5), ("g2", None)]


def test_a_generation_and_its_prediction_commit_together(store_url):
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(store_url)
    log.log_predictions([generation("g1")])
    with pytest.raises(log.engine.dialect.loaded_dbapi.IntegrityError):  # g1's generation row exists: all rolled back
        log.log_predictions([classification("c9"), generation("g9"), generation("g1")])
    assert list(log.read_window()["request_id"]) == ["g1"]


def test_generation_feedback_rating_reply_replace_and_errors(store_url):
    from tuneloop.state.traffic_store import TrafficLog, UnknownRequestError

    log = TrafficLog(store_url)
    log.log_predictions([classification("c1"), generation("g1"), generation("g2"), generation("g3")])
    log.add_feedback("c1", "top_up")
    log.add_generation_feedback("g1", rating=-1)
    log.add_generation_feedback("g2", reply="Your refund is on its way.")
    log.add_generation_feedback("g3", reply="first", rating=1)
    log.add_generation_feedback("g3", rating=-1)  # a later feedback replaces the earlier one as a whole
    labelled = log.labelled()
    assert list(labelled.columns) == ["feedback_seq", "request_id", "text", "label", "true_label", "confidence", "seq",
                                      "true_reply", "rating", "reply", "reviewer"]
    rows = {r["request_id"]: r for _, r in labelled.iterrows()}
    assert list(labelled["request_id"]) == ["c1", "g1", "g2", "g3"]
    assert rows["c1"]["true_label"] == "top_up" and rows["c1"]["reply"] is None and rows["c1"]["true_reply"] is None
    assert rows["g1"]["rating"] == -1 and rows["g1"]["true_reply"] is None and rows["g1"]["true_label"] is None
    assert rows["g2"]["true_reply"] == "Your refund is on its way." and math.isnan(rows["g2"]["rating"])
    assert rows["g3"]["rating"] == -1 and rows["g3"]["true_reply"] is None
    assert rows["g2"]["reply"] == "We will refund you." and rows["g2"]["text"] == "prompt g2"
    assert len(log.labelled(after_feedback_seq=int(rows["g2"]["feedback_seq"]))) == 1
    window = log.read_window().set_index("request_id")
    assert window.loc["g2", "true_reply"] == "Your refund is on its way." and window.loc["g1", "rating"] == -1
    with pytest.raises(UnknownRequestError):
        log.add_generation_feedback("nope", rating=1)
    with pytest.raises(UnknownRequestError):
        log.add_generation_feedback("c1", rating=1)  # a classification is not a generation
    for kwargs, message in [({}, "reply, a rating"), ({"reply": "  "}, "empty"), ({"rating": 2}, "rating")]:
        with pytest.raises(ValueError, match=message):
            log.add_generation_feedback("g1", **kwargs)


def _migration_0003():
    from tuneloop.state.migrate import MIGRATIONS_DIR

    spec = importlib.util.spec_from_file_location("m0003", MIGRATIONS_DIR / "versions" / "0003_generations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_migration_0003_goes_down_and_up_keeping_classification_feedback(store_url):
    from alembic import command

    from tuneloop.state.migrate import alembic_config, current_revision
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(store_url)
    log.log_predictions([classification("c1"), generation("g1")])
    log.add_feedback("c1", "top_up")
    log.add_generation_feedback("g1", rating=1)
    with log.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert current_revision(log.engine) == "0002"
    with log.engine.connect() as db:
        assert db.execute(text("SELECT request_id, true_label FROM feedback")).tuples().all() == [("c1", "top_up")]
    log = TrafficLog(store_url)  # upgrades again
    assert current_revision(log.engine) == "0005"
    log.add_feedback("c1", "refund")
    assert list(log.labelled()["true_label"]) == ["refund"]


def test_migration_0003_renders_for_postgresql():
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    buf = io.StringIO()
    ctx = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buf})
    with Operations.context(ctx):
        _migration_0003().upgrade()
    sql = " ".join(buf.getvalue().split())
    assert "CREATE TABLE generations" in sql and "PRIMARY KEY (request_id)" in sql
    assert "ALTER TABLE feedback ALTER COLUMN true_label DROP NOT NULL" in sql
    assert "ALTER TABLE feedback ADD COLUMN reply TEXT" in sql and "ALTER TABLE feedback ADD COLUMN rating INTEGER" in sql
