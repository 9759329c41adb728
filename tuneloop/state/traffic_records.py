"""What the traffic store logs, as Python values: a prediction (and a generation's reply), the
feedback ratings, and the error feedback for an unknown request raises (:mod:`traffic_store`
re-exports all of them)."""

from __future__ import annotations

from dataclasses import dataclass


class UnknownRequestError(KeyError):
    """Feedback names a request id that is not in the log."""


RATINGS = {"good": 1, "bad": -1}  # feedback.rating values


@dataclass(frozen=True)
class GenerationRecord:
    """What a generation answered (its ``generations`` row).

    Attributes:
        reply: the generated reply.
        finish_reason: ``"stop"`` or ``"length"``.
        prompt_tokens: tokens of the prompt after the chat template (>= 0).
        completion_tokens: tokens generated (>= 0).
        mean_logprob: mean natural-log probability of the generated tokens (<= 0; 0 when none).
        first_token_ms: request arrival to its first generated token, ms (None: no token).
    """

    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float
    first_token_ms: float | None = None


@dataclass(frozen=True)
class PredictionRecord:
    """One logged prediction. ``top3`` is ``[(label, probability), ...]``, best first.

    A generation is a prediction too: ``text`` is its prompt (the last user message of a chat),
    ``label`` its finish reason, ``confidence`` ``exp(mean_logprob)``, ``top3`` empty, and
    ``generation`` holds the reply (written to ``generations`` in the same transaction).
    ``replica`` names the service replica that answered (e.g. ``host:port`` or a pod name) and
    ``worker`` its worker process index (BentoML's ``server_context.worker_index``: 1-based under ``bentoml serve``;
    None in-process or where not known).
    """

    request_id: str
    created_at: float
    text: str
    label: str
    confidence: float
    top3: list[tuple[str, float]]
    model_tag: str
    latency_ms: float
    http_request_id: str | None = None
    generation: GenerationRecord | None = None
    replica: str | None = None
    worker: int | None = None

