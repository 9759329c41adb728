"""``kill -9`` of a real ``bentoml serve`` (arbiter and worker) in the middle of traffic: every
request acknowledged before the kill is in the traffic log, the database is intact, and a
restarted server answers again within 15 seconds. Once per traffic store: SQLite under the home,
then PostgreSQL (the server's connections die with it; the database stays up)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from conftest import save_tiny_model
from sqlalchemy import create_engine, text

CLIENTS = 8
KILL_AFTER_S = 4.0
RESTART_BUDGET_S = 15.0  # from launching the new server to its first answered /classify (issue 4, the default store)
# PostgreSQL: issue 12 asks for acknowledged => logged there, not for a restart time. Measured 14.2 s alone
# but 15.3 s and 16.0 s inside full fresh-clone CI runs (SQLite there: 14.3 s); the extra second is not yet
# explained (a PostgreSQL open measured 0.05 s warm, 0.5 s cold, now overlapped with the model load), so
# the PostgreSQL restart is held to its own, stated budget until it is.
RESTART_BUDGET_PG_S = 20.0
TEXTS = ["where is my new card?", "I was charged twice", "top up failed", "refund please"]


@pytest.fixture()
def home(tmp_path, home_db_url):
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote

    home = Home(tmp_path / "home", db_url=home_db_url).ensure()
    promote(home, save_tiny_model(home), reason="first model")
    return home


def check_intact(conn) -> None:
    """SQLite: ``PRAGMA integrity_check`` passes (PostgreSQL's WAL recovery is the server's own business)."""
    if conn.dialect.name == "sqlite":
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_kill_9_loses_no_acknowledged_request_and_restarts_fast(home):
    from tuneloop.apps.loadgen import closed_loop
    from tuneloop.serving.launch import kill_server, running_server

    result, stop = {}, threading.Event()
    with running_server(home, env={"TUNELOOP_POLL_SECONDS": "3600"}, ready_timeout=120) as server:
        def send_load() -> None:
            result["run"] = asyncio.run(closed_loop(server.url, TEXTS, CLIENTS, 60, texts_per_request=2,
                                                    stop=stop.is_set, timeout_s=10))

        load = threading.Thread(target=send_load)
        load.start()
        time.sleep(KILL_AFTER_S)
        kill_server(server.process)  # SIGKILL to the arbiter and its worker (its own session)
        time.sleep(1.0)  # clients see refused connections, nothing more is acknowledged
        stop.set()
        load.join(timeout=60)
    run = result["run"]
    acknowledged = [rid for o in run.ok for rid in o.request_ids]
    assert len(acknowledged) >= 50, f"only {len(acknowledged)} texts answered before the kill"
    assert run.failed, "the kill cut no request: the test did not kill during traffic"

    store = create_engine(home.store_url)
    with store.connect() as db:
        check_intact(db)
        logged = set(db.execute(text("SELECT request_id FROM predictions")).scalars())
    missing = set(acknowledged) - logged
    assert not missing, f"{len(missing)} acknowledged predictions are not in the log"

    budget = RESTART_BUDGET_PG_S if home.db_url else RESTART_BUDGET_S
    start = time.monotonic()
    with running_server(home, env={"TUNELOOP_POLL_SECONDS": "3600"}, ready_timeout=budget) as server:
        r = httpx.post(f"{server.url}/classify", json={"texts": ["is my card lost?"]}, timeout=10)
        elapsed = time.monotonic() - start
        assert r.status_code == 200, r.text
        print(f"{len(acknowledged)} texts acknowledged before the kill, {len(run.failed)} requests cut; "
              f"served again {elapsed:.1f} s after the restart began")
        assert elapsed <= budget, f"served again only after {elapsed:.1f} s (budget {budget:.0f} s)"
        rid = r.json()[0]["request_id"]
        assert httpx.post(f"{server.url}/feedback", json={"request_id": acknowledged[0], "label": "lost_card"},
                          timeout=10).status_code == 200  # a pre-crash prediction is still usable
    with store.connect() as db:
        check_intact(db)
        assert db.execute(text("SELECT COUNT(*) FROM predictions WHERE request_id = :rid"), {"rid": rid}).scalar() == 1
        assert db.execute(text("SELECT COUNT(*) FROM predictions")).scalar() == len(logged) + 1
    store.dispose()
