"""Group commit: one thread writes the traffic log, many requests wait for their rows' commit.

A request's answer must not be sent before its predictions are committed (acknowledged =>
logged), but it need not hold up the model either. The batch worker hands the rows of a batch to
:class:`GroupCommitWriter` and goes on with the next batch; the writer thread takes *everything*
queued since its last commit and writes it in one transaction, then completes each submitter's
future. Under load one commit covers several batches, so the cost per row falls as traffic rises,
and the only wait left on a request's path is its own commit (about a millisecond).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger("bentoml.service.tuneloop")

Row = TypeVar("Row")
MAX_GROUP_ROWS = 4096  # rows per transaction at most; bounds one commit's duration under a backlog
_STOP = object()


class LogWriteError(RuntimeError):
    """The rows could not be committed; the requests that carried them must not be acknowledged."""


class GroupCommitWriter(Generic[Row]):
    """Commit rows from many threads in few transactions, on one dedicated thread.

    Args:
        write_rows: writes a list of rows in one committed transaction; raises on failure.
        on_commit: called with ``(rows, seconds)`` after each successful commit (metrics).
        on_failure: called with the exception after a failed commit (metrics).
        name: the thread's name.
    """

    def __init__(
        self,
        write_rows: Callable[[list[Row]], None],
        on_commit: Callable[[int, float], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        name: str = "tuneloop-log-writer",
    ) -> None:
        self._write_rows = write_rows
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[Row]) -> Future:
        """Queue ``rows``; the future completes (result None) once they are committed.

        The future fails with :class:`LogWriteError` when the transaction that held them failed.

        Raises:
            LogWriteError: the writer was closed.
        """
        if self._closed:
            raise LogWriteError("the traffic log writer is closed (the service is stopping)")
        future: Future = Future()
        self._queue.put((list(rows), future))
        return future

    def is_alive(self) -> bool:
        """True while the writer thread runs (False after :meth:`close`, or if it died)."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Commit what is queued, then stop the thread."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)

    def _take_group(self, first) -> tuple[list, list[Future], bool]:
        """``first`` plus everything queued behind it (up to MAX_GROUP_ROWS rows)."""
        rows, futures, stop, item = [], [], False, first
        while True:
            if item is _STOP:
                stop = True
            else:
                rows.extend(item[0])
                futures.append(item[1])
            if stop or len(rows) >= MAX_GROUP_ROWS:
                return rows, futures, stop
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rows, futures, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            rows, futures, stop = self._take_group(self._queue.get())
            if not futures:
                continue
            start = time.perf_counter()
            try:
                if rows:
                    self._write_rows(rows)
            except Exception as exc:  # noqa: BLE001 - every waiter must learn the outcome
                log.error("traffic log write of %d rows failed: %s: %s", len(rows), type(exc).__name__, exc)
                if self._on_failure is not None:
                    self._on_failure(exc)
                error = LogWriteError(f"could not log the prediction ({type(exc).__name__}); it was not acknowledged")
                for future in futures:
                    future.set_exception(error)
                continue
            if self._on_commit is not None:
                self._on_commit(len(rows), time.perf_counter() - start)
            for future in futures:
                future.set_result(None)
