"""Replay queries against a running service, as customers and reviewers would: the demo's traffic,
sent by the one load generator (:mod:`tuneloop.apps.loadgen`) with httpx, a runtime dependency.

One query per ``/classify`` request at a paced rate (at most ``clients`` in flight); a seeded share
of answered requests then gets its true label through ``/feedback``, as a human reviewer would
give it. Every request's outcome is kept, failures included: nothing is retried, so a failed
request is counted, never hidden. Traffic goes only to the URL given (the demo passes a 127.0.0.1
server) and each phase is bounded in count.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator

from tuneloop.apps.demo_data import Query
from tuneloop.apps.loadgen import Outcome, Post, open_session, paced, send

CONNECTIONS_PER_CLIENT = 2  # the replayer's pool since it was written (clients * 2); at most `clients` are busy
REPLAY_CLIENT = "httpx"  # a runtime dependency; aiohttp is dev-only
MIN_RATE = 1e-3  # requests/s: a lower rate() counts as this (one request per ~17 minutes), never a zero division


class Replayer:
    """Sends queries to ``url``, phase after phase, with at most ``clients`` requests in flight.

    The requests go out from one event loop kept across phases (``close()`` ends it). ``rate`` runs
    in a worker thread, so it may block (the demo's reads the monitor's metrics); ``stop`` runs on
    the event loop before each request and must be quick.

    Args:
        url: base URL of the service (``http://127.0.0.1:PORT``).
        clients: concurrent requests at most.
        feedback_share: share of answered requests that get feedback, 0..1.
        seed: seeds which requests get feedback.
        timeout_s: per-request timeout (s); a timeout counts as a failed request.

    Attributes:
        outcomes: every request's :class:`~tuneloop.apps.loadgen.Outcome` so far, all phases, in
            the order they were answered.
    """

    def __init__(self, url: str, clients: int = 4, feedback_share: float = 0.3, seed: int = 0,
                 timeout_s: float = 120.0) -> None:
        self.url, self.clients, self.feedback_share, self.timeout_s = url.rstrip("/"), clients, feedback_share, timeout_s
        self._rng = random.Random(seed)
        self.outcomes: list[Outcome] = []
        self._next_index = 0  # global request index, in sending order across phases
        self._runner = asyncio.Runner()  # one event loop for all phases: the connections are reused
        self._connections = contextlib.AsyncExitStack()
        self._post: Post | None = None

    def close(self) -> None:
        """Close the connections and the event loop."""
        self._runner.run(self._connections.aclose())
        self._runner.close()

    def run(self, phase: str, queries: Iterator[Query], rate: Callable[[], float],
            stop: Callable[[], bool] = lambda: False, max_requests: int = 10_000) -> list[Outcome]:
        """Send queries until ``queries`` is exhausted, ``stop()`` is true, or ``max_requests`` were sent.

        Args:
            phase: name recorded on each outcome.
            queries: the queries, consumed lazily.
            rate: called after each request is sent; target requests per second until the next one.
            stop: checked before each request.
            max_requests: hard cap on this phase's requests.

        Returns:
            The phase's outcomes, in index order (after all of them completed).
        """
        return self._runner.run(self._run(phase, queries, rate, stop, max_requests))

    async def _run(self, phase: str, queries: Iterator[Query], rate: Callable[[], float],
                   stop: Callable[[], bool], max_requests: int) -> list[Outcome]:
        if self._post is None:
            self._post = await self._connections.enter_async_context(
                open_session(REPLAY_CLIENT, self.clients * CONNECTIONS_PER_CLIENT, self.timeout_s))
        post = self._post

        async def answered(query: Query, index: int, give_feedback: bool) -> Outcome:
            out = await send(post, self.url, [query.text], index=index, phase=phase, label=query.label,
                             noisy=query.noisy, feedback=give_feedback)
            self.outcomes.append(out)
            return out

        def start(query: Query) -> Awaitable[Outcome]:  # at sending time: index and feedback in sending order
            index, self._next_index = self._next_index, self._next_index + 1
            return answered(query, index, self._rng.random() < self.feedback_share)

        async def gap() -> float:
            return 1.0 / max(await asyncio.to_thread(rate), MIN_RATE)

        outcomes = await paced(queries, start, gap, relative=True, max_requests=max_requests, stop=stop,
                               max_in_flight=self.clients)
        return sorted(outcomes, key=lambda o: o.index)
