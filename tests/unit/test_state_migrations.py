"""The traffic store's schema through Alembic: a new store is at head and matches the models; an
unversioned tuneloop 0.1 store is upgraded in place; processes opening one new store at once agree."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy import create_engine


def test_a_new_store_is_at_head_and_matches_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tuneloop.state.migrate import current_revision, head_revision
    from tuneloop.state.schema import Base
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(tmp_path / "traffic.db")
    assert current_revision(log.engine) == head_revision() == "0004"
    with log.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff  # the migrations build exactly the tables, columns and indexes of schema.py


@pytest.mark.parametrize("tables", [("predictions",), ("predictions", "feedback", "decisions", "monitor_state")])
def test_an_unversioned_store_is_upgraded_in_place(tmp_path, tables):
    from tuneloop.state.audit import AuditLog
    from tuneloop.state.migrate import current_revision
    from tuneloop.state.traffic_store import TrafficLog

    path = tmp_path / "traffic.db"
    ddl = {  # tuneloop 0.1's layout (before http_request_id), each table created by its own handle
        "predictions": "CREATE TABLE predictions (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id VARCHAR(64) "
                       "UNIQUE, created_at FLOAT, text TEXT, label VARCHAR(256), confidence FLOAT, top3 TEXT, "
                       "model_tag VARCHAR(256), latency_ms FLOAT)",
        "feedback": "CREATE TABLE feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id VARCHAR(64) UNIQUE, "
                    "true_label VARCHAR(256), created_at FLOAT)",
        "decisions": "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at FLOAT, "
                     "window_start_seq INTEGER, window_end_seq INTEGER, window_size INTEGER, signals TEXT, "
                     "degraded BOOLEAN, decision VARCHAR(32), reason TEXT, champion_tag VARCHAR(256), "
                     "challenger_tag VARCHAR(256), retrain TEXT, report_path TEXT)",
        "monitor_state": "CREATE TABLE monitor_state (key VARCHAR(64) PRIMARY KEY, value TEXT)",
    }
    with sqlite3.connect(path) as db:
        for table in tables:
            db.execute(ddl[table])
        db.execute("INSERT INTO predictions (request_id, created_at, text, label, confidence, top3, model_tag, "
                   "latency_ms) VALUES ('old', 0, 't', 'l', 0.5, '[]', 'm:1', 1.0)")
        if "monitor_state" in tables:
            db.execute("INSERT INTO monitor_state VALUES ('cursor', '41')")
    log = TrafficLog(path)
    assert current_revision(log.engine) == "0004"
    log.add_feedback("old", "l2")
    assert log.read_window().loc[0, "true_label"] == "l2"
    audit = AuditLog(path)
    assert audit.get_state("cursor") == (41 if "monitor_state" in tables else None)


def test_processes_opening_one_new_store_at_once_agree(tmp_path):
    path = tmp_path / "traffic.db"
    code = ("import sys; from tuneloop.state.traffic_store import TrafficLog; from tuneloop.state.audit import AuditLog;"
            "TrafficLog(sys.argv[1]); AuditLog(sys.argv[1]); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0004"]
