"""The serving side of the task seam: what a prediction and a feedback record are for a task.

A model version names its task (:mod:`tuneloop.training.task`); the service finds the matching
:class:`ServingTask` with :func:`serving_task` and reaches everything task-specific through it:

* :meth:`ServingTask.check` and :meth:`ServingTask.warm_up`: the smoke test a new champion must
  pass before it is swapped in, and the passes that make its first request fast;
* :meth:`ServingTask.predict`: one batch of pending texts -> one :class:`PredictionRecord` each
  (what the client gets back and what the traffic log keeps);
* :meth:`ServingTask.feedback_error`: why a reviewer's feedback value is not acceptable for the
  live model (None when it is).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol

from tuneloop.state.traffic_store import PredictionRecord


class PendingText(NamedTuple):
    """One text on its way to a batch, with what its log row needs from the request."""

    text: str
    received_at: float  # time.time() when the request arrived
    http_request_id: str | None
    prediction_id: str  # the text's request_id (made on the event loop: IdSource is not thread-safe)


class ModelSwapError(RuntimeError):
    """A champion could not be swapped in; ``reason`` is ``not_found``, ``load`` or ``smoke``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WrongTaskError(RuntimeError):
    """The live model serves another task than the endpoint (e.g. ``/classify`` on a generation
    model): answer HTTP 409 with this message, which names the endpoints that do serve it."""


ENDPOINTS = {"classification": "/classify", "generation": "/generate or /v1/chat/completions"}


def wrong_task_message(endpoint: str, tag: str, task: str) -> str:
    """The 409 message for ``endpoint`` called while model ``tag`` of ``task`` is live."""
    where = ENDPOINTS.get(task, "another endpoint")
    return f"{endpoint} is not served by the live model {tag}: it is a {task} model; use {where}"


class ServingTask(Protocol):
    """What one kind of model supplies to the service (see the module docstring)."""

    name: str

    def check(self, tag: str, predictor: Any) -> None:
        """Smoke-test a loaded predictor.

        Raises:
            ModelSwapError: (reason ``smoke``) its answers are not what the task's answers must be.
        """

    def warm_up(self, predictor: Any) -> float:
        """Run the warm-up passes; returns the measured per-pass overhead (in tokens) for batching."""

    def predict(self, live: Any, items: list[PendingText], answered_at: float) -> list[PredictionRecord]:
        """Answer one batch with the live model (``live.predictor``), in input order."""

    def feedback_error(self, live: Any, value: str) -> str | None:
        """Why ``value`` is not acceptable feedback for the live model, or None."""


@functools.cache
def serving_task(name: str) -> ServingTask:
    """The serving side of task ``name`` (one shared instance per task: the service asks once per batch).

    Raises:
        ValueError: no serving support for that task (the message lists the known ones).
    """
    from tuneloop.serving.classification import ClassificationServing
    from tuneloop.serving.generation import GenerationServing

    tasks = {ClassificationServing.name: ClassificationServing(), GenerationServing.name: GenerationServing()}
    if name not in tasks:
        raise ValueError(f"the service cannot serve task {name!r}: it serves {sorted(tasks)}")
    return tasks[name]
