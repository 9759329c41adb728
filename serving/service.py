"""The BentoML service: classifies texts or generates replies with the champion model (whichever
task it was trained for), logs every prediction durably, and hot-swaps to a newly promoted
champion without a restart.

Endpoints (POST, JSON): ``/classify`` (bad input gets HTTP 400 from pydantic, ``detail[].loc`` /
``detail[].msg`` say what and why), ``/generate`` and ``/v1/chat/completions`` (OpenAI's format;
both stream server-sent events on request, see :mod:`tuneloop.serving.gen_api`), ``/feedback``
(a label, or a corrected reply and/or a rating; a reviewer's bearer token when reviewer tokens are
configured, :mod:`tuneloop.serving.reviewers`; 404 unknown id, 422 feedback the model cannot take),
``/admin/reload`` (bearer token). An endpoint of the other task answers 409. GET
``/healthz`` (alive), ``/readyz`` (a model is loaded and warmed up), ``/metrics``, ``/v1/models``.

A request's path: :mod:`tuneloop.serving.middleware` gives it a request id and bounds its body; pydantic
checks the texts on the event loop; :mod:`tuneloop.serving.batcher` merges it with concurrent requests
into one batch on the inference thread (tokenisation + length-grouped forward passes,
:mod:`tuneloop.serving.inference`); its predictions are handed to the group-commit log writer
(:mod:`tuneloop.serving.log_writer`) and the answer is sent once they are committed (acknowledged =>
logged), while the inference thread already runs the next batch. Generation requests take the
same path through :mod:`tuneloop.serving.gen_batcher` (one ``generate`` call per batch, replies
streamed piece by piece; a stream's last event is sent once its row is committed).

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Annotated, Any, Literal

import anyio.to_thread
import bentoml
from bentoml.validators import ContentType
from pydantic import AfterValidator, BaseModel, Field, StringConstraints
from starlette.responses import JSONResponse, Response

from tuneloop.serving import gen_api, metrics, multiproc
from tuneloop.serving.answers import error, serve_generation
from tuneloop.serving.batcher import BatchInfo, MicroBatcher, QueueFullError, QueueTimeoutError
from tuneloop.serving.champion import ChampionHolder, LiveModel
from tuneloop.serving.config import ENV_VARS, RETRY_AFTER_OVERLOADED_S, ServeConfig
from tuneloop.serving.gen_batcher import GenBatchReport, GenerationEngine
from tuneloop.serving.log_writer import GroupCommitWriter, LogWriteError
from tuneloop.serving.middleware import (
    SCOPE_RECEIVED_AT,
    SCOPE_REQUEST_ID,
    ModelReadyGuard,
    OpenAIErrorMiddleware,
    OpenAIModelsMiddleware,
    RequestContextMiddleware,
    new_id,
)
from tuneloop.serving.openapi import OpenAPIMiddleware
from tuneloop.serving.origin import Origin
from tuneloop.serving.reviewers import CHALLENGE, check_bind, feedback_access, reviewers_of
from tuneloop.serving.tasks import PendingText, WrongTaskError, serving_task, wrong_task_message
from tuneloop.state.home import Home
from tuneloop.state.registry import read_champion
from tuneloop.state.traffic_store import RATINGS, PredictionRecord, TrafficLog, UnknownRequestError

# Input limits, the request timeout and the metrics switch are part of the API's types and of the
# service and middleware configuration, which BentoML needs when the class is *defined*, so they
# are read from the environment here, at import (the worker imports this module after `bentoml
# serve` set the env); the rest is read in __init__.
_LIMITS = ServeConfig.from_env()
API_ROUTES = ("/classify", "/feedback", "/admin/reload", "/generate", "/v1/chat/completions")
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
Reply = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=_LIMITS.gen_max_chars),
                  AfterValidator(_check_text), Field(json_schema_extra={"pattern": r"\S"})]
Rating = Literal["good", "bad"]
_GEN = gen_api.build_types(_LIMITS.gen_max_chars, _LIMITS.gen_max_new_tokens)
ModelName = Annotated[str, StringConstraints(strict=True, max_length=256)]
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


@bentoml.service(
    name="tuneloop",
    # Worker processes (TUNELOOP_WORKERS, `tuneloop serve --workers`) on one port, each with its
    # own model copy, batcher, log writer and champion poller (serving/origin.py, multiproc.py).
    # 1 by default, the one-machine setting; benchmarks/serve_workers_bench.py measures 2 vs 1.
    workers=_LIMITS.workers,
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
        self.config = ServeConfig.from_env()
        # who may post /feedback; open feedback only on a loopback address (else this raises: no start)
        self.reviewers = reviewers_of(self.config)
        check_bind(self.config.bind_host, self.reviewers)
        self.home = Home(self.config.home)
        # Open the traffic store on a thread while torch and the model load (~0.5 s of a restart: the
        # engine, the driver and Alembic's revision check); only when the home has a champion, so a
        # wrong --home gets no files (the first model's refresh_model opens it otherwise).
        self._store_opening: Future | None = None
        if self.config.traffic_log and read_champion(self.home) is not None:
            opener = ThreadPoolExecutor(1, thread_name_prefix="store-open")
            self._store_opening = opener.submit(TrafficLog, Home.from_env(self.home.root).store_url,
                                                synchronous=self.config.log_sync)
            opener.shutdown(wait=False)  # the open still runs; the thread ends with it
        import torch
        from transformers.utils import logging as hf_logging

        self.origin = Origin.current(self.config.replica)  # stamped on every logged row
        multiproc.forget_dead_workers()  # a killed predecessor's live gauges leave /metrics
        torch.set_num_threads(self.config.torch_threads)
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per swap in the server log
        self.traffic: TrafficLog | None = None  # opened with the first model: no files in a wrong home
        self._writer: GroupCommitWriter | None = None
        self._batcher = MicroBatcher(
            self._run_batch, max_batch_size=self.config.max_batch_size,
            window_s=self.config.batch_window_ms / 1000, max_queue_texts=self.config.max_queue_texts,
            max_wait_s=self.config.max_latency_ms / 1000, workers=self.config.inference_workers,
        )
        self._gen = GenerationEngine(
            lambda: self.models.live, self._log_generations, max_batch_size=self.config.gen_max_batch_size,
            window_s=self.config.gen_batch_window_ms / 1000, max_queue=self.config.gen_max_queue,
            max_wait_s=self.config.max_latency_ms / 1000, on_batch=self._generation_batch_done,
        )
        self.models = ChampionHolder(self.home, self.config.quantize, self.config.poll_seconds,
                                     worker_label=self.origin.worker_label)
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
            opening, self._store_opening = self._store_opening, None
            self.traffic = (opening.result() if opening is not None else
                            TrafficLog(Home.from_env(self.home.root).store_url, synchronous=self.config.log_sync))
            self._writer = GroupCommitWriter(self.origin.stamping(self.traffic.log_predictions), self._log_committed,
                                             self._log_failed)
        return outcome

    def _log_committed(self, rows: int, seconds: float) -> None:
        if self.config.metrics:
            metrics.LOG_WRITE_SECONDS.observe(seconds)
            metrics.LOG_WRITE_ROWS.observe(rows)

    def _log_failed(self, _exc: BaseException) -> None:
        metrics.LOG_WRITE_FAILURES.inc()

    def _log_generations(self, records: list[PredictionRecord]) -> Future | None:
        """Hand generated replies to the group-commit writer (None: the traffic log is off)."""
        return self._writer.submit(records) if self._writer is not None else None

    def _generation_batch_done(self, report: GenBatchReport) -> None:
        if self.config.metrics:
            metrics.observe_generation_batch(report)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the poller, the batchers and (after its last commit) the log writer."""
        self.models.stop()
        self._batcher.close()
        self._gen.close()
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
        if live.task != "classification":  # swapped since the request was accepted
            raise WrongTaskError(wrong_task_message("/classify", live.tag, live.task))
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
        live = self.models.live
        if live is not None and live.task != "classification":
            return error(ctx, 409, wrong_task_message("/classify", live.tag, live.task))
        received_at, http_id = scope.get(SCOPE_RECEIVED_AT) or time.time(), scope.get(SCOPE_REQUEST_ID)
        try:
            records = await self._batcher.submit([PendingText(text, received_at, http_id, new_id()) for text in texts])
        except (QueueFullError, QueueTimeoutError) as exc:
            return error(ctx, 503, f"the service is overloaded: {exc}; retry later", retry_after_s=RETRY_AFTER_OVERLOADED_S)
        except LogWriteError as exc:
            return error(ctx, 503, str(exc), retry_after_s=RETRY_AFTER_OVERLOADED_S)
        except WrongTaskError as exc:
            return error(ctx, 409, str(exc))
        return Response(json.dumps([
            {"request_id": r.request_id, "label": r.label, "confidence": r.confidence,
             "top3": [{"label": label, "probability": p} for label, p in r.top3], "model_tag": r.model_tag}
            for r in records
        ]), media_type="application/json")

    @bentoml.api
    async def feedback(
        self, request_id: RequestId, ctx: bentoml.Context, label: LabelName | None = None,
        reply: Reply | None = None, rating: Rating | None = None,
    ) -> Annotated[dict[str, Any], JSON]:
        """Record a reviewer's verdict on an answered request.

        With reviewer tokens configured the request needs ``Authorization: Bearer <token>`` (401 with
        ``WWW-Authenticate`` when it is missing or wrong) and the row records the token's reviewer;
        without them the row's reviewer is null, and a request that reached the service on an address
        other than loopback is refused (403). A second feedback for one request replaces the first
        (latest wins; audited as a ``feedback_replaced`` event, see
        :mod:`tuneloop.state.feedback_writes`); the answer's ``replaced`` says whether it did.

        Args:
            request_id: the id ``/classify``, ``/generate`` or ``/v1/chat/completions`` returned.
            label: classification: the true label (one of the live model's labels).
            reply: generation: the reply the model should have given.
            rating: generation: ``"good"`` or ``"bad"``.

        Returns:
            ``{request_id, label, recorded, reviewer, replaced}`` (classification) or ``{request_id,
            reply, rating, recorded, reviewer, replaced}`` (generation). 401/403: see above; 404: the
            id is not a logged prediction (generation); 422: a label unknown to the live model, a
            label for a generation model or a reply/rating for a classifier, or neither reply nor
            rating for a generation model; 400: no label for a classifier (as before generation existed).
        """
        reviewer, refusal = self._feedback_reviewer(ctx)
        if refusal is not None:
            return refusal
        live = self.models.live
        if live is None or self.traffic is None:
            return error(ctx, 503, f"feedback is unavailable: {self.unready_reason or 'the traffic log is off'}")
        generating = live.task == "generation"
        if label is not None and (reply is not None or rating is not None):
            return error(ctx, 422, "send either `label` (classification) or `reply`/`rating` (generation), "
                                    "not both", reason="wrong_task")
        if label is None and reply is None and rating is None:
            if generating:
                return error(ctx, 422, f"the live model {live.tag} generates replies: send `reply` (the corrected "
                                        "reply) and/or `rating` ('good' or 'bad')", reason="missing_feedback")
            return error(ctx, 400, "1 validation error: `label` is required", detail=[
                {"loc": ["label"], "msg": "Field required", "type": "missing"}])
        if label is None:
            return await self._reply_feedback(ctx, live, request_id, reply, rating, reviewer)
        problem = serving_task(live.task).feedback_error(live, label)
        if problem is not None:
            return error(ctx, 422, problem, reason="wrong_task" if generating else None,
                          labels=list(getattr(live.classifier, "labels", [])))
        try:
            written = await anyio.to_thread.run_sync(self.traffic.add_feedback, request_id, label, reviewer)
        except UnknownRequestError:
            ctx.response.status_code = 404
            return {"error": f"unknown request_id {request_id!r}: no logged prediction has it; "
                             "send a request_id returned by /classify"}
        if self.config.metrics:
            metrics.FEEDBACK.inc()
        return {"request_id": request_id, "label": label, "recorded": True, "reviewer": reviewer,
                "replaced": written.replaced is not None}

    def _feedback_reviewer(self, ctx: bentoml.Context) -> tuple[str | None, JSONResponse | None]:
        """(the reviewer of a ``/feedback`` request, None) or (None, the 401/403 answer refusing it);
        see :func:`tuneloop.serving.reviewers.feedback_access`."""
        server = ctx.request.scope.get("server") or (None,)
        access = feedback_access(self.reviewers, ctx.request.headers.get("authorization"), server[0])
        if access.status is None:
            return access.reviewer, None
        answer = error(ctx, access.status, access.message, reason="feedback_closed" if access.status == 403 else None)
        if access.status == 401:
            answer.headers["WWW-Authenticate"] = CHALLENGE
        return None, answer

    async def _reply_feedback(self, ctx: bentoml.Context, live: LiveModel, request_id: str, reply: str | None,
                              rating: str | None, reviewer: str | None) -> dict[str, Any] | JSONResponse:
        """``/feedback`` with a corrected reply and/or a rating (generation)."""
        if live.task != "generation":
            return error(ctx, 422, f"the live model {live.tag} classifies texts: send `label` (one of its labels); "
                                    "`reply` and `rating` are feedback for generation models", reason="wrong_task",
                          labels=list(getattr(live.classifier, "labels", [])))
        add = functools.partial(self.traffic.add_generation_feedback, request_id, reply,
                                None if rating is None else RATINGS[rating], reviewer)
        try:
            written = await anyio.to_thread.run_sync(add)
        except UnknownRequestError:
            return error(ctx, 404, f"unknown request_id {request_id!r}: no logged generation has it; send the "
                                    "request_id (or OpenAI `id`) returned by /generate or /v1/chat/completions")
        if self.config.metrics:
            metrics.FEEDBACK.inc()
        return {"request_id": request_id, "reply": reply, "rating": rating, "recorded": True, "reviewer": reviewer,
                "replaced": written.replaced is not None}

    @bentoml.api(route="/generate")
    async def generate(
        self, ctx: bentoml.Context, prompt: _GEN.prompt | None = None, messages: _GEN.messages | None = None,
        max_new_tokens: _GEN.max_new_tokens = _GEN.default_max_new_tokens, temperature: _GEN.temperature = 0.0,
        top_p: _GEN.top_p = 1.0, stop: _GEN.stops | None = None, stream: bool = False,
    ) -> Annotated[dict[str, Any], JSON]:
        """Generate a reply; concurrent requests share ``generate`` calls (batching).

        Args:
            prompt: the request as one user message; or
            messages: chat messages ``{role: system|user|assistant, content}`` (exactly one of the two).
            max_new_tokens: most tokens to generate (1..``TUNELOOP_GEN_MAX_NEW_TOKENS``).
            temperature: 0 (greedy, the default) .. 2.
            top_p: nucleus sampling mass, 0 < top_p <= 1 (sampling only).
            stop: up to 4 strings (1..32 characters) that end the reply; it is cut before them.
            stream: answer with server-sent events (``text/event-stream``).

        Returns:
            ``{text, finish_reason, prompt_tokens, completion_tokens, model_tag, request_id}``
            (streamed: see :class:`tuneloop.serving.gen_api.NativeFormat`), once the generation
            is committed to the traffic log. 400 bad input (the message says what), 409 the
            live model is a classifier, 503 overloaded (``Retry-After``) or the log write failed.
        """
        try:
            chat, text = gen_api.prompt_of(prompt, messages, self.config.gen_max_chars)
        except ValueError as exc:
            return error(ctx, 400, str(exc))
        params = gen_api.params_of(chat, text, max_new_tokens, temperature, top_p, stop)
        return await serve_generation(ctx, self._gen, self.models.live, "/generate", params, stream, lambda _rid: gen_api.NativeFormat())

    @bentoml.api(route="/v1/chat/completions")
    async def chat_completions(
        self, ctx: bentoml.Context, messages: _GEN.messages, model: ModelName | None = None,
        max_tokens: _GEN.max_new_tokens | None = None, max_completion_tokens: _GEN.max_new_tokens | None = None,
        temperature: _GEN.temperature | None = None, top_p: _GEN.top_p | None = None,
        stop: _GEN.stop | _GEN.stops | None = None, n: Annotated[int, Field(ge=1)] | None = None,
        stream: bool | None = None,
    ) -> Annotated[dict[str, Any], JSON]:
        """OpenAI-compatible chat completions (``openai.OpenAI(base_url=<service>/v1)``).

        ``model`` is accepted and ignored: the answer's ``model`` is the tag of the champion that
        answered (see ``GET /v1/models``). ``max_completion_tokens`` wins over ``max_tokens``
        (default 128, at most ``TUNELOOP_GEN_MAX_NEW_TOKENS``); ``n`` must be 1; other OpenAI
        fields are ignored. ``id`` is the generation's request id, the key of ``/feedback``.
        Errors have the statuses of ``/generate`` and OpenAI's body ``{"error": {"message",
        "type", "param", "code"}}`` (:class:`tuneloop.serving.middleware.OpenAIErrorMiddleware`).
        """
        if n not in (None, 1):
            return error(ctx, 400, f"n={n}: this service returns one choice per request; send n=1 or leave it out")
        try:
            chat, text = gen_api.prompt_of(None, messages, self.config.gen_max_chars)
        except ValueError as exc:
            return error(ctx, 400, str(exc))
        budget = next((b for b in (max_completion_tokens, max_tokens) if b is not None), _GEN.default_max_new_tokens)
        params = gen_api.params_of(chat, text, budget, temperature, top_p, stop)
        return await serve_generation(ctx, self._gen, self.models.live, "/v1/chat/completions", params, bool(stream), gen_api.OpenAIFormat)

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context) -> Annotated[dict[str, Any], JSON]:
        """Check the champion pointer now (and retry a failed one). Needs the admin bearer token.

        With several workers (``TUNELOOP_WORKERS``) this reloads the worker that took the request;
        the others follow the pointer at their next poll (within ``TUNELOOP_POLL_SECONDS``).
        """
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
TuneloopService.add_asgi_middleware(OpenAIErrorMiddleware)
if _LIMITS.metrics:
    TuneloopService.add_asgi_middleware(metrics.RequestMetricsMiddleware)
TuneloopService.add_asgi_middleware(RequestContextMiddleware, max_body_bytes=_LIMITS.max_body_bytes)
TuneloopService.add_asgi_middleware(ModelReadyGuard)
TuneloopService.add_asgi_middleware(OpenAIModelsMiddleware)
