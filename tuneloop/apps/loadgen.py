"""HTTP traffic against ``POST /classify``: the one load generator of the load tests, the serving
benchmarks and the demo, all on one asyncio loop: :func:`closed_loop` (N clients, each sends its
next request when the last is answered), :func:`open_loop` (requests start at Poisson arrival
times, answered or not) and the schedule under it, :func:`paced`, which also sends the demo's
traffic (:class:`tuneloop.apps.replay.Replayer`: queries at a rate read after each request, at
most N in flight, a share of the answered ones followed by their true label on ``/feedback``).

Every request's outcome is kept, failures included: nothing is retried. Traffic goes only to the
URL given, bounded in time or in count. Two HTTP clients send the same requests: ``httpx`` (a
runtime dependency: the demo's) and ``aiohttp`` (dev-only: the loops' default, a tenth of httpx's
CPU per request, which matters as the load shares 2 cores with the server it measures: 24
closed-loop clients on a tiny model's ``bentoml serve`` sent 556 requests/s at 0.44 ms of client
CPU each with aiohttp, 177/s at 4.7 ms with ``httpx.AsyncClient``; 4 interleaved 8 s rounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

TIMEOUT_S = 60.0  # per request; a request still unanswered after this counts as failed (status 0)
CLIENTS = ("aiohttp", "httpx")  # the HTTP clients this module can send with
OPEN_LOOP_CONNECTIONS = 256  # open loop's connection cap: far above what a 2-core server answers at once
ERROR_CHARS = 300  # characters of an error (exception or answer body) kept per failed request: its gist, not a page
_END = object()  # marks the end of paced()'s items


@dataclass
class Outcome:
    """One ``/classify`` request.

    Attributes:
        status: HTTP status; 0 when no answer came (refused, reset, timed out).
        latency_s: from sending to the answer read (s), feedback excluded.
        sent_at: ``time.time()`` when sent.
        n_texts: texts in the request.
        request_ids, model_tags, predicted, confidences: per text, from a 200 answer.
        error: why the request failed (exception or answer body, first ``ERROR_CHARS`` characters).
        index, phase: a replayed request's place in sending order (global across phases) and phase.
        label: the true label of a replayed query; ``noisy``: typos were added to its text.
        feedback: its true label was sent to ``/feedback``; ``feedback_ok``: that answered 200.
    """

    status: int
    latency_s: float
    sent_at: float
    n_texts: int
    request_ids: list[str] = field(default_factory=list)
    model_tags: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    error: str | None = None
    index: int = 0
    phase: str = ""
    label: str | None = None
    noisy: bool = False
    feedback: bool = False
    feedback_ok: bool | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer whose predictions were read (no ``error``)."""
        return 200 <= self.status < 300 and self.error is None

    def to_dict(self) -> dict:
        """A flat row (the demo report's): ``ok``, and the first text's answer as ``predicted``,
        ``confidence``, ``model_tag`` and ``request_id`` (a replayed request holds one text)."""
        row = asdict(self)
        for many, one in (("predicted", "predicted"), ("confidences", "confidence"), ("model_tags", "model_tag"),
                          ("request_ids", "request_id")):
            values = row.pop(many)
            row[one] = values[0] if values else None
        return {**row, "ok": self.ok}


@dataclass
class LoadResult:
    """Every request's outcome and the wall time of the run (s)."""

    outcomes: list[Outcome]
    duration_s: float

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def statuses(self) -> dict[int, int]:
        return dict(Counter(o.status for o in self.outcomes))

    def texts_per_s(self) -> float:
        """Texts answered with 2xx per second of the run."""
        return sum(o.n_texts for o in self.ok) / self.duration_s

    def latency_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of 2xx latencies, in ms (nan when none)."""
        lat = [o.latency_s for o in self.ok]
        return float(np.percentile(lat, q) * 1000) if lat else float("nan")


Post = Callable[[str, dict], Awaitable[tuple[int, bytes]]]  # (url, JSON payload) -> (status, body bytes)


@contextlib.asynccontextmanager
async def open_session(client: str, connections: int, timeout_s: float) -> AsyncIterator[Post]:
    """An open HTTP client, as its ``post`` function; closed when the ``async with`` block ends.

    Args:
        client: ``"httpx"`` or ``"aiohttp"`` (imported only when chosen).
        connections: most connections open at once (further requests wait for one).
        timeout_s: per-request timeout (s).

    Raises:
        ValueError: ``client`` is not one of ``CLIENTS``.
    """
    if client == "httpx":
        import httpx

        async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=connections)) as http:
            async def post_httpx(url: str, payload: dict) -> tuple[int, bytes]:
                resp = await http.post(url, json=payload)
                return resp.status_code, resp.content

            yield post_httpx
    elif client == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, force_close=False),
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async def post_aiohttp(url: str, payload: dict) -> tuple[int, bytes]:
                async with http.post(url, json=payload) as resp:
                    return resp.status, await resp.read()

            yield post_aiohttp
    else:
        raise ValueError(f"client={client!r}: use one of {CLIENTS}")


async def send(post: Post, base_url: str, texts: list[str], *, index: int = 0, phase: str = "",
               label: str | None = None, noisy: bool = False, feedback: bool = False) -> Outcome:
    """POST ``texts`` to ``{base_url}/classify``; with ``feedback``, an ok answer's first request id
    and ``label`` then go to ``/feedback``. Never raises: a failure is an outcome.

    Args:
        post: from :func:`open_session`.
        base_url: ``http://127.0.0.1:PORT``.
        texts: the request's texts.
        index, phase, label, noisy: recorded on the outcome (see :class:`Outcome`).
        feedback: send ``label`` as the true label of an ok answer.
    """
    out = Outcome(0, 0.0, time.time(), len(texts), index=index, phase=phase, label=label, noisy=noisy)
    start = time.perf_counter()
    try:
        out.status, body = await post(f"{base_url}/classify", {"texts": texts})
        if out.status == 200:
            answer = json.loads(body)
            items = answer["results"] if isinstance(answer, dict) else answer
            out.request_ids = [p["request_id"] for p in items]
            out.model_tags = [p["model_tag"] for p in items]
            out.predicted = [p["label"] for p in items]
            out.confidences = [p["confidence"] for p in items]
        else:
            out.error = body.decode(errors="replace")[:ERROR_CHARS]
    except Exception as exc:  # noqa: BLE001 - a failed request is an outcome, not a crash of the run
        out.error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
    out.latency_s = time.perf_counter() - start
    if feedback and out.ok:
        out.feedback = True
        try:
            status, _ = await post(f"{base_url}/feedback", {"request_id": out.request_ids[0], "label": label})
            out.feedback_ok = status == 200
        except Exception:  # noqa: BLE001 - as above
            out.feedback_ok = False
    return out


def _draw(texts: Sequence[str], texts_per_request: int, seed: int) -> Callable[[], list[str]]:
    rng = random.Random(seed)
    return lambda: [rng.choice(texts) for _ in range(texts_per_request)]


async def closed_loop(
    base_url: str, texts: Sequence[str], clients: int, duration_s: float, *, texts_per_request: int = 1,
    seed: int = 0, timeout_s: float = TIMEOUT_S, stop: Callable[[], bool] | None = None, client: str = "aiohttp",
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
        client: the HTTP client, one of ``CLIENTS``.
    """
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    deadline = start + duration_s

    async def one_client(i: int) -> None:
        draw = _draw(texts, texts_per_request, seed * 1000 + i)
        while time.perf_counter() < deadline and not (stop and stop()):
            outcomes.append(await send(post, base_url, draw()))

    async with open_session(client, clients, timeout_s) as post:
        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return LoadResult(outcomes, time.perf_counter() - start)


async def paced(
    items: Iterable[Any], start: Callable[[Any], Awaitable[Outcome]], gap: Callable[[], Awaitable[float]], *,
    relative: bool = False, duration_s: float | None = None, max_requests: int | None = None,
    stop: Callable[[], bool] | None = None, max_in_flight: int | None = None,
) -> list[Outcome]:
    """Start one request per item on a schedule, answered or not; the outcomes in sending order.

    Per item: wait for its time, take it, check the limits, wait for a free slot, ``start(item)``
    (so what it draws is drawn in sending order), then ``await gap()``: seconds from this request's
    scheduled time to the next one's. ``relative=False`` (open loop): the schedule holds even when
    sending falls behind. ``relative=True``: a request held back by ``max_in_flight`` restarts the
    schedule, and a late schedule never bursts (the next request is due when its gap is known).

    Args:
        items: what to send, consumed lazily; the run ends when they run out.
        start: from an item to its request's awaitable outcome.
        gap: seconds to the next request, awaited after each one is started.
        duration_s: no request is scheduled at or after this many seconds from the start.
        max_requests: at most this many requests.
        stop: called on the event loop before each request (must not block); True ends the run.
        max_in_flight: at most this many requests unanswered at once (None: no limit).
    """
    slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
    tasks: list[asyncio.Task] = []

    async def release_when_done(outcome: Awaitable[Outcome]) -> Outcome:
        try:
            return await outcome
        finally:
            if slots is not None:
                slots.release()

    begin = next_at = time.perf_counter()
    items = iter(items)
    while duration_s is None or next_at < begin + duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        item = next(items, _END)
        if item is _END or (max_requests is not None and len(tasks) >= max_requests) or (stop and stop()):
            break
        if slots is not None:
            held_back = slots.locked()
            await slots.acquire()
            if held_back and relative:
                next_at = time.perf_counter()  # the schedule restarts from the request held back
        tasks.append(asyncio.create_task(release_when_done(start(item))))
        next_at += await gap()
        if relative:
            next_at = max(next_at, time.perf_counter())  # late (a slow gap()): the next one now, no burst
    return list(await asyncio.gather(*tasks))


async def open_loop(
    base_url: str, texts: Sequence[str], rate_per_s: float, duration_s: float, *, texts_per_request: int = 1,
    seed: int = 0, timeout_s: float = TIMEOUT_S, max_connections: int = OPEN_LOOP_CONNECTIONS, client: str = "aiohttp",
) -> LoadResult:
    """Requests started at Poisson arrival times of mean ``rate_per_s`` for ``duration_s``,
    whether or not earlier ones were answered (the latency a user sees at that load).

    Args: as :func:`closed_loop`, and ``max_connections``: connections open at most (requests
    beyond wait for one).
    """
    draw = _draw(texts, texts_per_request, seed)
    rng = random.Random(seed + 1)

    async def gap() -> float:
        return rng.expovariate(rate_per_s)

    start = time.perf_counter()
    async with open_session(client, max_connections, timeout_s) as post:
        outcomes = await paced(itertools.repeat(None), lambda _: send(post, base_url, draw()), gap,
                               duration_s=duration_s)
    return LoadResult(outcomes, time.perf_counter() - start)
