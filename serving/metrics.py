"""Prometheus metrics of the serving process (all prefixed ``tuneloop_``, named after
Prometheus conventions: base units, ``_seconds``, counters ``_total``, bounded label values) and
the ASGI middleware that counts requests, errors, in-flight requests and latency per endpoint.

Under ``bentoml serve`` every worker writes its values to ``$PROMETHEUS_MULTIPROC_DIR`` and
BentoML's ``/metrics`` (answered by any worker) merges them with ``MultiProcessCollector``:
counters and histograms are summed over the replica's workers. Every gauge names how it merges
(``multiprocess_mode``; see :mod:`tuneloop.serving.multiproc` for what the mode cannot do):

* ``tuneloop_requests_in_flight``, ``tuneloop_batch_queue_texts``: ``livesum``: the replica's
  total over its running workers (a killed worker's share is dropped when its replacement starts);
* ``tuneloop_model_live{tag, worker}``: ``livemax`` with a ``worker`` label (BentoML's worker
  index, ``"0"`` in-process): each worker loads the champion on its own, so each says which tag
  it serves; one process writes each series, ``max`` only drops the ``pid`` label;
* ``tuneloop_model_load_seconds``: ``mostrecent``: the last load of any worker.

The objects are defined once at module level, as in BentoML's examples; creating them does no
I/O beyond the multiprocess value files.

Latency is in seconds (Prometheus base unit) with millisecond-scale buckets starting at 1 ms.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Counter, Gauge, Histogram

# Millisecond-scale buckets (in seconds) from 1 ms up to the 120 s request timeout.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# The endpoints whose traffic is counted; anything else (/metrics, /readyz, docs) is not.
TRACKED_ENDPOINTS = frozenset({"/classify", "/feedback", "/admin/reload", "/generate", "/v1/chat/completions",
                               "/v1/models"})
# HTTP status -> `reason` label of tuneloop_request_errors_total (bounded label values).
ERROR_REASONS = {
    400: "invalid_input",  # pydantic validation of the body (empty list, too long, not a string...)
    401: "unauthorized",  # admin or feedback: missing or wrong bearer token
    403: "admin_disabled",  # admin: no TUNELOOP_ADMIN_TOKEN configured
    404: "unknown_request",  # feedback: request id never logged
    409: "wrong_task",  # the live model serves another task (/classify on a generation model, or the reverse)
    413: "body_too_large",  # request body above TUNELOOP_MAX_BODY_BYTES
    415: "unsupported_media_type",
    422: "unknown_label",  # feedback: label not in the live model's label list (other 422s set their own reason)
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",  # no model loaded yet, queue full, waited past max_latency_ms, log write failed
    504: "timeout",
}

REQUESTS = Counter("tuneloop_requests", "HTTP requests answered, by endpoint", ["endpoint"])
REQUEST_ERRORS = Counter(
    "tuneloop_request_errors", "HTTP requests answered with a 4xx/5xx status, by endpoint and reason",
    ["endpoint", "reason"],
)
REQUEST_LATENCY = Histogram(
    "tuneloop_request_latency_seconds", "Time from request arrival to response start, by endpoint",
    ["endpoint"], buckets=LATENCY_BUCKETS_S,
)
PREDICTIONS = Counter("tuneloop_predictions", "Texts classified, by predicted label", ["label"])
CONFIDENCE = Histogram(
    "tuneloop_prediction_confidence", "Top-1 probability of each classified text", buckets=CONFIDENCE_BUCKETS
)
BATCH_SIZE = Histogram(
    "tuneloop_batch_size", "Texts per model forward pass (after adaptive batching merged requests)",
    buckets=BATCH_SIZE_BUCKETS,
)
IN_FLIGHT = Gauge(
    "tuneloop_requests_in_flight", "Requests received and not yet answered, by endpoint", ["endpoint"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "tuneloop_batch_queue_wait_seconds", "Time a request waited for its batch to start", buckets=LATENCY_BUCKETS_S
)
INFERENCE_SECONDS = Histogram(
    "tuneloop_batch_inference_seconds", "Wall time of one batch: tokenisation + forward passes + softmax",
    buckets=LATENCY_BUCKETS_S,
)
QUEUED_TEXTS = Gauge(
    "tuneloop_batch_queue_texts", "Texts waiting for the model (sampled when a batch ends)", multiprocess_mode="livesum"
)
LOG_WRITE_SECONDS = Histogram(
    "tuneloop_log_write_seconds", "Wall time of one traffic-log group commit (insert + commit)",
    buckets=LATENCY_BUCKETS_S,
)
LOG_WRITE_ROWS = Histogram(
    "tuneloop_log_write_rows", "Predictions per traffic-log group commit", buckets=BATCH_SIZE_BUCKETS + (1024, 4096)
)
LOG_WRITE_FAILURES = Counter("tuneloop_log_write_failures", "Traffic-log group commits that failed")
FEEDBACK = Counter("tuneloop_feedback", "Feedback labels recorded")
MODEL_LIVE = Gauge(
    "tuneloop_model_live", "1 for the model tag a worker answers with now, 0 for tags it served before",
    ["tag", "worker"], multiprocess_mode="livemax",
)
MODEL_SWAPS = Counter("tuneloop_model_swaps", "Models swapped in, by every worker process (the first load counts too)")
SWAP_FAILURE_REASONS = ("not_found", "load", "smoke")
MODEL_SWAP_FAILURES = Counter(
    "tuneloop_model_swap_failures", "Champion models that were not swapped in, by reason (not_found, load, smoke)",
    ["reason"],
)
for _reason in SWAP_FAILURE_REASONS:  # exported at 0 from the start, so rate() and alerts see every reason
    MODEL_SWAP_FAILURES.labels(reason=_reason)
GEN_TIME_TO_FIRST_TOKEN = Histogram(
    "tuneloop_generation_time_to_first_token_seconds",
    "Time from a generation request's arrival in the queue to its first generated token", buckets=LATENCY_BUCKETS_S,
)
GEN_INTER_TOKEN = Histogram(
    "tuneloop_generation_inter_token_latency_seconds", "Time between consecutive generated tokens of one reply",
    buckets=LATENCY_BUCKETS_S,
)
GEN_TOKENS = Counter("tuneloop_generation_tokens", "Tokens generated (end-of-sequence tokens included)")
GEN_PROMPT_TOKENS = Counter("tuneloop_generation_prompt_tokens", "Prompt tokens of generations (after the chat template)")
FINISH_REASONS = ("stop", "length")
GENERATIONS = Counter(
    "tuneloop_generations", "Generations finished, by finish reason (stop: end of sequence or a stop string; "
    "length: the token budget ran out)", ["reason"],
)
for _reason in FINISH_REASONS:
    GENERATIONS.labels(reason=_reason)
GEN_BATCH_SIZE = Histogram(
    "tuneloop_generation_batch_size", "Requests per generate call (after batching merged them)",
    buckets=BATCH_SIZE_BUCKETS,
)
MODEL_LOAD_SECONDS = Gauge(
    "tuneloop_model_load_seconds", "Wall time of the last successful model load + smoke prediction",
    multiprocess_mode="mostrecent",
)


# An API may name the `reason` of its error answer in the ASGI scope under this key (a value from
# SCOPE_REASONS), when its status alone would mislabel it (e.g. a 422 that is not an unknown label).
SCOPE_ERROR_REASON = "tuneloop.error_reason"
SCOPE_REASONS = frozenset({"missing_feedback", "wrong_task", "feedback_closed"})  # feedback_closed: a 403 of /feedback


def observe_generation_batch(report) -> None:
    """Generation metrics of one ``generate`` call (a :class:`tuneloop.serving.gen_batcher.GenBatchReport`):
    batch size, each row's time to first token, inter-token gaps, tokens and finish reason."""
    GEN_BATCH_SIZE.observe(report.rows)
    for completion, ttft in zip(report.completions, report.ttft_s):
        if ttft is not None:
            GEN_TIME_TO_FIRST_TOKEN.observe(ttft)
        times = completion.token_times
        for before, after in zip(times, times[1:]):
            GEN_INTER_TOKEN.observe(after - before)
        GEN_TOKENS.inc(completion.completion_tokens)
        GEN_PROMPT_TOKENS.inc(completion.prompt_tokens)
        GENERATIONS.labels(reason=completion.finish_reason if completion.finish_reason in FINISH_REASONS else "other").inc()


def error_reason(status: int, scope: dict | None = None) -> str:
    """The bounded ``reason`` label for an HTTP error status: the one the API set in
    ``scope[SCOPE_ERROR_REASON]`` if any (bounded to ``SCOPE_REASONS``), else by status
    (``http_<code>`` when unmapped)."""
    named = scope.get(SCOPE_ERROR_REASON) if scope is not None else None
    if named in SCOPE_REASONS:
        return named
    return ERROR_REASONS.get(status, f"http_{status}")


class RequestMetricsMiddleware:
    """ASGI middleware: counts requests and errors and times them, for ``TRACKED_ENDPOINTS`` only.

    Latency is measured from the moment the request reaches this middleware to the moment the
    response status is sent (for a stream: its first event; the stream's tokens have their own
    ``tuneloop_generation_*`` metrics). A request cut off by BentoML's timeout (HTTP 504, answered by an
    outer middleware) is counted as an error with reason ``timeout`` when it is cancelled.
    """

    def __init__(self, app) -> None:
        self.app = app
        # (requests, latency, in-flight) children per endpoint: `labels()` is a locked lookup
        self._children = {path: (REQUESTS.labels(endpoint=path), REQUEST_LATENCY.labels(endpoint=path),
                                 IN_FLIGHT.labels(endpoint=path)) for path in TRACKED_ENDPOINTS}

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in TRACKED_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        requests, latency, in_flight = self._children[path]
        in_flight.inc()

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                latency.observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except asyncio.CancelledError:  # BentoML's TimeoutMiddleware cancels us, then answers 504
            status = status or 504
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            in_flight.dec()
            requests.inc()
            if status >= 400:
                REQUEST_ERRORS.labels(endpoint=path, reason=error_reason(status, scope)).inc()
