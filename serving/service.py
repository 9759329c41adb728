"""The BentoML service: classifies texts with the champion model, logs every prediction and
feedback durably, and hot-swaps to a newly promoted champion without a restart.

Endpoints (POST, JSON): ``/classify`` (adaptive batching: concurrent requests share a forward
pass; bad input gets HTTP 400 from pydantic, ``detail[].loc`` / ``detail[].msg`` say what and
why), ``/feedback`` (404 unknown id, 422 unknown label), ``/admin/reload`` (bearer token).

The model served is the one the champion pointer (``<home>/champion.json``) names, not BentoML's
``:latest``. A poller thread re-reads it every ``poll_seconds``; a new champion is loaded and
smoke-tested beside the live one and only then swapped in, so no request waits for a load.
With no champion the service starts but stays unready (``/readyz`` 503, one log line) until
one is promoted: a worker that raised in ``__init__`` would be restarted by BentoML every 10 s,
forever, printing the same traceback.
"""

from __future__ import annotations

import functools
import hmac
import logging
import threading
import time
import uuid
from dataclasses import asdict
from typing import Annotated, Any

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from serving import metrics
from serving.champion import LiveModel, ModelSwapError, ReloadOutcome, load_checked
from serving.config import ENV_VARS, ServeConfig
from serving.traffic_log import PredictionRecord, TrafficLog, UnknownRequestError
from training.home import Home
from training.store import read_champion

log = logging.getLogger("bentoml.service.tuneloop")  # under "bentoml": shown by `bentoml serve`

# Input limits and batching bounds are part of the API's types and decorator arguments, which
# BentoML needs when the class is *defined*, so they are read from the environment here, at import
# (the worker imports this module after `bentoml serve` set the env); the rest is read in __init__.
_LIMITS = ServeConfig.from_env()
TOP_K = 3  # labels returned per text


class ReceivedText(str):
    """A request text stamped with ``received_at`` (``time.time()``, s) when its request was
    parsed, so the batch can log latency from arrival instead of from the forward pass."""

    received_at: float


def _check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("text is empty or only whitespace")
    text = ReceivedText(value)
    text.received_at = time.time()
    return text


Text = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=_LIMITS.max_text_chars), AfterValidator(_check_text)
]
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=_LIMITS.max_batch_texts, description="texts to classify, one prediction each"),
]
RequestId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]
LabelName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]


class TopLabel(BaseModel):
    """One of the top-3 labels of a text and its probability."""

    label: str
    probability: float  # 0..1


class TextPrediction(BaseModel):
    """The answer for one text. ``request_id`` (uuid4 hex) is the key for ``/feedback``."""

    request_id: str
    label: str
    confidence: float
    top3: list[TopLabel]
    model_tag: str


@bentoml.service(
    name="tuneloop",
    workers=1,  # the live model is per process; 2 cores are better spent on batching than on 2 copies
    traffic={"timeout": _LIMITS.request_timeout_s},
    http={"host": "127.0.0.1", "port": 3000},  # default bind for a plain `bentoml serve`: loopback
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
        self._live: LiveModel | None = None
        self._swap_lock = threading.Lock()  # guards the reference to the live model
        self._reload_lock = threading.Lock()  # one load at a time (poller vs /admin/reload)
        self._failed: tuple[tuple[str, float], str] | None = None  # (pointer, error) not to retry
        self._unready_reason = "the service is starting"
        self.refresh_model()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="tuneloop-champion-poll", daemon=True)
        self._poller.start()

    @property
    def live_model(self) -> LiveModel | None:
        """The model answering now (None until a champion loaded)."""
        with self._swap_lock:
            return self._live

    @property
    def unready_reason(self) -> str | None:
        """Why no model is serving (a message for 503 answers), or None when one is."""
        return None if self.live_model is not None else self._unready_reason

    def refresh_model(self, force: bool = False) -> ReloadOutcome:
        """Swap in the champion if the pointer names a model other than the live one.

        Args:
            force: retry a champion that already failed to load (the poller does not).

        Returns:
            What happened; the old model keeps serving whenever ``reloaded`` is False.
        """
        with self._reload_lock:
            live = self.live_model
            live_tag = live.tag if live else None
            pointer = read_champion(self.home)
            if pointer is None:
                error = f"no champion model in {self.home.root}: train and promote one (`tuneloop train --home ...`)"
                if self._unready_reason != error:
                    log.error("%s; staying unready and checking %s every %s s", error,
                              self.home.champion_path, self.config.poll_seconds)
                self._unready_reason = error
                return ReloadOutcome(False, live_tag, None, error)
            if pointer.tag == live_tag:
                return ReloadOutcome(False, live_tag, pointer.tag)
            key = (pointer.tag, pointer.promoted_at)
            if self._failed is not None and self._failed[0] == key and not force:
                return ReloadOutcome(False, live_tag, pointer.tag, self._failed[1])
            start = time.perf_counter()
            try:
                new = load_checked(self.home, pointer.tag)
            except ModelSwapError as exc:
                metrics.MODEL_SWAP_FAILURES.labels(reason=exc.reason).inc()
                log.error("champion %s NOT swapped in (%s); still serving %s", pointer.tag, exc, live_tag,
                          exc_info=exc.__cause__)
                self._failed = (key, str(exc))
                if live is None:
                    self._unready_reason = f"the champion model could not be loaded: {exc}"
                return ReloadOutcome(False, live_tag, pointer.tag, str(exc))
            seconds = time.perf_counter() - start
            if self.traffic is None:
                self.traffic = TrafficLog(self.home.traffic_db_path)
            with self._swap_lock:
                self._live = new
            self._failed = None
            metrics.MODEL_SWAPS.inc()
            metrics.MODEL_LOAD_SECONDS.set(seconds)
            if live_tag is not None:
                metrics.MODEL_LIVE.labels(tag=live_tag).set(0)
            metrics.MODEL_LIVE.labels(tag=new.tag).set(1)
            log.info("now serving %s (loaded and smoke-tested in %.2f s; was %s)", new.tag, seconds, live_tag)
            return ReloadOutcome(True, new.tag, pointer.tag)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.refresh_model()
            except Exception:  # e.g. a hand-edited champion.json; keep polling, keep serving
                log.exception("champion check failed; retrying in %s s", self.config.poll_seconds)

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        """Stop the champion poller (BentoML calls this when the worker stops)."""
        self._stop.set()
        self._poller.join(timeout=5)

    def __is_ready__(self) -> bool:
        return self.live_model is not None

    @bentoml.api(batchable=True, max_batch_size=_LIMITS.max_batch_size, max_latency_ms=_LIMITS.max_latency_ms)
    def classify(self, texts: Texts) -> list[TextPrediction]:
        """Classify texts; concurrent requests arrive here merged into one list (one forward pass).

        Args:
            texts: n texts (each 1..max_text_chars characters, not only whitespace).

        Returns:
            n predictions in input order: label, confidence (top-1 probability), top-3
            ``{label, probability}``, the answering model's tag and a new request id. All n are
            logged in one committed transaction before this returns.

        Raises:
            ServiceUnavailable: no model is loaded yet (HTTP 503).
        """
        started = time.time()
        live = self.live_model
        if live is None:
            raise ServiceUnavailable(self._unready_reason)  # normally answered by metrics.ModelReadyGuard
        labels = live.classifier.labels
        proba = live.classifier.predict_proba([str(t) for t in texts])  # (n, n_labels)
        answered = time.time()
        predictions, records = [], []
        for text, row in zip(texts, proba):
            top = [(labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:TOP_K]]
            record = PredictionRecord(
                request_id=uuid.uuid4().hex, created_at=answered, text=str(text), label=top[0][0],
                confidence=top[0][1], top3=top, model_tag=live.tag,
                latency_ms=(answered - getattr(text, "received_at", started)) * 1000.0,
            )
            records.append(record)
            predictions.append(TextPrediction(
                request_id=record.request_id, label=record.label, confidence=record.confidence,
                top3=[TopLabel(label=lab, probability=p) for lab, p in top], model_tag=live.tag,
            ))
        self.traffic.log_predictions(records)  # acknowledged => logged
        metrics.BATCH_SIZE.observe(len(records))
        for record in records:
            metrics.PREDICTIONS.labels(label=record.label).inc()
            metrics.CONFIDENCE.observe(record.confidence)
        return predictions

    @bentoml.api
    async def feedback(self, request_id: RequestId, label: LabelName, ctx: bentoml.Context) -> dict[str, Any]:
        """Record the true label of an answered text. 404: unknown id; 422: label unknown to the live model."""
        live = self.live_model
        if live is None:
            raise ServiceUnavailable(self._unready_reason)
        if label not in live.classifier.labels:
            ctx.response.status_code = 422
            return {"error": f"label {label!r} is not one of the {len(live.classifier.labels)} labels of the live "
                             f"model {live.tag}; see `labels`", "labels": live.classifier.labels}
        try:
            await anyio.to_thread.run_sync(self.traffic.add_feedback, request_id, label)
        except UnknownRequestError:
            ctx.response.status_code = 404
            return {"error": f"unknown request_id {request_id!r}: no logged prediction has it; "
                             "send a request_id returned by /classify"}
        metrics.FEEDBACK.inc()
        return {"request_id": request_id, "label": label, "recorded": True}

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
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


# First added = outermost: the metrics middleware also counts the guard's 503s.
TuneloopService.add_asgi_middleware(metrics.RequestMetricsMiddleware)
TuneloopService.add_asgi_middleware(metrics.ModelReadyGuard)
