"""The service's OpenAPI document (``GET /docs.json``), corrected to say what the API really answers.

BentoML (1.4.39, 1.4.40) generates the document from the API signatures, but documents every API
with the same 400/404/500 error answers, and its 400 schema says ``detail`` is a string while its
own validation errors send a list. Clients generated from the document, and schemathesis checking
answers against it, need the truth: per endpoint, the statuses it can answer (400, 401, 403, 404,
413, 422, 503) with their bodies, the ``X-Request-ID`` request and response header, and 503 on
``/readyz``. :class:`OpenAPIMiddleware` serves BentoML's document with those corrections; it gets
the document the public way, from BentoML's own ``GET /docs.json`` answer.
"""

from __future__ import annotations

import json
from typing import Any

from tuneloop.serving.middleware import REQUEST_ID_PATTERN, send_json

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong and how to fix it"},
        "detail": {"description": "validation errors: a list of {loc, msg, type}", "type": "array",
                   "items": {"type": "object"}},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "422: the live model's labels"},
    },
}
_ERROR_TEXT = {
    400: "Invalid input: `detail[].loc` and `detail[].msg` say what and why",
    401: "Missing or wrong bearer token (/admin/*: the admin token; /feedback: a reviewer token, when "
         "TUNELOOP_REVIEWER_TOKENS is configured)",
    403: "/admin/*: admin endpoints are disabled (no TUNELOOP_ADMIN_TOKEN configured); /feedback: sent from "
         "another machine to a service without reviewer tokens",
    404: "Unknown request_id",
    409: "The live model serves another task (e.g. /classify while a generation model is live); the message "
         "names the endpoints that serve it",
    413: "Request body larger than TUNELOOP_MAX_BODY_BYTES",
    415: "Unsupported media type",
    422: "Feedback the live model cannot take: a label it does not know, a label for a generation model, a "
         "reply/rating for a classifier, or neither reply nor rating for a generation model",
    503: "No model loaded yet, overloaded (see Retry-After), or the traffic log write failed",
}
# The statuses each API route can answer besides 200.
ROUTE_ERRORS = {
    "/classify": (400, 409, 413, 415, 503),
    "/feedback": (400, 401, 403, 404, 413, 415, 422, 503),
    "/admin/reload": (400, 401, 403, 413, 415),
    "/generate": (400, 409, 413, 415, 503),
    "/v1/chat/completions": (400, 409, 413, 415, 503),
}
FEEDBACK_OK = {
    "type": "object", "required": ["request_id", "recorded"],
    "properties": {"request_id": {"type": "string"}, "label": {"type": "string"},
                   "reply": {"type": "string", "nullable": True},
                   "rating": {"type": "string", "enum": ["good", "bad"], "nullable": True},
                   "recorded": {"type": "boolean"},
                   "reviewer": {"type": "string", "nullable": True,
                                "description": "the reviewer of the bearer token; null without reviewer tokens"},
                   "replaced": {"type": "boolean", "description": "an earlier feedback for this request was "
                                "replaced (latest wins; audited as a feedback_replaced event)"}},
}
# /feedback carries a label (classification) or a reply and/or a rating (generation)
# (a field sent as null counts as absent)
FEEDBACK_ANY_OF = [{"required": [field], "properties": {field: {"type": "string"}}} for field in ("label", "reply", "rating")]
_INT, _STR = {"type": "integer"}, {"type": "string"}
GENERATE_OK = {
    "type": "object",
    "required": ["text", "finish_reason", "prompt_tokens", "completion_tokens", "model_tag", "request_id"],
    "properties": {"text": _STR, "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                   "prompt_tokens": _INT, "completion_tokens": _INT, "model_tag": _STR, "request_id": _STR},
}
CHAT_OK = {
    "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {"id": _STR, "object": {"type": "string", "enum": ["chat.completion"]}, "created": _INT,
                   "model": _STR, "choices": {"type": "array", "items": {"type": "object"}},
                   "usage": {"type": "object", "properties": {"prompt_tokens": _INT, "completion_tokens": _INT,
                                                              "total_tokens": _INT}}},
}
SSE = {"text/event-stream": {"schema": {"type": "string", "description": "with `stream: true`: `data: <json>` "
                                                                         "events, the last one `data: [DONE]`"}}}
OPENAI_ERROR_SCHEMA = {  # /v1/ errors (tuneloop.serving.middleware.OpenAIErrorMiddleware)
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": _STR, "type": _STR, "param": {"type": "string", "nullable": True},
        "code": {"type": "string", "nullable": True}}}},
}
MODELS_OK = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"type": "string", "enum": ["list"]},
                   "data": {"type": "array", "items": {"type": "object", "properties": {
                       "id": _STR, "object": _STR, "created": _INT, "owned_by": _STR}}}},
}
RELOAD_OK = {
    "type": "object", "required": ["reloaded", "model_tag", "champion_tag", "error"],
    "properties": {"reloaded": {"type": "boolean"}, "model_tag": {"type": "string", "nullable": True},
                   "champion_tag": {"type": "string", "nullable": True},
                   "error": {"type": "string", "nullable": True}},
}
REQUEST_ID_PARAM = {
    "name": "X-Request-ID", "in": "header", "required": False,
    "description": "Your id for this request (returned in the X-Request-ID answer header and logged with "
                   "its predictions); a new one is made when absent.",
    "schema": {"type": "string", "pattern": f"^{REQUEST_ID_PATTERN.pattern}$"},
}
REQUEST_ID_HEADER = {"X-Request-ID": {"description": "The request's id (yours, or a new 32-hex-digit id)",
                                      "schema": {"type": "string"}}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def corrected_spec(bentoml_spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI dict with the per-route error answers and headers of this service.

    Args:
        bentoml_spec: BentoML's own OpenAPI document, as its ``GET /docs.json`` answers it (status
            codes may also be int keys).

    Returns:
        A new JSON-ready dict (string keys throughout); the argument is not modified.
    """
    spec = json.loads(json.dumps(bentoml_spec))  # a deep copy with the status codes as strings, as served
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error_ref = {"$ref": "#/components/schemas/Error"}
    for route, statuses in ROUTE_ERRORS.items():
        if route not in spec["paths"]:
            continue
        operation = spec["paths"][route]["post"]
        responses = {"200": operation["responses"]["200"]}
        for status in statuses:
            responses[str(status)] = {"description": _ERROR_TEXT[status], "content": _json(error_ref),
                                      "headers": REQUEST_ID_HEADER}
        responses["200"]["headers"] = REQUEST_ID_HEADER
        operation["responses"] = responses
        operation["parameters"] = [REQUEST_ID_PARAM]
        if spec["components"]["schemas"].get(f"{operation['x-bentoml-name']}__Input", {}).get("required"):
            operation["requestBody"]["required"] = True  # an empty body is `{}`, which lacks the fields
    spec["paths"]["/feedback"]["post"]["responses"]["200"]["content"] = _json(FEEDBACK_OK)
    feedback_body = spec["paths"]["/feedback"]["post"].get("requestBody", {}).get("content", {}).get("application/json", {})
    for schema in (spec["components"]["schemas"].get("feedback__Input"), feedback_body.get("schema")):
        if schema is not None and "$ref" not in schema:
            schema["anyOf"] = FEEDBACK_ANY_OF
    for route, schema in (("/generate", GENERATE_OK), ("/v1/chat/completions", CHAT_OK)):
        if route in spec["paths"]:
            spec["paths"][route]["post"]["responses"]["200"]["content"] = {**_json(schema), **SSE}
    spec["components"]["schemas"]["OpenAIError"] = OPENAI_ERROR_SCHEMA
    for status, answer in spec["paths"].get("/v1/chat/completions", {}).get("post", {}).get("responses", {}).items():
        if status != "200":
            answer["content"] = _json({"$ref": "#/components/schemas/OpenAIError"})
    spec["paths"]["/v1/models"] = {"get": {
        "summary": "The live generation model (OpenAI's model list; empty while a classifier is live)",
        "responses": {"200": {"description": "Successful Response", "content": _json(MODELS_OK)}}}}
    spec["paths"]["/admin/reload"]["post"]["responses"]["200"]["content"] = _json(RELOAD_OK)
    spec["paths"]["/admin/reload"]["post"]["security"] = [{"adminBearer": []}]
    spec["components"]["securitySchemes"] = {"adminBearer": {"type": "http", "scheme": "bearer"}}
    spec["paths"]["/readyz"]["get"]["responses"]["503"] = {"description": "No model loaded (and warmed up) yet"}
    return spec


class OpenAPIMiddleware:
    """Serves :func:`corrected_spec` of BentoML's own ``GET /docs.json`` answer at that path.

    The first request goes on to BentoML (the inner app), whose answer is captured instead of sent;
    the corrected document is computed once and served from then on. Should BentoML not answer it
    with a 200 (its experimental ``new_index`` UI does not serve ``/docs.json``), its answer is
    passed on unchanged.
    """

    PATH = "/docs.json"

    def __init__(self, app) -> None:
        self.app = app
        self._body: dict | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") == self.PATH and scope.get("method") == "GET":
            if self._body is None:
                messages = await _captured_answer(self.app, scope, receive)
                start = next(m for m in messages if m["type"] == "http.response.start")
                if start["status"] != 200:
                    for message in messages:
                        await send(message)
                    return
                body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
                self._body = corrected_spec(json.loads(body))
            await send_json(send, 200, self._body)
            return
        await self.app(scope, receive, send)


async def _captured_answer(app, scope, receive) -> list[dict]:
    """The ASGI messages ``app`` sends to answer the request, collected instead of sent."""
    messages: list[dict] = []

    async def capture(message) -> None:
        messages.append(message)

    await app(scope, receive, capture)
    return messages
