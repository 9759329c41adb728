"""Two replicas x two workers: real ``bentoml serve`` processes on 127.0.0.1 sharing one home (model
store, champion pointer) and one PostgreSQL traffic store, under bounded concurrent load, with a
second model promoted in the middle.

Checked: no answer other than 200; the store holds exactly the answered predictions, each with
the tag, replica and worker that answered; each replica's two workers both answered and both
show in its /metrics, whose counters sum the two; every replica answers only with the new tag
from ``POLL_S + SWAP_MARGIN_S`` after the promotion on.

Every request opens a new connection (as many separate clients do), so the kernel spreads them
over a replica's workers, which accept from one shared socket.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import re
import time

import aiohttp
import httpx
import pytest
from conftest import save_tiny_model

REPLICAS = ("replica-a", "replica-b")
WORKERS = 2
POLL_S = 1.0  # each worker re-reads the champion pointer this often
# After a promotion a worker needs up to POLL_S to see it, then loads, smoke-tests and warms up
# the tiny model at nice 10 beside the traffic (~0.2-0.5 s measured on 2 busy cores), and a batch
# computed just before the swap is still answered with the old tag: 2 s of margin covers these.
SWAP_MARGIN_S = 2.0
CLIENTS_PER_REPLICA = 3
DURATION_S = 24.0
PROMOTE_AT_S = 10.0
PAUSE_S = 0.3  # a client's pause between its requests: ~450 requests in all, CPU left for the swaps
MAX_REQUESTS = 500
TEXTS_PER_REQUEST = 2
TEXTS = ["where is my new card?", "I was charged twice for one purchase", "top up failed again",
         "how do I get a refund", "my card payment was declined at the shop", "exchange rate please"]


def metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` (None when there are none)."""
    total = None
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + float(match.group(2))
    return total


async def drive(urls: dict[str, str], promote) -> tuple[dict[str, list], float, float]:
    """``CLIENTS_PER_REPLICA`` clients per replica for ``DURATION_S`` (at most ``MAX_REQUESTS``
    requests), ``promote()`` called at ``PROMOTE_AT_S``; returns the outcomes per replica and
    the ``time.time()`` just before and after the promotion."""
    from tuneloop.apps.loadgen import send

    outcomes: dict[str, list] = {name: [] for name in urls}
    sent = itertools.count()
    deadline = time.monotonic() + DURATION_S
    connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a new connection per request
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def post(url: str, payload: dict) -> tuple[int, bytes]:
            async with http.post(url, json=payload) as resp:
                return resp.status, await resp.read()

        async def client(name: str, seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline and next(sent) < MAX_REQUESTS:
                texts = [rng.choice(TEXTS) for _ in range(TEXTS_PER_REQUEST)]
                outcomes[name].append(await send(post, urls[name], texts))
                await asyncio.sleep(PAUSE_S)

        async def promoter() -> tuple[float, float]:
            await asyncio.sleep(PROMOTE_AT_S)
            before = time.time()
            await asyncio.to_thread(promote)
            return before, time.time()

        clients = [client(name, k * 100 + i) for k, name in enumerate(urls) for i in range(CLIENTS_PER_REPLICA)]
        (before, after), *_ = await asyncio.gather(promoter(), *clients)
    return outcomes, before, after


@pytest.fixture()
def scale_home(tmp_path, pg_url):
    """A home whose champion is a tiny model and whose traffic store is a fresh PostgreSQL
    database (schema created here, as a deployment migrates before it rolls out), plus the tag
    of a second tiny model saved but not promoted."""
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote
    from tuneloop.state.traffic_store import TrafficLog

    home = Home(tmp_path / "home", db_url=pg_url).ensure()
    promote(home, save_tiny_model(home, seed=0), reason="first model")
    TrafficLog(pg_url).engine.dispose()
    return home, save_tiny_model(home, seed=1)


def test_two_replicas_of_two_workers_share_one_store_and_swap_together(scale_home):
    from sqlalchemy import create_engine, text

    from tuneloop.serving.launch import running_servers
    from tuneloop.state.registry import promote, read_champion

    home, new_tag = scale_home
    old_tag = read_champion(home).tag
    envs = [{"TUNELOOP_REPLICA": name, "TUNELOOP_WORKERS": str(WORKERS), "TUNELOOP_POLL_SECONDS": str(POLL_S)}
            for name in REPLICAS]
    start = time.monotonic()
    with running_servers(home, envs, ready_timeout=150) as servers:
        ready_s = time.monotonic() - start
        urls = {name: server.url for name, server in zip(REPLICAS, servers)}
        outcomes, before, after = asyncio.run(drive(urls, lambda: promote(home, new_tag, reason="scale test")))
        scraped = {name: httpx.get(f"{url}/metrics", timeout=30).text for name, url in urls.items()}
    print(f"servers ready in {ready_s:.1f} s, load + scrape + stop {time.monotonic() - start - ready_s:.1f} s")

    answered = [o for name in REPLICAS for o in outcomes[name]]
    failed = [(o.status, o.error) for o in answered if o.status != 200]
    assert not failed, f"{len(failed)} of {len(answered)} requests failed: {failed[:5]}"
    assert len(answered) >= 300, f"only {len(answered)} requests in {DURATION_S} s"

    # acknowledged => logged, once, with the tag, replica and worker that answered
    engine = create_engine(home.db_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, model_tag, replica, worker FROM predictions")).all()
    engine.dispose()
    logged = {rid: (tag, replica, worker) for rid, tag, replica, worker in rows}
    expected = {rid: (tag, name) for name in REPLICAS for o in outcomes[name]
                for rid, tag in zip(o.request_ids, o.model_tags)}
    assert len(rows) == len(logged) == len(expected) == len(answered) * TEXTS_PER_REQUEST
    assert {rid: (tag, replica) for rid, (tag, replica, _) in logged.items()} == expected
    assert {worker for *_, worker in logged.values()} <= set(range(1, WORKERS + 1))

    for name in REPLICAS:
        mine = outcomes[name]
        workers = {worker for tag, replica, worker in logged.values() if replica == name}
        split = collections.Counter(worker for tag, replica, worker in logged.values() if replica == name)
        new_workers = {worker for tag, replica, worker in logged.values() if replica == name and tag == new_tag}
        assert workers == new_workers == {1, 2}, (name, workers, new_workers)

        # every worker of the replica swapped within the poll interval + margin
        last_old = max(o.sent_at + o.latency_s for o in mine if old_tag in o.model_tags)
        first_new = min(o.sent_at + o.latency_s for o in mine if new_tag in o.model_tags)
        lag = last_old - after
        print(f"{name}: {len(mine)} requests, texts per worker {dict(sorted(split.items()))}, last answer with "
              f"the old tag {lag:+.2f} s after the promotion, first with the new one {first_new - before:+.2f} s")
        assert first_new > before and lag <= POLL_S + SWAP_MARGIN_S, (name, lag)
        assert all(set(o.model_tags) == {new_tag} for o in mine if o.sent_at > after + POLL_S + SWAP_MARGIN_S)

        # /metrics (answered by either worker) sums both workers' counters and shows each worker's tag
        text_ = scraped[name]
        assert metric(text_, "tuneloop_requests_total", endpoint="/classify") == len(mine)
        assert metric(text_, "tuneloop_predictions_total") == len(mine) * TEXTS_PER_REQUEST
        assert metric(text_, "tuneloop_model_swaps_total") == 2 * WORKERS  # first load + the promotion, per worker
        for worker in ("1", "2"):
            assert metric(text_, "tuneloop_model_live", tag=new_tag, worker=worker) == 1, (name, worker)
            assert metric(text_, "tuneloop_model_live", tag=old_tag, worker=worker) == 0, (name, worker)
        assert metric(text_, "tuneloop_requests_in_flight", endpoint="/classify") == 0


def worker_pids(server) -> dict[int, int]:
    """BentoML worker index -> pid of a running server's worker processes."""
    import psutil

    from tuneloop.serving.launch import server_processes

    found = {}
    for proc in server_processes(server.process):
        try:
            argv = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--worker-id" in argv:
            found[int(argv[argv.index("--worker-id") + 1])] = proc.pid
    return found


def test_a_killed_worker_is_replaced_and_its_live_gauges_leave_the_metrics(tmp_path):
    """kill -9 of worker 1 of 2, then a promotion before its replacement (same index) has loaded:
    /metrics keeps the dead worker's counts but not its live tag, and both workers serve the new one."""
    import os
    import signal

    from tuneloop.serving.launch import running_server
    from tuneloop.state.home import Home
    from tuneloop.state.registry import promote

    home = Home(tmp_path / "home").ensure()
    old_tag = save_tiny_model(home, seed=0)
    promote(home, old_tag, reason="first model")
    new_tag = save_tiny_model(home, seed=1)
    env = {"TUNELOOP_WORKERS": str(WORKERS), "TUNELOOP_POLL_SECONDS": str(POLL_S)}
    with running_server(home, env=env, ready_timeout=150) as server, httpx.Client(base_url=server.url) as http:
        deadline = time.monotonic() + 60
        while len(pids := worker_pids(server)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(pids) == [1, 2], pids
        for _ in range(20):  # new connections: both workers likely get some
            assert http.post("/classify", json={"texts": TEXTS[:2]}, headers={"Connection": "close"}).status_code == 200
        time.sleep(0.2)  # each answer is counted just after it is sent
        os.kill(pids[1], signal.SIGKILL)
        promote(home, new_tag, reason="promoted while worker 1 restarts")

        deadline, text_ = time.monotonic() + 90, ""
        while time.monotonic() < deadline:
            text_ = http.get("/metrics", headers={"Connection": "close"}).text
            now = worker_pids(server)
            if now.get(1) not in (None, pids[1]) and all(
                    metric(text_, "tuneloop_model_live", tag=new_tag, worker=w) == 1 for w in ("1", "2")):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"worker 1 was not replaced, or not both workers serve {new_tag}: {worker_pids(server)}")
        assert now[2] == pids[2]  # the other worker kept running
        assert metric(text_, "tuneloop_requests_total", endpoint="/classify") == 20  # the dead worker's counts stay
        assert metric(text_, "tuneloop_model_live", tag=old_tag, worker="1") is None  # its live tag is gone
        assert metric(text_, "tuneloop_model_live", tag=old_tag, worker="2") == 0
        assert metric(text_, "tuneloop_requests_in_flight", endpoint="/classify") == 0
        assert http.post("/classify", json={"texts": TEXTS[:1]}).json()[0]["model_tag"] == new_tag
