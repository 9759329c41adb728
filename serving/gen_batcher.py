"""Batched, streamed generation: concurrent requests share one left-padded ``Generator.generate``
call on an inference thread, and each request's reply streams back to its own asyncio queue.

Requests wait in a FIFO queue on the event loop. When the inference thread is free, the oldest
request waits at most ``window_s`` for company (unless ``max_batch_size`` already wait), then a
batch is taken: the oldest request and, in arrival order, up to ``max_batch_size - 1`` others
with the same sampling settings (temperature, top_p; greedy requests all share one key), because
one ``generate`` call samples every row alike. Each row keeps its own ``max_new_tokens`` and stop
strings (``Generator.generate`` ends rows one by one). Requests with other settings stay queued,
in order, for the next batch.

Streaming: ``generate``'s ``on_text`` hook runs on the inference thread for each new piece of a
row; the piece is handed to the request's queue with ``loop.call_soon_threadsafe``. Text that
could be the beginning of one of the row's stop strings is held back until it is known not to be
(the generator cuts a reply before a stop string only once the whole string has appeared), so the
pieces a client receives always add up to the final reply.

A batch reads the live model once, when it starts, and keeps that reference: during a hot swap
the streams in flight finish on the model they started with. When ``generate`` returns, the
batch's rows go to the log writer, the thread takes the next batch, and each request gets its
:class:`Finished` event once its row is committed (acknowledged => logged).

Bounds: at most ``max_queue`` requests wait (more: :class:`QueueFullError`); a request that
waited longer than ``max_wait_s`` is not computed (:class:`QueueTimeoutError`); a prompt over the
model's token limit fails alone (:class:`~tuneloop.training.generator.PromptTooLongError`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tuneloop.serving.batcher import QueueFullError, QueueTimeoutError
from tuneloop.serving.generation import generation_record
from tuneloop.serving.tasks import WrongTaskError, wrong_task_message
from tuneloop.state.traffic_store import PredictionRecord
from tuneloop.training.generator import PromptTooLongError

log = logging.getLogger("bentoml.service.tuneloop")


class PromptError(ValueError):
    """The model's chat template refused a prompt (answer HTTP 400 with this message)."""


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks for.

    Attributes:
        prompt: a user message (str) or chat messages ``[{"role", "content"}, ...]``.
        text: what the traffic log keeps as its ``text`` (the prompt, or the last user message).
        max_new_tokens: its token budget (>= 1).
        temperature: 0 greedy, > 0 sampling.
        top_p: nucleus sampling mass (0 < top_p <= 1; ignored when greedy).
        stop: strings that end its reply (the reply is cut before them).
    """

    prompt: str | Sequence[dict]
    text: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @property
    def sampling_key(self) -> tuple[float, float]:
        """Requests with equal keys may share a batch (greedy decoding ignores top_p)."""
        return (0.0, 1.0) if self.temperature <= 0 else (float(self.temperature), float(self.top_p))


@dataclass(frozen=True)
class Piece:
    """A new piece of a reply's text, and the tag of the model generating it."""

    text: str
    model_tag: str = ""


@dataclass(frozen=True)
class Finished:
    """A reply is complete and committed to the traffic log: ``record`` is its log record
    (``record.generation`` holds the reply and token counts), ``completion`` the generator's answer."""

    record: PredictionRecord
    completion: Any


@dataclass(frozen=True)
class GenBatchReport:
    """One ``generate`` call, for metrics: its rows, how long its oldest request waited (s), its
    wall time (s), the model, each row's completion and each row's time to first token from its
    arrival in the queue (s; None when a row generated no token)."""

    rows: int
    oldest_wait_s: float
    seconds: float
    model_tag: str
    completions: list[Any]
    ttft_s: list[float | None]


@dataclass
class _Request:
    params: GenerationParams
    request_id: str
    received_at: float
    http_request_id: str | None
    events: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def post(self, item: Piece | Finished | BaseException) -> None:
        """Hand an event to the request's queue from any thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class GenerationStream:
    """One request's events: :class:`Piece` s, then one :class:`Finished`; an error is raised
    instead (``QueueTimeoutError``, ``WrongTaskError``, ``PromptTooLongError``, ``PromptError``,
    ``LogWriteError``, or whatever ``generate`` raised). Iterate it, or await :meth:`result`."""

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._finished = False

    @property
    def request_id(self) -> str:
        """The generation's id (the key of ``/feedback``)."""
        return self._request.request_id

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Piece | Finished:
        if self._finished:
            raise StopAsyncIteration
        item = await self._request.events.get()
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if isinstance(item, Finished):
            self._finished = True
        return item

    async def result(self) -> Finished:
        """Wait for the committed reply (pieces are skipped)."""
        async for item in self:
            if isinstance(item, Finished):
                return item
        raise RuntimeError("the stream ended without a reply")

    def cancel(self) -> None:
        """The client is gone: a request still queued is dropped (one already generating finishes and is logged)."""
        self._request.cancelled = True


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin one of ``stops`` (so must not be sent yet)."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


class GenerationEngine:
    """Merge concurrent generation requests into ``generate`` calls on one inference thread.

    Args:
        live: returns the live model (``.tag``, ``.task``, ``.classifier`` = the Generator) or None.
        log: hands a batch's records to the log writer and returns the commit's future (None: no log).
        max_batch_size: most rows per ``generate`` call.
        window_s: how long an idle engine waits after the first request for more (s).
        max_queue: most requests waiting.
        max_wait_s: longest a request may wait in the queue before it is refused (s).
        on_batch: called on the inference thread with a :class:`GenBatchReport` after each call.
    """

    def __init__(self, live: Callable[[], Any], log: Callable[[list[PredictionRecord]], Future | None] | None, *,
                 max_batch_size: int = 8, window_s: float = 0.01, max_queue: int = 64, max_wait_s: float = 30.0,
                 on_batch: Callable[[GenBatchReport], None] | None = None, thread_name: str = "tuneloop-generate") -> None:
        self._live = live
        self._log = log
        self.max_batch_size, self.window_s, self.max_queue, self.max_wait_s = max_batch_size, window_s, max_queue, max_wait_s
        self.on_batch = on_batch
        self._pending: collections.deque[_Request] = collections.deque()
        self._busy = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch now."""
        return len(self._pending)

    def submit(self, params: GenerationParams, request_id: str, received_at: float,
               http_request_id: str | None = None) -> GenerationStream:
        """Queue one request (call on the event loop); its events arrive through the returned stream.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
        """
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"{len(self._pending)} generation requests are waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._dispatch_forever())
        request = _Request(params, request_id, received_at, http_request_id, asyncio.Queue(), loop)
        self._pending.append(request)
        self._wake.set()
        return GenerationStream(request)

    def close(self) -> None:
        """Stop dispatching, fail what is queued, and let the running batch finish."""
        if self._task is not None:
            self._task.cancel()
        while self._pending:
            request = self._pending.popleft()
            request.events.put_nowait(QueueFullError("the service is stopping"))
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _take_batch(self) -> list[_Request]:
        """The oldest live request and the next ones with its sampling key, up to ``max_batch_size``."""
        taken, keep, key, now = [], collections.deque(), None, time.perf_counter()
        while self._pending:
            request = self._pending.popleft()
            if request.cancelled:
                continue
            if now - request.enqueued_at > self.max_wait_s:
                request.events.put_nowait(QueueTimeoutError(
                    f"waited {now - request.enqueued_at:.1f} s for the model (limit {self.max_wait_s:.1f} s)"))
                continue
            key = key or request.params.sampling_key
            if request.params.sampling_key == key and len(taken) < self.max_batch_size:
                taken.append(request)
            else:
                keep.append(request)
        self._pending = keep
        return taken

    async def _dispatch_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._busy:
                wait = self._pending[0].enqueued_at + self.window_s - time.perf_counter()
                if wait > 0 and len(self._pending) < self.max_batch_size:
                    await asyncio.sleep(wait)  # a free thread: give the burst a moment to arrive
                batch = self._take_batch()
                if batch:
                    self._busy = True
                    task = asyncio.get_running_loop().create_task(self._run(batch))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Request]) -> None:
        """Generate one batch on the inference thread, then deliver each row once it is committed."""
        try:
            try:
                rows, done = await asyncio.get_running_loop().run_in_executor(self._executor, self._generate, batch)
            finally:
                self._busy = False
                self._wake.set()  # the thread is free: dispatch what queued meanwhile
            if done is not None:
                await asyncio.wrap_future(done)
        except Exception as exc:  # noqa: BLE001 - delivered to every request of the batch
            for request in batch:
                request.events.put_nowait(exc)
            return
        for request, record, completion in rows:
            request.events.put_nowait(Finished(record, completion))

    def _generate(self, batch: list[_Request]) -> tuple[list[tuple[_Request, PredictionRecord, Any]], Future | None]:
        """The inference thread's work for one batch (see the module docstring)."""
        live = self._live()  # read once: the whole batch runs on this model
        if live is None:
            raise QueueTimeoutError("no model is loaded")
        if live.task != "generation":
            raise WrongTaskError(wrong_task_message("generation", live.tag, live.task))
        gen = live.classifier
        rows = [r for r in batch if self._prompt_fits(gen, r)]
        if not rows:
            return [], None
        start = time.perf_counter()
        stops = [list(r.params.stop) for r in rows]
        received = [""] * len(rows)  # the generator's text so far, per row
        sent = [0] * len(rows)  # characters of it handed to the request

        def on_text(row: int, piece: str) -> None:
            received[row] += piece
            safe = len(received[row]) - held_back(received[row], stops[row])
            if safe > sent[row]:
                rows[row].post(Piece(received[row][sent[row]:safe], live.tag))
                sent[row] = safe

        temperature, top_p = rows[0].params.sampling_key
        completions = gen.generate([r.params.prompt for r in rows], max_new_tokens=[r.params.max_new_tokens for r in rows],
                                   temperature=temperature, top_p=top_p, stop=stops, on_text=on_text)
        answered_at, seconds = time.time(), time.perf_counter() - start
        records, ttft = [], []
        for i, (request, completion) in enumerate(zip(rows, completions)):
            final, so_far = completion.text, received[i][:sent[i]]
            if len(final) > sent[i] and final.startswith(so_far):
                request.post(Piece(final[sent[i]:], live.tag))  # what was held back and turned out not to be a stop
            first = completion.token_times[0] - request.enqueued_at if completion.token_times else None
            ttft.append(first)
            records.append(generation_record(request.request_id, request.params.text, completion, live.tag,
                                             request.received_at, answered_at, request.http_request_id,
                                             None if first is None else first * 1000.0))
        if self.on_batch is not None:
            try:
                self.on_batch(GenBatchReport(len(rows), start - min(r.enqueued_at for r in rows), seconds, live.tag,
                                             completions, ttft))
            except Exception:  # metrics must never fail a batch
                log.exception("generation batch report failed")
        done = self._log(records) if self._log is not None else None
        return list(zip(rows, records, completions)), done

    @staticmethod
    def _prompt_fits(gen: Any, request: _Request) -> bool:
        """Check one prompt against the model's chat template and token limit; fail its request alone if not."""
        try:
            tokens = gen.prompt_tokens(request.params.prompt)
        except Exception as exc:  # e.g. a chat template that raises on a message order it refuses
            request.post(PromptError(f"the model's chat template refused the messages: {type(exc).__name__}: {exc}"))
            return False
        if tokens > gen.max_prompt_tokens:
            request.post(PromptTooLongError(tokens, gen.max_prompt_tokens))
            return False
        return True
