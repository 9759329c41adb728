"""HTTP load against ``POST /classify``: closed loop (N clients, each sends its next request when
the last is answered) and open loop (requests start on a Poisson schedule, answered or not).

Used by the load tests and by ``benchmarks/serve_bench.py``. The client is aiohttp (installed with
BentoML): on a 2-core machine the load generator shares the CPU with the server it measures, and
aiohttp costs a fraction of httpx's CPU per request. Every request's outcome is kept, failures
included; nothing is retried. Traffic goes only to the URL given, bounded in time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

TIMEOUT_S = 60.0  # per request; a request still unanswered after this counts as failed (status 0)


@dataclass
class Outcome:
    """One request: HTTP status (0: no answer), latency (s), and from a 200 the ids and model tags."""

    status: int
    latency_s: float
    sent_at: float  # time.time()
    n_texts: int
    request_ids: list[str] = field(default_factory=list)
    model_tags: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class LoadResult:
    """Every request's outcome and the wall time of the run (s)."""

    outcomes: list[Outcome]
    duration_s: float

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if 200 <= o.status < 300]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not 200 <= o.status < 300]

    def statuses(self) -> dict[int, int]:
        return dict(Counter(o.status for o in self.outcomes))

    def texts_per_s(self) -> float:
        """Texts answered with 2xx per second of the run."""
        return sum(o.n_texts for o in self.ok) / self.duration_s

    def latency_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of 2xx latencies, in ms (nan when none)."""
        lat = [o.latency_s for o in self.ok]
        return float(np.percentile(lat, q) * 1000) if lat else float("nan")


async def _post(session, url: str, texts: list[str], headers: dict | None) -> Outcome:
    sent, start = time.time(), time.perf_counter()
    try:
        async with session.post(url, json={"texts": texts}, headers=headers) as resp:
            body = await resp.json(content_type=None) if resp.status == 200 else await resp.text()
            outcome = Outcome(resp.status, time.perf_counter() - start, sent, len(texts))
            if resp.status == 200:
                outcome.request_ids = [p["request_id"] for p in body]
                outcome.model_tags = [p["model_tag"] for p in body]
            else:
                outcome.error = str(body)[:300]
            return outcome
    except Exception as exc:  # noqa: BLE001 - a failed request is an outcome, not a crash of the run
        return Outcome(0, time.perf_counter() - start, sent, len(texts), error=f"{type(exc).__name__}: {exc}")


def _session(connections: int, timeout_s: float):
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


def _batches(texts: Sequence[str], texts_per_request: int, seed: int) -> Callable[[], list[str]]:
    rng = random.Random(seed)
    return lambda: [rng.choice(texts) for _ in range(texts_per_request)]


async def closed_loop(
    base_url: str, texts: Sequence[str], clients: int, duration_s: float, *, texts_per_request: int = 1,
    seed: int = 0, timeout_s: float = TIMEOUT_S, stop: Callable[[], bool] | None = None,
) -> LoadResult:
    """``clients`` concurrent clients, each posting its next request when the last is answered,
    until ``duration_s`` passed (or ``stop()`` is true).

    Args:
        base_url: ``http://127.0.0.1:PORT``.
        texts: the texts to draw from (uniformly, seeded).
        clients: concurrent clients (= connections).
        duration_s: how long clients keep starting requests.
        texts_per_request: texts per ``/classify`` request.
        seed: seeds the text choice.
        timeout_s: per-request timeout.
        stop: polled before each request; True ends that client.
    """
    url = f"{base_url}/classify"
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + duration_s

    async def client(i: int) -> None:
        draw = _batches(texts, texts_per_request, seed * 1000 + i)
        while time.perf_counter() < deadline and not (stop and stop()):
            outcomes.append(await _post(session, url, draw(), None))

    async with _session(clients, timeout_s) as session:
        await asyncio.gather(*(client(i) for i in range(clients)))
    return LoadResult(outcomes, time.perf_counter() - start)


async def open_loop(
    base_url: str, texts: Sequence[str], rate_per_s: float, duration_s: float, *, texts_per_request: int = 1,
    seed: int = 0, timeout_s: float = TIMEOUT_S, max_connections: int = 256,
) -> LoadResult:
    """Requests started at Poisson arrival times of mean ``rate_per_s`` for ``duration_s``,
    whether or not earlier ones were answered (the latency a user sees at that load)."""
    url = f"{base_url}/classify"
    draw = _batches(texts, texts_per_request, seed)
    rng = random.Random(seed + 1)
    tasks: list[asyncio.Task] = []
    start = time.perf_counter()
    async with _session(max_connections, timeout_s) as session:
        next_at = start
        while next_at < start + duration_s:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url, draw(), None)))
            next_at += rng.expovariate(rate_per_s)
        outcomes = list(await asyncio.gather(*tasks))
    return LoadResult(outcomes, time.perf_counter() - start)
