"""The traffic store's schema through Alembic: a new store is at head and matches the models; an
unversioned tuneloop 0.1 store is upgraded in place; processes opening one new store at the same
instant all succeed (on PostgreSQL too, where only the advisory lock keeps two ``CREATE TABLE``
from colliding). New stores are tested on SQLite and PostgreSQL (``store_url``); tuneloop 0.1 only
ever made SQLite stores."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, inspect


def test_a_new_store_is_at_head_and_matches_the_models(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tuneloop.state.migrate import current_revision, head_revision
    from tuneloop.state.schema import Base
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(store_url)
    assert current_revision(log.engine) == head_revision() == "0005"
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
    assert current_revision(log.engine) == "0005"
    log.add_feedback("old", "l2")
    assert log.read_window().loc[0, "true_label"] == "l2"
    audit = AuditLog(path)
    assert audit.get_state("cursor") == (41 if "monitor_state" in tables else None)


# Each process imports first, then waits at a barrier (a marker file per process, all present) so
# that all open the new store within milliseconds of each other, not one import time apart.
OPENER = """
import os, sys, time
from pathlib import Path
from tuneloop.state.audit import AuditLog
from tuneloop.state.traffic_store import TrafficLog
store, barrier, me, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(barrier / me).touch()
deadline = time.monotonic() + 60
while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
    time.sleep(0.002)
TrafficLog(store); AuditLog(store); print('ok')
"""


def test_processes_opening_one_new_store_at_once_agree(tmp_path, store_url):
    openers = 4
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    store = str(tmp_path / "traffic.db") if store_url.startswith("sqlite") else store_url  # a plain path works too
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, store, str(barrier), str(i), str(openers)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(openers)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * openers, [err[-2000:] for _, err in results]
    engine = create_engine(store_url if store_url.startswith("postgresql") else f"sqlite:///{store}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0005"]
        assert {"predictions", "feedback", "generations", "decisions", "monitor_state"} <= set(
            inspect(conn).get_table_names())
    engine.dispose()
