"""Load on a real ``bentoml serve`` process (127.0.0.1, tiny random champion): many concurrent
clients for a fixed time while the champion is hot-swapped three times. No request may fail, and
the traffic log must hold exactly one row per text answered with 2xx (acknowledged => logged).
Once per traffic store: SQLite under the home, then PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import save_tiny_model, served_tiny_champion
from sqlalchemy import create_engine, text

TOKEN = "load-test-token"
CLIENTS = 24
TEXTS_PER_REQUEST = 2
DURATION_S = 15.0
SWAPS = 3
TEXTS = ["where is my new card?", "I was charged twice for one purchase", "top up failed again",
         "how do I get a refund", "my card payment was declined at the shop", "exchange rate please"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_home_db_url):
    env = {"TUNELOOP_ADMIN_TOKEN": TOKEN, "TUNELOOP_POLL_SECONDS": "3600"}
    with served_tiny_champion(tmp_path_factory, "load", env, ready_timeout=120, db_url=module_home_db_url) as served:
        yield served


def swap_champion(home, url: str, seed: int) -> tuple[str, float, float]:
    """Promote a new tiny model and swap it in through /admin/reload; (tag, start, end) in time.time()."""
    from tuneloop.state.registry import promote

    tag = save_tiny_model(home, seed=seed)
    promote(home, tag, reason=f"load test swap {seed}")
    start = time.time()
    r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200 and r.json()["reloaded"] is True and r.json()["model_tag"] == tag, r.text
    return tag, start, time.time()


def test_load_with_three_hot_swaps_fails_nothing_and_logs_every_answer(served):
    from tuneloop.apps.loadgen import closed_loop

    home, server = served
    result = {}

    def send_load() -> None:
        result["run"] = asyncio.run(closed_loop(server.url, TEXTS, CLIENTS, DURATION_S,
                                                texts_per_request=TEXTS_PER_REQUEST, seed=1))

    load = threading.Thread(target=send_load)
    load.start()
    swaps = []
    for k in range(SWAPS):
        time.sleep(DURATION_S / (SWAPS + 1) - (swaps[-1][2] - swaps[-1][1] if swaps else 0))
        swaps.append(swap_champion(home, server.url, seed=k + 1))
    load.join(timeout=DURATION_S + 120)
    run = result["run"]

    assert run.failed == [], run.failed[:5]
    assert len(run.ok) >= 100, f"only {len(run.ok)} requests in {DURATION_S} s"
    answered_ids = [rid for o in run.ok for rid in o.request_ids]
    assert len(answered_ids) == len(run.ok) * TEXTS_PER_REQUEST == len(set(answered_ids))
    store = create_engine(home.store_url)
    with store.connect() as db:  # acknowledged => logged, and nothing else
        logged = dict(db.execute(text("SELECT request_id, model_tag FROM predictions")).tuples().all())
    store.dispose()
    assert len(logged) == len(answered_ids)
    answered_tags = {rid: tag for o in run.ok for rid, tag in zip(o.request_ids, o.model_tags)}
    assert logged == answered_tags
    served_tags = {tag for o in run.ok for tag in o.model_tags}
    assert {tag for tag, _, _ in swaps} <= served_tags and len(served_tags) == SWAPS + 1

    # no latency spike beyond a batch: requests in flight during a swap are not slower than the rest
    # by more than a generous bound (tiny models: a load takes ~0.1 s, a batch a few ms)
    during = [o.latency_s for o in run.ok
              if any(o.sent_at <= end and o.sent_at + o.latency_s >= start for _, start, end in swaps)]
    others = [o.latency_s for o in run.ok if o.latency_s not in during]
    print(f"{len(run.ok)} requests, p50 {run.latency_ms(50):.1f} ms, p99 {run.latency_ms(99):.1f} ms, "
          f"max during swaps {max(during, default=0) * 1000:.1f} ms over {len(during)} requests")
    assert during, "no request overlapped a swap"
    assert max(during) < max(np.percentile(others, 99) * 5, 1.0), (max(during), np.percentile(others, 99))

    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert f"tuneloop_model_swaps_total {SWAPS + 1}.0" in metrics
