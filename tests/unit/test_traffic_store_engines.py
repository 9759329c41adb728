"""The traffic store on both engines (``store_url``: SQLite, then PostgreSQL): many writer processes
lose and duplicate nothing and a reader following ``seq`` with a cursor (as the monitor does) sees
every row exactly once; ``read_window(limit=)`` returns the newest rows of a span in order; feedback
and monitor-state upserts replace; ``labelled`` pages; URLs and paths name stores alike. Processes
opening a new store at once: ``test_state_migrations.py``."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import text

WRITERS = 4
ROWS_PER_WRITER = 300

# One writer process: ROWS_PER_WRITER rows in batches of 1..8 (seeded by its index), each batch one
# committed log_predictions call, as the service's group commit makes them.
WRITER = """
import random, sys, time
from pathlib import Path
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog
store, me, rows, barrier, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
log = TrafficLog(store)
(barrier / str(me)).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.002)
rng, i = random.Random(me), 0
while i < rows:
    k = min(rng.randint(1, 8), rows - i)
    log.log_predictions([PredictionRecord(f"w{me}-{j}", time.time(), f"text {j}", "refund", 0.5, [("refund", 0.5)],
                                          "m:1", 1.0, replica=f"replica-{me}", worker=me) for j in range(i, i + k)])
    i += k
print("ok")
"""


def record(rid: str, **kwargs):
    from tuneloop.state.traffic_store import PredictionRecord

    return PredictionRecord(rid, 1.0, f"text {rid}", "refund", 0.9, [("refund", 0.9)], "m:1", 2.0, **kwargs)


def test_many_writer_processes_lose_and_duplicate_nothing_and_a_cursor_reader_skips_nothing(store_url, tmp_path):
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(store_url)  # migrated before the writers start
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, str(w), str(ROWS_PER_WRITER), str(barrier),
                               str(WRITERS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(WRITERS)]
    seen: list[str] = []  # what a monitor-like reader collects: windows (cursor, max_seq], cursor := max_seq
    cursor = 0
    while any(p.poll() is None for p in procs):
        end = log.max_seq()
        if end > cursor:
            seen += list(log.read_window(cursor, end)["request_id"])
            cursor = end
        time.sleep(0.02)
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, [err[-2000:] for _, err in results]
    seen += list(log.read_window(cursor)["request_id"])

    expected = {f"w{w}-{j}" for w in range(WRITERS) for j in range(ROWS_PER_WRITER)}
    window = log.read_window()
    assert log.count_predictions() == len(window) == WRITERS * ROWS_PER_WRITER
    assert set(window["request_id"]) == expected and window["request_id"].is_unique
    assert sorted(seen) == sorted(expected), "the cursor reader skipped or repeated rows"
    for w in range(WRITERS):  # each writer's rows in the order it wrote them, with who wrote them
        mine = window[window["replica"] == f"replica-{w}"]
        assert list(mine["request_id"]) == [f"w{w}-{j}" for j in range(ROWS_PER_WRITER)]
        assert set(mine["worker"]) == {w}


def test_on_postgresql_a_row_that_commits_late_is_not_skipped_by_the_cursor(pg_url):
    """PostgreSQL hands out seq values before commit: without the writers' advisory lock, a write
    that commits after a later-numbered one is behind the monitor's cursor once it shows up. A
    trigger holds one write (``slow``) for a second after it took its seq, while ``fast`` writes."""
    import threading

    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(pg_url)
    log.log_predictions([record("first")])
    with log.engine.begin() as conn:
        conn.execute(text("CREATE FUNCTION hold_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "IF NEW.request_id = 'slow' THEN PERFORM pg_sleep(1.0); END IF; RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER hold_slow BEFORE INSERT ON predictions FOR EACH ROW "
                          "EXECUTE FUNCTION hold_slow()"))
    writers = [threading.Thread(target=log.log_predictions, args=([record("slow")],))]
    writers[0].start()
    with log.engine.connect() as conn:  # until `slow` sleeps in its trigger, its seq taken
        deadline = time.monotonic() + 30
        while not conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")).scalar():
            assert time.monotonic() < deadline, "the slow write never started"
            time.sleep(0.01)
    writers.append(threading.Thread(target=log.log_predictions, args=([record("fast")],)))
    writers[1].start()
    seen, cursor = [], log.max_seq()
    while any(w.is_alive() for w in writers):
        end = log.max_seq()
        if end > cursor:
            seen += list(log.read_window(cursor, end)["request_id"])
            cursor = end
        time.sleep(0.01)
    seen += list(log.read_window(cursor)["request_id"])
    assert seen == ["slow", "fast"]


def test_read_window_limit_returns_the_newest_rows_of_the_span_in_order(store_url):
    from tuneloop.state.traffic_store import TrafficLog

    log = TrafficLog(store_url)
    log.log_predictions([record(f"r{i}") for i in range(30)])
    with pytest.raises(log.engine.dialect.loaded_dbapi.IntegrityError):
        log.log_predictions([record("x1"), record("x2"), record("r0")])  # rolled back (a seq gap on PostgreSQL)
    log.log_predictions([record(f"r{i}") for i in range(30, 50)])
    seqs = list(log.read_window()["seq"])
    assert len(seqs) == 50 and seqs == sorted(seqs)

    window = log.read_window(seqs[9], seqs[39], limit=5)  # span: rows 10..39
    assert list(window["request_id"]) == [f"r{i}" for i in range(35, 40)]
    assert list(window["seq"]) == seqs[35:40]
    assert list(log.read_window(seqs[44], limit=100)["request_id"]) == [f"r{i}" for i in range(45, 50)]
    newest = log.read_window(limit=25)  # across the gap: 25 rows, not 25 seq values
    assert list(newest["request_id"]) == [f"r{i}" for i in range(25, 50)]
    assert log.read_window(seqs[-1], limit=3).empty
    with pytest.raises(ValueError, match="limit"):
        log.read_window(limit=0)


def test_replica_and_worker_are_logged_and_a_nul_text_does_not_fail_its_batch(store_url):
    from sqlalchemy.engine import make_url

    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    log = TrafficLog(store_url)
    nul = PredictionRecord("nul", 1.0, "bad\x00text", "refund", 0.9, [], "m:1", 2.0)
    log.log_predictions([record("a", replica="host-1:3000", worker=1), record("b"), nul])
    window = log.read_window().set_index("request_id")
    assert (window.loc["a", "replica"], window.loc["a", "worker"]) == ("host-1:3000", 1)
    assert window.loc["b", ["replica", "worker"]].isna().all()
    postgres = log.engine.dialect.name == "postgresql"
    assert window.loc["nul", "text"] == ("bad\ufffdtext" if postgres else "bad\x00text")
    password = make_url(store_url).password
    if password:  # PostgreSQL: the URL in messages masks it
        assert f":{password}@" not in repr(log) and ":***@" in repr(log)


def test_feedback_upserts_and_labelled_pages_and_counts(store_url):
    from tuneloop.state.traffic_store import LABELLED_COLUMNS, TrafficLog, UnknownRequestError

    log = TrafficLog(store_url)
    log.log_predictions([record(f"r{i}") for i in range(6)])
    for i in range(5):
        log.add_feedback(f"r{i}", "top_up")
    log.add_feedback("r1", "lost_card")  # replaces r1's label, keeps its place in feedback order
    with pytest.raises(UnknownRequestError):
        log.add_feedback("nope", "refund")

    labelled = log.labelled()
    assert list(labelled.columns) == LABELLED_COLUMNS
    assert list(labelled["request_id"]) == [f"r{i}" for i in range(5)]
    assert list(labelled["true_label"]) == ["top_up", "lost_card", "top_up", "top_up", "top_up"]
    first = log.labelled(limit=2)
    assert list(first["request_id"]) == ["r0", "r1"]
    rest = log.labelled(after_feedback_seq=int(first["feedback_seq"].iloc[-1]), limit=10)
    assert list(rest["request_id"]) == ["r2", "r3", "r4"]
    assert log.count_labelled() == 5
    assert log.count_labelled(int(first["feedback_seq"].iloc[-1])) == len(rest) == 3
    with log.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM feedback")).scalar() == 5
    with pytest.raises(ValueError, match="limit"):
        log.labelled(limit=0)


def test_audit_state_upsert_and_decisions(store_url):
    from tuneloop.state.audit import AuditLog

    audit = AuditLog(store_url)
    assert audit.get_state("cursor", 0) == 0
    audit.set_state("cursor", 41)
    audit.set_state("cursor", 42)
    audit.set_state("policy", {"alarms": [1, 2]})
    assert audit.get_state("cursor") == 42 and audit.get_state("policy") == {"alarms": [1, 2]}
    first = audit.record(window_start_seq=1, window_end_seq=100, window_size=100, signals={"psi": 0.1},
                         degraded=False, decision="ok", reason="fine", champion_tag="m:1")
    second = audit.record(window_start_seq=101, window_end_seq=200, window_size=100, signals={"psi": 0.9},
                          degraded=True, decision="retrain_due", reason="drift", champion_tag="m:1",
                          retrain={"score": 0.5})
    decisions = audit.decisions()
    assert list(decisions["id"]) == [first, second] and second > first
    assert list(decisions["degraded"]) == [False, True]
    assert decisions["signals"].iloc[1] == {"psi": 0.9} and decisions["retrain"].iloc[1] == {"score": 0.5}


def test_stores_are_named_by_url_or_path_and_passwords_stay_out_of_messages(tmp_path):
    from tuneloop.state.store_engine import describe, store_url
    from tuneloop.state.traffic_store import TrafficLog

    path = tmp_path / "a" / "traffic.db"
    by_path, by_str = TrafficLog(path), TrafficLog(str(path))
    by_path.log_predictions([record("p1")])
    assert list(TrafficLog(f"sqlite:///{path}").read_window()["request_id"]) == ["p1"]
    assert by_path.db_path == by_str.db_path == path
    url = "postgresql://tuneloop:s3cret@db.example:5432/traffic"
    assert store_url(url).drivername == "postgresql+psycopg"
    assert "s3cret" not in describe(url) and "***" in describe(url)
    with pytest.raises(ValueError, match="unsupported"):
        TrafficLog("mysql+pymysql://u:p@h/db")
    with pytest.raises(ValueError, match="synchronous"):
        TrafficLog(path, synchronous="OFF")
