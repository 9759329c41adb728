"""Serving reply generation (:class:`tuneloop.serving.tasks.ServingTask` for ``generation``): the
smoke test and warm-up of a :class:`tuneloop.training.generator.Generator`, and what a generation
is in the traffic log.

A generation is logged as a ``predictions`` row (``text`` = the prompt, the last user message of a
chat; ``label`` = the finish reason; ``confidence`` = ``exp(mean_logprob)``, the geometric-mean
probability of the generated tokens; ``top3`` empty) plus its ``generations`` row (the reply and
its token counts), committed together. The requests themselves are batched and streamed by
:mod:`tuneloop.serving.gen_batcher`; :meth:`GenerationServing.predict` is the plain, unstreamed
path for a batch of texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tuneloop.serving.tasks import ModelSwapError, PendingText
from tuneloop.state.traffic_store import GenerationRecord, PredictionRecord

SMOKE_PROMPTS = ["Hello", "Where is my order?"]  # a new model must answer these
SMOKE_MAX_NEW_TOKENS = 4
DEFAULT_MAX_NEW_TOKENS = 128  # a request's budget when it names none
FINISH_REASONS = ("stop", "length")


def logged_text(prompt: str | Sequence[dict]) -> str:
    """What the traffic log keeps as a generation's ``text``: the prompt itself, or for chat
    messages the content of the last user message ("" when there is none)."""
    if isinstance(prompt, str):
        return prompt
    return next((str(m.get("content", "")) for m in reversed(list(prompt)) if m.get("role") == "user"), "")


def generation_record(request_id: str, text: str, completion: Any, tag: str, received_at: float, answered_at: float,
                      http_request_id: str | None = None, first_token_ms: float | None = None) -> PredictionRecord:
    """The traffic-log record of one generation (see the module docstring).

    Args:
        request_id: the generation's id (the key of ``/feedback``).
        text: the logged prompt (:func:`logged_text`).
        completion: its :class:`tuneloop.training.generator.Completion`.
        tag: the model that generated it.
        received_at: ``time.time()`` when its request arrived.
        answered_at: ``time.time()`` when its reply was complete.
        http_request_id: the ``X-Request-ID`` of its HTTP request.
        first_token_ms: request arrival to the first generated token, in ms (None: no token).
    """
    generation = GenerationRecord(
        reply=completion.text, finish_reason=completion.finish_reason, prompt_tokens=int(completion.prompt_tokens),
        completion_tokens=int(completion.completion_tokens), mean_logprob=float(completion.mean_logprob),
        first_token_ms=first_token_ms,
    )
    return PredictionRecord(request_id, answered_at, text, completion.finish_reason,
                            math.exp(min(0.0, float(completion.mean_logprob))), [], tag,
                            max(0.0, (answered_at - received_at) * 1000.0), http_request_id, generation)


class GenerationServing:
    """A :class:`tuneloop.training.generator.Generator` behind ``/generate``, ``/v1/chat/completions``
    and ``/feedback`` (a corrected reply and/or a rating)."""

    name = "generation"

    def check(self, tag: str, predictor: Any) -> None:
        """A short greedy reply to each smoke prompt: a ``Completion`` with a known finish reason,
        ``0 <= completion_tokens <= SMOKE_MAX_NEW_TOKENS``, ``prompt_tokens > 0`` and a finite
        ``mean_logprob <= 0``.

        Raises:
            ModelSwapError: (reason ``smoke``) the generation fails or its answers are not such.
        """
        try:
            completions = predictor.generate(SMOKE_PROMPTS, max_new_tokens=SMOKE_MAX_NEW_TOKENS)
        except Exception as exc:
            raise ModelSwapError("smoke", f"model {tag} failed the smoke generation: {type(exc).__name__}: {exc}") from exc
        if len(completions) != len(SMOKE_PROMPTS):
            raise ModelSwapError("smoke", f"model {tag}: {len(completions)} replies to {len(SMOKE_PROMPTS)} smoke prompts")
        for c in completions:
            ok = (isinstance(getattr(c, "text", None), str) and c.finish_reason in FINISH_REASONS
                  and 0 <= c.completion_tokens <= SMOKE_MAX_NEW_TOKENS and c.prompt_tokens > 0
                  and math.isfinite(c.mean_logprob) and c.mean_logprob <= 1e-6)
            if not ok:
                raise ModelSwapError("smoke", f"model {tag} smoke generation is not a valid completion: {c!r}")

    def warm_up(self, predictor: Any) -> float:
        """The generation task's warm-up (one short greedy reply: the first call allocates its
        caches); returns 0.0 (generation batches whole requests, it has no length groups)."""
        from tuneloop.training.generation import GenerationTask

        GenerationTask().warm_up(predictor)
        return 0.0

    def predict(self, live: Any, items: list[PendingText], answered_at: float) -> list[PredictionRecord]:
        """Greedy replies of :data:`DEFAULT_MAX_NEW_TOKENS` tokens at most to the texts of one batch
        (each text one user message), in input order; unstreamed."""
        completions = live.classifier.generate([item.text for item in items], max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        return [generation_record(item.prediction_id, item.text, c, live.tag, item.received_at, answered_at,
                                  item.http_request_id) for item, c in zip(items, completions)]

    def feedback_error(self, live: Any, value: str) -> str | None:
        """A label is never acceptable feedback for a generation model."""
        return (f"the live model {live.tag} generates replies, it has no labels: send `reply` (the corrected "
                "reply) and/or `rating` ('good' or 'bad') instead of `label`")
