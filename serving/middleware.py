"""The service's own ASGI middlewares: request ids and body limits on every request, and a 503
with the reason while no model is loaded.

They run inside BentoML's stack (after its timeout and concurrency middlewares, before its
request context), so they see every request to the API routes and share the ASGI ``scope`` with
the API methods, which read the request id and arrival time from it (``SCOPE_*`` keys).
"""

from __future__ import annotations

import json
import os
import re
import time

from tuneloop.serving.config import RETRY_AFTER_NO_MODEL_S

REQUEST_ID_HEADER = "x-request-id"
# Accepted client request ids: printable, no spaces or quotes (they go into logs and the DB).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# POST bodies are JSON; no Content-Type means JSON too (BentoML's default). Anything else would
# reach BentoML's multipart or pickle decoders, which these APIs do not use.
JSON_MEDIA_TYPES = frozenset({"", "application/json"})
SCOPE_REQUEST_ID = "tuneloop.request_id"
SCOPE_RECEIVED_AT = "tuneloop.received_at"  # time.time() when the request reached the middleware


class IdSource:
    """Unguessable 128-bit ids as 32 hex characters (the shape of ``uuid4().hex``), cheaply.

    Prediction ids are the key of ``/feedback``, so they must not be guessable (someone could
    label other people's predictions and poison retraining): they come from ``os.urandom``. One
    ``urandom`` call per id cost ~50 us on the shared 2-core machine (cProfile), two per request,
    so random bytes are read 4 KiB (256 ids) at a time. Not thread-safe: call from the event loop.
    """

    CHUNK_BYTES = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def __call__(self) -> str:
        if self._pos + 16 > len(self._buffer):
            self._buffer, self._pos = os.urandom(self.CHUNK_BYTES), 0
        self._pos += 16
        return self._buffer[self._pos - 16 : self._pos].hex()


new_id = IdSource()  # the event loop's id source (one per process, like `random`'s global instance)


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Send a complete JSON response through an ASGI ``send``."""
    payload = json.dumps(body).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": payload})


class RequestContextMiddleware:
    """Request ids, arrival time and the request body limit.

    * ``X-Request-ID``: taken from the request when it matches ``REQUEST_ID_PATTERN`` (HTTP 400
      when it does not), otherwise a new random 32-hex-digit id; returned in the response's ``X-Request-ID``
      header and logged with every prediction of the request.
    * A POST must carry JSON (``Content-Type: application/json`` or none): HTTP 415 otherwise.
    * The body of a POST is read here, up to ``max_body_bytes``: a larger one (by its
      ``Content-Length`` or by what arrives) gets HTTP 413 before any parsing. The body read is
      replayed to the application unchanged.

    Args:
        app: the ASGI application.
        max_body_bytes: the largest accepted request body.
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[SCOPE_RECEIVED_AT] = time.time()
        given = next((v for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER.encode()), None)
        request_id = given.decode("latin-1") if given is not None else new_id()
        id_header = [(REQUEST_ID_HEADER.encode(), request_id.encode("latin-1"))]
        if given is not None and not REQUEST_ID_PATTERN.fullmatch(request_id):
            await send_json(send, 400, {"error": "invalid X-Request-ID header: use 1-128 characters from "
                                                 "A-Z a-z 0-9 . _ : / + = @ -, or leave it out"})
            return
        scope[SCOPE_REQUEST_ID] = request_id

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *id_header]}
            await send(message)

        if scope.get("method") == "POST":
            media_type = _header(scope, b"content-type").split(";")[0].strip().lower()
            if media_type not in JSON_MEDIA_TYPES:
                await send_json(send, 415, {"error": f"unsupported Content-Type {media_type!r}: send the body as "
                                                     "JSON with 'Content-Type: application/json'"}, id_header)
                return
            body = await self._read_body(scope, receive)
            if body is None:
                await send_json(send, 413, {"error": f"request body larger than {self.max_body_bytes} bytes; "
                                                     "send fewer or shorter texts per request"}, id_header)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_id)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is larger than the limit."""
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _header(scope, name: bytes) -> str:
    """A request header's value ("" when absent)."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), "")


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that yields ``body`` once, then defers to the original (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ModelReadyGuard:
    """Answers 503 with the reason on the model endpoints while no model is loaded
    (BentoML turns a 503 raised inside an API into a generic message)."""

    GUARDED = frozenset({"/classify", "/feedback", "/generate", "/v1/chat/completions"})

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") in self.GUARDED:
            reason = getattr(_current_service(), "unready_reason", None)
            if reason is not None:
                await send_json(send, 503, {"error": f"no model is serving yet: {reason}"}, [(b"retry-after", str(RETRY_AFTER_NO_MODEL_S).encode())])
                return
        await self.app(scope, receive, send)


def _current_service():
    """The service instance BentoML built for this worker.

    ``bentoml.get_current_service`` is public API: exported in ``bentoml.__all__`` (checked in
    bentoml 1.4.40), unlike the ``_bentoml_sdk`` module that implements it.
    """
    import bentoml

    return bentoml.get_current_service()


class OpenAIModelsMiddleware:
    """``GET /v1/models`` (OpenAI's model list, which BentoML's POST-only APIs cannot serve): the
    live generation model as ``{"object": "list", "data": [{"id": <tag>, "object": "model",
    "created": <load time, Unix s>, "owned_by": "tuneloop"}]}``; an empty list while no
    generation model is live. Other requests pass through."""

    PATH = "/v1/models"

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") == self.PATH and scope.get("method") in ("GET", "HEAD"):
            live = getattr(_current_service(), "live_model", None)
            data = [] if live is None or live.task != "generation" else [
                {"id": live.tag, "object": "model", "created": int(live.loaded_at), "owned_by": "tuneloop"}]
            await send_json(send, 200, {"object": "list", "data": data})
            return
        await self.app(scope, receive, send)


class OpenAIErrorMiddleware:
    """Error answers under ``/v1/`` in OpenAI's shape, which OpenAI clients read the message from:
    ``{"error": {"message", "type", "param", "code"}}`` (``type``: ``invalid_request_error`` for a
    4xx, ``server_error`` for a 5xx; a validation error's ``detail`` is folded into the message,
    its first field is ``param``). The status and other headers are kept; success passes through."""

    PREFIX = "/v1/"

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return
        held: dict | None = None  # the start of an error answer, until its body is complete
        chunks: list[bytes] = []

        async def rewrite_errors(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            payload = json.dumps(openai_error(held["status"], b"".join(chunks))).encode()
            headers = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            await send({**held, "headers": [*headers, (b"content-type", b"application/json"),
                                            (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})

        await self.app(scope, receive, rewrite_errors)


def openai_error(status: int, body: bytes) -> dict:
    """OpenAI's error object for one of this service's error bodies (``{"error": str, "detail"?: [...]}``)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")}
    error = answer.get("error") if isinstance(answer, dict) else answer
    if isinstance(error, dict):
        return answer  # already OpenAI's shape
    message, param = str(error), None
    details = answer.get("detail") if isinstance(answer, dict) else None
    if isinstance(details, list) and details:
        fields = [(".".join(str(part) for part in d.get("loc", ())), d.get("msg", "")) for d in details if isinstance(d, dict)]
        message = "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in fields) or message
        param = fields[0][0] if fields and fields[0][0] else None
    return {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                      "param": param, "code": None}}
