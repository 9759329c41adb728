"""The generation endpoints' wire formats: request types and bounds, prompt checks, and the
answers and server-sent events of ``/generate`` (tuneloop's own) and ``/v1/chat/completions``
(OpenAI's chat completions format), built from the engine's events
(:mod:`tuneloop.serving.gen_batcher`).

Server-sent events: one ``data: <json>\\n\\n`` per event, the last one ``data: [DONE]\\n\\n``,
sent only after the reply is committed to the traffic log. An error after the stream started
(the log write failed) is sent as a ``data: {"error": ...}`` event and the stream ends without
``[DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tuneloop.serving.gen_batcher import Finished, GenerationParams, GenerationStream, Piece
from tuneloop.serving.generation import DEFAULT_MAX_NEW_TOKENS, logged_text

MAX_MESSAGES = 64  # chat messages per request
MAX_STOPS = 4  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 32
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
DONE = b"data: [DONE]\n\n"


class GenTypes(NamedTuple):
    """The bounded request types of the generation endpoints (pydantic ``Annotated`` types)."""

    prompt: Any  # str, 1..max_chars characters
    messages: Any  # list of 1..MAX_MESSAGES ChatMessage
    max_new_tokens: Any  # int, 1..max_new_tokens
    temperature: Any  # float, 0..2
    top_p: Any  # float, 0 < top_p <= 1
    stops: Any  # list of 1..MAX_STOPS strings of 1..MAX_STOP_CHARS characters
    stop: Any  # one such string
    default_max_new_tokens: int


def build_types(max_chars: int, max_new_tokens: int) -> GenTypes:
    """The request types for the service's limits (``gen_max_chars``, ``gen_max_new_tokens``);
    BentoML needs them when the service class is defined."""

    class ChatMessage(BaseModel):
        """One chat message: ``role`` (system, user or assistant) and its text ``content``."""

        model_config = ConfigDict(extra="ignore")
        role: Literal["system", "user", "assistant"]
        content: Annotated[str, StringConstraints(strict=True, max_length=max_chars)]

    stop = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MAX_STOP_CHARS)]
    return GenTypes(
        prompt=Annotated[str, StringConstraints(strict=True, min_length=1, max_length=max_chars),
                         Field(description="the request, as one user message")],
        messages=Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES,
                                                    description="chat messages, oldest first")],
        max_new_tokens=Annotated[int, Field(ge=1, le=max_new_tokens, description="most tokens to generate")],
        temperature=Annotated[float, Field(ge=0.0, le=2.0, description="0: greedy; > 0: sampling")],
        top_p=Annotated[float, Field(gt=0.0, le=1.0, description="nucleus sampling mass (sampling only)")],
        stops=Annotated[list[stop], Field(max_length=MAX_STOPS, description="strings that end the reply (cut before)")],
        stop=stop,
        default_max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, max_new_tokens),
    )


def prompt_of(prompt: str | None, messages: list | None, max_chars: int) -> tuple[str | list[dict], str]:
    """The prompt to generate for (a str, or chat messages as dicts) and the text to log.

    Raises:
        ValueError: both or neither of ``prompt`` and ``messages``; a prompt with no
            non-space character; messages without a non-empty user message; more than
            ``max_chars`` characters in all messages (the message says which).
    """
    if (prompt is None) == (messages is None):
        raise ValueError("send exactly one of `prompt` (a string) and `messages` (a list of {role, content})")
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("`prompt` is empty or only whitespace")
        return prompt, prompt
    chat = [{"role": m.role, "content": m.content} for m in messages]
    total = sum(len(m["content"]) for m in chat)
    if total > max_chars:
        raise ValueError(f"`messages` hold {total} characters in all; the limit is {max_chars}")
    text = logged_text(chat)
    if not text.strip():
        raise ValueError("`messages` need a user message whose content is not empty: the last one is what is answered")
    return chat, text


def params_of(prompt: str | list[dict], text: str, max_new_tokens: int, temperature: float | None, top_p: float | None,
              stop: str | list[str] | None) -> GenerationParams:
    """The engine's :class:`GenerationParams` (None: the defaults, greedy; a single stop string is one stop)."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return GenerationParams(prompt, text, int(max_new_tokens), float(temperature or 0.0),
                            1.0 if top_p is None else float(top_p), stops)


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(done: Finished) -> dict[str, int]:
    """OpenAI's ``usage`` object of a reply."""
    g = done.record.generation
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


class NativeFormat:
    """``/generate``: ``{text, finish_reason, prompt_tokens, completion_tokens, model_tag, request_id}``;
    streamed as ``{"text": piece}`` events, then ``{finish_reason, prompt_tokens, completion_tokens,
    model_tag, request_id}``, then ``[DONE]``."""

    def answer(self, done: Finished) -> dict[str, Any]:
        """The plain JSON answer."""
        return {"text": done.record.generation.reply, **self._final(done)}

    def piece(self, event: Piece) -> Iterable[dict]:
        """The events of one piece."""
        return ({"text": event.text},)

    def final(self, done: Finished) -> Iterable[dict]:
        """The events after the last piece (before ``[DONE]``)."""
        return (self._final(done),)

    def error(self, message: str) -> dict:
        """The event of an error after the stream started."""
        return {"error": message}

    @staticmethod
    def _final(done: Finished) -> dict[str, Any]:
        g = done.record.generation
        return {"finish_reason": g.finish_reason, "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens, "model_tag": done.record.model_tag,
                "request_id": done.record.request_id}


class OpenAIFormat:
    """``/v1/chat/completions``: OpenAI's ``chat.completion`` object, or ``chat.completion.chunk``
    events (a first chunk with the assistant role, one per piece, a last one with the
    ``finish_reason`` and ``usage``). ``id`` is the generation's request id, the key of
    ``/feedback``; ``model`` is the tag of the model that answered.

    Args:
        request_id: the generation's id.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.created = int(time.time())
        self._started = False

    def answer(self, done: Finished) -> dict[str, Any]:
        """The plain JSON answer (``chat.completion``)."""
        g = done.record.generation
        return {"id": self.request_id, "object": "chat.completion", "created": self.created,
                "model": done.record.model_tag,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": g.reply},
                             "finish_reason": g.finish_reason, "logprobs": None}],
                "usage": usage(done)}

    def _chunk(self, model: str, delta: dict, finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": self.request_id, "object": "chat.completion.chunk", "created": self.created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

    def _role(self, model: str) -> list[dict]:
        if self._started:
            return []
        self._started = True
        return [self._chunk(model, {"role": "assistant", "content": ""})]

    def piece(self, event: Piece) -> Iterable[dict]:
        """The chunks of one piece (the role chunk first, once)."""
        return [*self._role(event.model_tag), self._chunk(event.model_tag, {"content": event.text})]

    def final(self, done: Finished) -> Iterable[dict]:
        """The last chunk: no content, the finish reason and the usage."""
        model = done.record.model_tag
        return [*self._role(model), self._chunk(model, {}, done.record.generation.finish_reason, usage=usage(done))]

    def error(self, message: str) -> dict:
        """An error event in OpenAI's shape (its clients raise it)."""
        return {"error": {"message": message, "type": "server_error", "code": None, "param": None}}


async def event_stream(first: Piece | Finished, stream: GenerationStream, fmt: NativeFormat | OpenAIFormat,
                       error_message) -> AsyncIterator[bytes]:
    """The server-sent events of one generation, from its first event on (see the module docstring).

    Args:
        first: the stream's first event, already received (errors before it got an HTTP status).
        stream: the rest of the events.
        fmt: the wire format.
        error_message: ``exception -> message`` for an error after the stream started.
    """
    event = first
    try:
        while not isinstance(event, Finished):
            for obj in fmt.piece(event):
                yield sse(obj)
            try:
                event = await stream.__anext__()
            except Exception as exc:  # noqa: BLE001 - the status is sent: the error goes into the stream
                yield sse(fmt.error(error_message(exc)))
                return
        for obj in fmt.final(event):
            yield sse(obj)
        yield DONE
    finally:
        stream.cancel()  # the client may be gone: a queued request is dropped
