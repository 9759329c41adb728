"""Replay queries against a running service, as customers and reviewers would.

Client threads POST one query per ``/classify`` request at a paced rate (a bounded number in
flight); a seeded share of answered requests then gets its true label through ``/feedback``, as
a human reviewer would give it. Every request's outcome is kept, failures included: nothing is
retried, so a failed request is counted, never hidden. Traffic goes only to the URL given (the
demo passes a 127.0.0.1 server) and each phase is bounded in count.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx

from tuneloop.apps.demo_data import Query


@dataclass
class Outcome:
    """One request: global index, phase, true label, what the service answered, timings (Unix s)."""

    index: int
    phase: str
    label: str
    noisy: bool
    ok: bool
    status: int
    predicted: str | None = None
    confidence: float | None = None
    model_tag: str | None = None
    request_id: str | None = None
    feedback: bool = False
    feedback_ok: bool | None = None
    error: str | None = None
    sent_at: float = 0.0
    latency_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Replayer:
    """Sends queries to ``url`` from ``clients`` threads.

    Args:
        url: base URL of the service (``http://127.0.0.1:PORT``).
        clients: concurrent client threads (also the most requests in flight).
        feedback_share: share of answered requests that get feedback, 0..1.
        seed: seeds which requests get feedback.
        timeout_s: per-request timeout (s); a timeout counts as a failed request.
    """

    def __init__(self, url: str, clients: int = 4, feedback_share: float = 0.3, seed: int = 0,
                 timeout_s: float = 120.0) -> None:
        self.url, self.clients, self.feedback_share, self.timeout_s = url.rstrip("/"), clients, feedback_share, timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._next_index = 0  # global request index, in submission order across phases
        self._http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=clients * 2))

    def close(self) -> None:
        self._http.close()

    def _send(self, index: int, phase: str, query: Query, give_feedback: bool) -> Outcome:
        sent = time.time()
        out = Outcome(index=index, phase=phase, label=query.label, noisy=query.noisy, ok=False, status=0, sent_at=sent)
        try:
            resp = self._http.post(f"{self.url}/classify", json={"texts": [query.text]})
            out.status = resp.status_code
            if resp.status_code == 200:
                body = resp.json()
                item = (body["results"] if isinstance(body, dict) else body)[0]
                out.ok, out.predicted, out.confidence = True, item["label"], item["confidence"]
                out.model_tag, out.request_id = item["model_tag"], item["request_id"]
            else:
                out.error = resp.text[:300]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            out.error = repr(exc)[:300]
        out.latency_s = time.time() - sent
        if out.ok and give_feedback:
            out.feedback = True
            try:
                fb = self._http.post(f"{self.url}/feedback", json={"request_id": out.request_id, "label": query.label})
                out.feedback_ok = fb.status_code == 200
            except httpx.HTTPError:
                out.feedback_ok = False
        with self._lock:
            self.outcomes.append(out)
        return out

    def run(self, phase: str, queries: Iterator[Query], rate: Callable[[], float],
            stop: Callable[[], bool] = lambda: False, max_requests: int = 10_000) -> list[Outcome]:
        """Send queries until ``queries`` is exhausted, ``stop()`` is true, or ``max_requests`` were sent.

        Args:
            phase: name recorded on each outcome.
            queries: the queries, consumed lazily.
            rate: called before each request; target requests per second at that moment.
            stop: checked before each request.
            max_requests: hard cap on this phase's requests.

        Returns:
            The phase's outcomes, in index order (after all of them completed).
        """
        slots = threading.BoundedSemaphore(self.clients)
        futures = []
        with ThreadPoolExecutor(max_workers=self.clients, thread_name_prefix=f"replay-{phase}") as pool:
            for sent, query in enumerate(queries):
                if sent >= max_requests or stop():
                    break
                slots.acquire()
                index, self._next_index = self._next_index, self._next_index + 1
                give_feedback = self._rng.random() < self.feedback_share

                def task(i=index, q=query, fb=give_feedback):
                    try:
                        return self._send(i, phase, q, fb)
                    finally:
                        slots.release()

                futures.append(pool.submit(task))
                time.sleep(1.0 / max(rate(), 1e-3))
        return sorted((f.result() for f in futures), key=lambda o: o.index)
