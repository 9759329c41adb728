"""Answers the API methods build themselves: errors with a message (and the metrics reason when
the status alone does not say it), and the answer to one generation request, plain or streamed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from tuneloop.serving import gen_api, metrics
from tuneloop.serving.batcher import QueueFullError, QueueTimeoutError
from tuneloop.serving.config import RETRY_AFTER_OVERLOADED_S
from tuneloop.serving.gen_batcher import Finished, GenerationEngine, GenerationParams, PromptError
from tuneloop.serving.log_writer import LogWriteError
from tuneloop.serving.middleware import SCOPE_RECEIVED_AT, SCOPE_REQUEST_ID, new_id
from tuneloop.serving.tasks import WrongTaskError, wrong_task_message
from tuneloop.training.generator import PromptTooLongError


def error(ctx: Any, status: int, message: str, retry_after_s: int | None = None, reason: str | None = None,
          **extra: Any) -> JSONResponse:
    """An error answer ``{"error": message, **extra}`` from inside an API (BentoML copies
    ``ctx.response.status_code`` onto it). ``reason`` names the error for
    ``tuneloop_request_errors_total`` when the status alone does not (:data:`metrics.SCOPE_REASONS`)."""
    ctx.response.status_code = status
    if reason is not None:
        ctx.request.scope[metrics.SCOPE_ERROR_REASON] = reason
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def generation_error(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message of an error raised by a generation stream: 400 a prompt the
    model refuses, 409 the model serves another task, 503 overloaded or the log write failed,
    500 anything else."""
    if isinstance(exc, (PromptTooLongError, PromptError)):
        return 400, str(exc)
    if isinstance(exc, WrongTaskError):
        return 409, str(exc)
    if isinstance(exc, (QueueFullError, QueueTimeoutError)):
        return 503, f"the service is overloaded: {exc}; retry later"
    if isinstance(exc, LogWriteError):
        return 503, str(exc)
    return 500, f"the generation failed ({type(exc).__name__}); see the server log"


async def serve_generation(ctx: Any, engine: GenerationEngine, live: Any, endpoint: str, params: GenerationParams,
                           stream: bool, make_format: Callable[[str], Any]) -> Response:
    """Queue one generation and answer it.

    Args:
        ctx: the API's ``bentoml.Context``.
        engine: the generation engine.
        live: the live model when the request arrived (409 when it is not a generation model).
        endpoint: the route, for messages.
        params: what to generate.
        stream: answer with server-sent events instead of one JSON object.
        make_format: ``request_id -> wire format`` (:mod:`tuneloop.serving.gen_api`).

    Returns:
        The JSON answer once the generation is committed to the traffic log; or a
        ``text/event-stream`` response, started at the first piece, whose last events follow
        the commit. Errors before the first piece get their own status (:func:`generation_error`).
    """
    if live is not None and live.task != "generation":
        return error(ctx, 409, wrong_task_message(endpoint, live.tag, live.task))
    scope = ctx.request.scope
    try:
        handle = engine.submit(params, new_id(), scope.get(SCOPE_RECEIVED_AT) or time.time(), scope.get(SCOPE_REQUEST_ID))
    except QueueFullError as exc:
        return error(ctx, 503, f"the service is overloaded: {exc}; retry later", retry_after_s=RETRY_AFTER_OVERLOADED_S)
    fmt = make_format(handle.request_id)
    try:
        first = await handle.__anext__()  # errors before the first piece still get their HTTP status
        if not stream and not isinstance(first, Finished):
            first = await handle.result()
    except BaseException as exc:  # each known error has its status; the rest is a 500
        handle.cancel()  # e.g. the client went away while it was queued: it need not be computed
        if not isinstance(exc, Exception):
            raise
        status, message = generation_error(exc)
        return error(ctx, status, message, retry_after_s=RETRY_AFTER_OVERLOADED_S if status == 503 else None)
    if not stream:
        return Response(json.dumps(fmt.answer(first)), media_type="application/json")
    return StreamingResponse(gen_api.event_stream(first, handle, fmt, lambda exc: generation_error(exc)[1]),
                             media_type="text/event-stream", headers=gen_api.SSE_HEADERS)
