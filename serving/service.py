"""The BentoML service: classifies texts with the champion model, logs every prediction durably,
and hot-swaps to a newly promoted champion without a restart.

Endpoints (POST, JSON): ``/classify`` (bad input gets HTTP 400 from pydantic, ``detail[].loc`` /
``detail[].msg`` say what and why), ``/feedback`` (404 unknown id, 422 unknown label),
``/admin/reload`` (bearer token). GET ``/healthz`` (alive), ``/readyz`` (a model is loaded and
warmed up), ``/metrics``.

A request's path: :mod:`tuneloop.serving.middleware` gives it a request id and bounds its body; pydantic
checks the texts on the event loop; :mod:`tuneloop.serving.batcher` merges it with concurrent requests
into one batch on the inference thread (tokenisation + length-grouped forward passes,
:mod:`tuneloop.serving.inference`); its predictions are handed to the group-commit log writer
(:mod:`tuneloop.serving.log_writer`) and the answer is sent once they are committed (acknowledged =>
logged), while the inference thread already runs the next batch.

The model served is the one the champion pointer (``<home>/champion.json``) names, not BentoML's
``:latest`` (:class:`tuneloop.serving.champion.ChampionHolder`). With no champion the service starts but
stays unready (``/readyz`` 503, one log line) until one is promoted: a worker that raised in
``__init__`` would be restarted by BentoML every 10 s, forever, printing the same traceback.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from concurrent.futures import Future
from dataclasses import asdict
from typing import Annotated, Any

import anyio.to_thread
import bentoml
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from starlette.responses import JSONResponse, Response

from tuneloop.serving import metrics
from tuneloop.serving.batcher import BatchInfo, MicroBatcher, QueueFullError, QueueTimeoutError
from tuneloop.serving.champion import ChampionHolder, LiveModel
from tuneloop.serving.config import ENV_VARS, RETRY_AFTER_OVERLOADED_S, ServeConfig
from tuneloop.serving.log_writer import GroupCommitWriter, LogWriteError
from tuneloop.serving.middleware import (
    SCOPE_RECEIVED_AT,
    SCOPE_REQUEST_ID,
    ModelReadyGuard,
    RequestContextMiddleware,
    new_id,
)
from tuneloop.serving.openapi import OpenAPIMiddleware
from tuneloop.serving.tasks import PendingText, serving_task
from tuneloop.state.home import Home
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog, UnknownRequestError

# Input limits, the request timeout and the metrics switch are part of the API's types and of the
# service and middleware configuration, which BentoML needs when the class is *defined*, so they
# are read from the environment here, at import (the worker imports this module after `bentoml
# serve` set the env); the rest is read in __init__.
_LIMITS = ServeConfig.from_env()
API_ROUTES = ("/classify", "/feedback", "/admin/reload")
BENTOML_SKIPPED_PATHS = ["/metrics", "/healthz", "/livez", "/readyz"]  # BentoML's own default skip_paths


def _check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("text is empty or only whitespace")
    return value


Text = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=_LIMITS.max_text_chars), AfterValidator(_check_text),
    Field(json_schema_extra={"pattern": r"\S"}),  # documents _check_text: at least one non-space character
]
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=_LIMITS.max_batch_texts, description="texts to classify, one prediction each"),
]
RequestId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]
LabelName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
# Every answer is JSON. Saying so in the return annotations (BentoML's public `ContentType`
# validator) keeps BentoML 1.4 from finding the media type of a list/dict answer by generating its
# JSON schema on every response (0.4-1 ms of CPU per /feedback or /admin/reload answer, measured
# with bentoml 1.4.39 and 1.4.40). /classify returns a ready Response, which BentoML sends as is.
JSON = ContentType("application/json")


class TopLabel(BaseModel):
    """One of the top-3 labels of a text and its probability."""

    label: str
    probability: float  # 0..1


class TextPrediction(BaseModel):
    """The answer for one text. ``request_id`` (32 random hex digits) is the key for ``/feedback``."""

    request_id: str
    label: str
    confidence: float
    top3: list[TopLabel]
    model_tag: str


def _error(ctx: bentoml.Context, status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    """An error answer from inside an API (BentoML copies ``ctx.response.status_code`` onto it)."""
    ctx.response.status_code = status
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@bentoml.service(
    name="tuneloop",
    workers=1,  # the live model is per process; 2 cores are better spent on batching than on 2 copies
    traffic={"timeout": _LIMITS.request_timeout_s},
    http={"host": "127.0.0.1", "port": 3000},  # default bind for a plain `bentoml serve`: loopback
    metrics={"enabled": _LIMITS.metrics, "duration": {"buckets": list(metrics.LATENCY_BUCKETS_S)}},
    # /classify is left out of BentoML's access log and request metrics (its skip_paths serve
    # both): its per-request record is the traffic-log row (with X-Request-ID and latency) and its
    # metrics are the tuneloop_request_* ones; that saves ~0.18 ms of CPU per request (measured).
    logging={"access": {"enabled": _LIMITS.access_log, "skip_paths": [*BENTOML_SKIPPED_PATHS, "/classify"]}},
    # BentoML wraps every request in OpenTelemetry spans even with no exporter configured: ~0.5 ms
    # of CPU per request (measured), a third of the service's per-request overhead.
    tracing={"excluded_urls": None if _LIMITS.trace_requests else ",".join(API_ROUTES)},
)
class TuneloopService:
    """Serves the champion model of the home named by ``$TUNELOOP_HOME`` (see module docstring)."""

    def __init__(self) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        self.config = ServeConfig.from_env()
        self.home = Home(self.config.home)
        torch.set_num_threads(self.config.torch_threads)
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per swap in the server log
        self.traffic: TrafficLog | None = None  # opened with the first model: no files in a wrong home
        self._writer: GroupCommitWriter | None = None
        self._batcher = MicroBatcher(
            self._run_batch, max_batch_size=self.config.max_batch_size,
            window_s=self.config.batch_window_ms / 1000, max_queue_texts=self.config.max_queue_texts,
            max_wait_s=self.config.max_latency_ms / 1000, workers=self.config.inference_workers,
        )
        self.models = ChampionHolder(self.home, self.config.quantize, self.config.poll_seconds)
        self.refresh_model()
        self.models.start_polling()

    @property
    def live_model(self) -> LiveModel | None:
        """The model answering now (None until a champion loaded)."""
        return self.models.live

    @property
    def unready_reason(self) -> str | None:
        """Why no model is serving (a message for 503 answers), or None when one is."""
        return None if self.models.live is not None else self.models.unready_reason

    def refresh_model(self, force: bool = False):
        """Swap in the champion if the pointer moved (see :meth:`ChampionHolder.refresh`)."""
        outcome = self.models.refresh(force)
        if self.models.live is not None and self.traffic is None and self.config.traffic_log:
            self.traffic = TrafficLog(self.home.traffic_db_path, synchronous=self.config.log_sync)
            self._writer = GroupCommitWriter(self.traffic.log_predictions, self._log_committed, self._log_failed)
        return outcome

    def _log_committed(self, rows: int, seconds: float) -> None:
        if self.config.metrics:
            metrics.LOG_WRITE_SECONDS.observe(seconds)
            metrics.LOG_WRITE_ROWS.observe(rows)

    def _log_failed(self, _exc: BaseException) -> None:
        metrics.LOG_WRITE_FAILURES.inc()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the poller, the batcher and (after its last commit) the log writer."""
        self.models.stop()
        self._batcher.close()
        if self._writer is not None:
            self._writer.close()

    def __is_ready__(self) -> bool:
        return self.models.live is not None

    def __is_alive__(self) -> bool:
        return self._writer is None or self._writer.is_alive()  # a dead writer can acknowledge nothing

    def _run_batch(self, items: list[PendingText], info: BatchInfo) -> tuple[list[PredictionRecord], Future | None]:
        """A worker thread's work for one batch (one model for all its texts): predict, build the
        log rows, count them, and hand them to the log writer; the answers go out once the
        returned future (the commit) completes, while this thread already takes the next batch."""
        live = self.models.live
        if live is None:
            raise QueueTimeoutError("no model is loaded")
        start = time.perf_counter()
        records = serving_task(live.task).predict(live, items, time.time())
        if self.config.metrics:
            metrics.INFERENCE_SECONDS.observe(time.perf_counter() - start)
            metrics.QUEUE_WAIT.observe(info.oldest_wait_s)
            metrics.BATCH_SIZE.observe(len(items))
            metrics.QUEUED_TEXTS.set(self._batcher.queued_texts)  # sampled once per batch
            for record in records:
                metrics.PREDICTIONS.labels(label=record.label).inc()
                metrics.CONFIDENCE.observe(record.confidence)
        return records, (self._writer.submit(records) if self._writer is not None else None)

    @bentoml.api(route="/classify")
    async def classify(self, texts: Texts, ctx: bentoml.Context) -> Annotated[list[TextPrediction], JSON]:
        """Classify texts; concurrent requests share forward passes (adaptive batching).

        Args:
            texts: n texts (each 1..max_text_chars characters, not only whitespace).

        Returns:
            n predictions in input order: label, confidence (top-1 probability), top-3
            ``{label, probability}``, the answering model's tag and a new request id. All n are
            committed to the traffic log before this returns. 503 (with ``Retry-After``) when
            the queue is full, a text waited past ``max_latency_ms`` or the log write failed.
            The JSON is written here: BentoML would validate and serialise the list once more.
        """
        scope = ctx.request.scope
        received_at, http_id = scope.get(SCOPE_RECEIVED_AT) or time.time(), scope.get(SCOPE_REQUEST_ID)
        try:
            records = await self._batcher.submit([PendingText(text, received_at, http_id, new_id()) for text in texts])
        except (QueueFullError, QueueTimeoutError) as exc:
            return _error(ctx, 503, f"the service is overloaded: {exc}; retry later", retry_after_s=RETRY_AFTER_OVERLOADED_S)
        except LogWriteError as exc:
            return _error(ctx, 503, str(exc), retry_after_s=RETRY_AFTER_OVERLOADED_S)
        return Response(json.dumps([
            {"request_id": r.request_id, "label": r.label, "confidence": r.confidence,
             "top3": [{"label": label, "probability": p} for label, p in r.top3], "model_tag": r.model_tag}
            for r in records
        ]), media_type="application/json")

    @bentoml.api
    async def feedback(
        self, request_id: RequestId, label: LabelName, ctx: bentoml.Context
    ) -> Annotated[dict[str, Any], JSON]:
        """Record the true label of an answered text. 404: unknown id; 422: label unknown to the live model."""
        live = self.models.live
        if live is None or self.traffic is None:
            return _error(ctx, 503, f"feedback is unavailable: {self.unready_reason or 'the traffic log is off'}")
        problem = serving_task(live.task).feedback_error(live, label)
        if problem is not None:
            ctx.response.status_code = 422
            return {"error": problem, "labels": live.classifier.labels}
        try:
            await anyio.to_thread.run_sync(self.traffic.add_feedback, request_id, label)
        except UnknownRequestError:
            ctx.response.status_code = 404
            return {"error": f"unknown request_id {request_id!r}: no logged prediction has it; "
                             "send a request_id returned by /classify"}
        if self.config.metrics:
            metrics.FEEDBACK.inc()
        return {"request_id": request_id, "label": label, "recorded": True}

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context) -> Annotated[dict[str, Any], JSON]:
        """Check the champion pointer now (and retry a failed one). Needs the admin bearer token."""
        token = self.config.admin_token
        if token is None:
            ctx.response.status_code = 403
            return {"error": f"admin endpoints are disabled: set {ENV_VARS['admin_token']} (or pass "
                             "`tuneloop serve --admin-token`) when starting the service to enable them"}
        scheme, _, given = ctx.request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()
        ):
            ctx.response.status_code = 401
            ctx.response.metadata["WWW-Authenticate"] = 'Bearer realm="tuneloop-admin"'
            return {"error": f"missing or wrong admin token: send 'Authorization: Bearer <{ENV_VARS['admin_token']}>'"}
        outcome = await anyio.to_thread.run_sync(functools.partial(self.refresh_model, force=True))
        return asdict(outcome)


# First added = outermost: the metrics middleware also counts the others' 400/413/415/503 answers.
TuneloopService.add_asgi_middleware(OpenAPIMiddleware)
if _LIMITS.metrics:
    TuneloopService.add_asgi_middleware(metrics.RequestMetricsMiddleware)
TuneloopService.add_asgi_middleware(RequestContextMiddleware, max_body_bytes=_LIMITS.max_body_bytes)
TuneloopService.add_asgi_middleware(ModelReadyGuard)
