"""Adaptive batching: concurrent requests share model calls, which run on worker threads.

Requests (lists of texts) wait in a queue on the event loop. While the workers are busy the queue
fills, and the next free worker takes everything waiting (up to ``max_batch_size`` texts, whole
requests only), so the batch size follows the load without a timer. When a worker is free and
fewer than ``max_batch_size`` texts wait, the oldest waits at most ``window_s`` for company
before its batch starts. Tokenisation and the forward passes run on the worker threads, never on
the event loop, which keeps parsing and answering other requests meanwhile.

``workers`` > 1 computes that many batches at once (each worker one torch intra-op thread is the
intended use): on a small CPU this uses every core without the OpenMP barriers of intra-op
threads, which stall whenever another process takes a core (measured: 2 intra-op threads on the
shared 2-core machine fell from ~125 to ~6 texts/s, 2 workers did not fall).

Bounds: at most ``max_queue_texts`` texts wait (more: :class:`QueueFullError`); a request that
waited longer than ``max_wait_s`` is not computed (:class:`QueueTimeoutError`). A cancelled
request (client gone, timeout) is dropped from the queue.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Result = TypeVar("Result")


class QueueFullError(RuntimeError):
    """Too many texts are already waiting for the model (answer 503, retry later)."""


class QueueTimeoutError(RuntimeError):
    """A request waited longer than ``max_wait_s`` for its batch (answer 503)."""


@dataclass
class _Request:
    texts: Sequence[Any]
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchInfo:
    """What one batch was: its size in texts and requests, and how long its oldest request waited (s)."""

    texts: int
    requests: int
    oldest_wait_s: float


class MicroBatcher(Generic[Result]):
    """Merge concurrent :meth:`submit` calls into calls of ``run_batch`` on one worker thread.

    Args:
        run_batch: ``(texts, info) -> (results, done)``: one result per text, in order, and a
            ``concurrent.futures.Future`` (or None) that must complete before the results are
            delivered (the service's log commit); runs on a worker thread, which is free again as
            soon as it returns. An exception, raised or in ``done``, fails every request of the batch.
        max_batch_size: most texts per ``run_batch`` call (a larger request runs alone).
        window_s: how long an idle batcher waits for more texts after the first (s).
        max_queue_texts: most texts waiting.
        max_wait_s: longest a request may wait in the queue before it is refused.
        workers: batches computed at once, one worker thread each.
        thread_name: the worker threads' name prefix.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any], BatchInfo], tuple[list[Result], Future | None]],
        *,
        max_batch_size: int,
        window_s: float,
        max_queue_texts: int,
        max_wait_s: float,
        workers: int = 1,
        thread_name: str = "tuneloop-infer",
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.max_queue_texts = max_queue_texts
        self.max_wait_s = max_wait_s
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_texts = 0
        self.workers = workers
        self._busy = 0  # batches running now
        self._running: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a batch now."""
        return self._queued_texts

    @property
    def busy(self) -> int:
        """Batches handed to the worker threads and not computed yet (at most ``workers``); a batch
        that waits only for its ``done`` future (e.g. the log commit) no longer counts."""
        return self._busy

    async def submit(self, texts: Sequence[Any]) -> list[Result]:
        """Classify ``texts`` as part of a batch; returns one result per text, in order.

        Raises:
            QueueFullError: ``max_queue_texts`` would be exceeded.
            QueueTimeoutError: the request waited longer than ``max_wait_s``.
            Exception: whatever ``run_batch`` raised for the batch.
        """
        if self._queued_texts + len(texts) > self.max_queue_texts:
            raise QueueFullError(f"{self._queued_texts} texts are waiting for the model (limit {self.max_queue_texts})")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._dispatch_forever())
        request = _Request(texts, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_texts += len(texts)
        self._wake.set()
        return await request.future

    def close(self) -> None:
        """Stop dispatching, fail what is queued, and let the running batch finish."""
        if self._task is not None:
            self._task.cancel()
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(QueueFullError("the service is stopping"))
        self._queued_texts = 0
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _take_batch(self) -> list[_Request]:
        """Whole requests from the head of the queue, up to ``max_batch_size`` texts (at least one)."""
        taken, size, now = [], 0, time.perf_counter()
        while self._queue and (not taken or size + len(self._queue[0].texts) <= self.max_batch_size):
            request = self._queue.popleft()
            self._queued_texts -= len(request.texts)
            if request.future.done():  # cancelled while waiting
                continue
            if now - request.enqueued_at > self.max_wait_s:
                request.future.set_exception(QueueTimeoutError(
                    f"waited {now - request.enqueued_at:.1f} s for the model (limit {self.max_wait_s:.1f} s)"))
                continue
            taken.append(request)
            size += len(request.texts)
        return taken

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._busy < self.workers:
                wait = self._queue[0].enqueued_at + self.window_s - time.perf_counter()
                if wait > 0 and self._queued_texts < self.max_batch_size:
                    await asyncio.sleep(wait)  # a free worker: give the burst a moment to arrive
                batch = self._take_batch()
                if batch:
                    self._busy += 1
                    task = asyncio.get_running_loop().create_task(self._run(batch))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Request]) -> None:
        """Compute one batch on a worker thread and deliver each request's share of the results
        (after the batch's ``done`` future, if it returned one; the worker is free meanwhile)."""
        items = [item for request in batch for item in request.texts]
        info = BatchInfo(len(items), len(batch), time.perf_counter() - batch[0].enqueued_at)
        try:
            try:
                results, done = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self.run_batch, items, info)
            finally:
                self._busy -= 1
                self._wake.set()  # a worker is free: dispatch what queued meanwhile
            if done is not None:
                await asyncio.wrap_future(done)
        except Exception as exc:  # noqa: BLE001 - delivered to every request of the batch
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(results[start:end])
            start = end
