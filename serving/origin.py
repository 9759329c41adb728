"""Which replica and which worker process answered: stamped on every logged prediction.

A deployment past one machine runs several replicas of the service (``tuneloop serve`` processes
on different ports or hosts) sharing one traffic store, each with several BentoML worker
processes (``TUNELOOP_WORKERS``). Every worker loads the champion on its own, so the rows of the
traffic log say which replica and worker answered (``predictions.replica``, ``.worker``) beside
the model tag: a row answered by a worker that had not swapped yet can be told from one answered
by a worker that failed to swap.

* replica: ``TUNELOOP_REPLICA`` (``tuneloop serve --replica``; ``tuneloop serve`` passes
  ``<host name>:<port>`` when it is not given), else the host name (a Kubernetes pod's name).
* worker: BentoML's public ``bentoml.server_context.worker_index``: 1..N under ``bentoml serve``
  (circus's worker id; a worker restarted after a crash gets the same index back), None when
  the service runs in-process (tests).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuneloop.state.traffic_store import PredictionRecord


@dataclass(frozen=True)
class Origin:
    """The replica and worker of this process.

    Attributes:
        replica: the replica's name (1..128 characters).
        worker: BentoML's worker index (1-based), None outside ``bentoml serve``.
    """

    replica: str
    worker: int | None

    @classmethod
    def current(cls, replica: str | None = None) -> Origin:
        """This process's origin.

        Args:
            replica: the configured replica name (``ServeConfig.replica``); None: the host name.
        """
        import bentoml

        index = bentoml.server_context.worker_index
        return cls(replica=replica or socket.gethostname(), worker=None if index is None else int(index))

    @property
    def worker_label(self) -> str:
        """The worker as a Prometheus label value: the index, ``"0"`` outside ``bentoml serve``."""
        return str(self.worker or 0)

    def stamp(self, records: Sequence[PredictionRecord]) -> list[PredictionRecord]:
        """Copies of ``records`` whose ``replica`` and ``worker`` are this origin's (O(n), ~2 us a row)."""
        return [dataclasses.replace(r, replica=self.replica, worker=self.worker) for r in records]

    def stamping(self, write_rows: Callable[[list[PredictionRecord]], None]) -> Callable[[list[PredictionRecord]], None]:
        """``write_rows`` that stamps each row first (the log writer's write function): the rows
        of both tasks (classification and generation) pass through it, on the writer thread,
        off the request path."""

        def write(records: list[PredictionRecord]) -> None:
            write_rows(self.stamp(records))

        return write
