"""The event log (tuneloop.state.events) on both stores: append, filter, blocks, migration 0005."""

import pytest
from conftest import save_tiny_model
from sqlalchemy import inspect

from tuneloop.state.events import BLOCKED, PROMOTED, ROLLED_BACK, UNBLOCKED, EventLog
from tuneloop.state.home import Home
from tuneloop.state.migrate import current_revision
from tuneloop.state.registry import (
    ModelNotFoundError,
    champion_history,
    promote,
    read_champion,
    rollback,
    rollback_target,
)
from tuneloop.state.traffic_store import TrafficLog


def test_events_append_filter_and_blocks(store_url):
    log = EventLog(store_url)
    assert current_revision(log.engine) == "0005"
    first = log.record(PROMOTED, "first model", tag="m:1", actor="train", detail={"previous": None})
    log.record(PROMOTED, "gate won", tag="m:2", actor="monitor", detail={"previous": "m:1", "gain": 0.5})
    log.record(BLOCKED, "rolled back: accuracy 0.2 vs 0.9", tag="m:2", actor="monitor")
    events = log.events()
    assert [e.kind for e in events] == [PROMOTED, PROMOTED, BLOCKED] and events[0].id == first
    assert [e.tag for e in log.events(kind=PROMOTED)] == ["m:1", "m:2"]
    assert log.events(tag="m:2")[0].detail == {"previous": "m:1", "gain": 0.5}
    assert [e.reason for e in log.events(limit=1)] == ["rolled back: accuracy 0.2 vs 0.9"]
    assert log.is_blocked("m:2") and not log.is_blocked("m:1")
    log.record(UNBLOCKED, "forced", tag="m:2", actor="cli")
    assert not log.is_blocked("m:2")


def test_feedback_has_a_reviewer_column(store_url):
    log = TrafficLog(store_url)
    columns = {c["name"] for c in inspect(log.engine).get_columns("feedback")}
    assert "reviewer" in columns and "events" in inspect(log.engine).get_table_names()


def test_promote_records_events_and_rollback_walks_back_skipping_blocked(tmp_path):
    home = Home(tmp_path / "home").ensure()
    a, b, c = (save_tiny_model(home, seed=s) for s in range(3))
    promote(home, a, "first model", actor="train")
    promote(home, b, "gate won", actor="monitor")
    promote(home, c, "gate won", actor="monitor")
    assert champion_history(home) == [a, b, c] and rollback_target(home) == b
    pointer = rollback(home, "live accuracy fell", actor="monitor")
    assert pointer.tag == b and read_champion(home).previous == c
    log = EventLog(home.store_url)
    assert log.is_blocked(c) and [e.kind for e in log.events(tag=c)] == [PROMOTED, ROLLED_BACK, BLOCKED]
    # b goes bad too: back to a, never to the blocked c
    assert rollback_target(home) == a and rollback(home, "again").tag == a
    with pytest.raises(ModelNotFoundError, match="no earlier champion"):
        rollback(home, "nothing left")
