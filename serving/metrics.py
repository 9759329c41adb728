"""Prometheus metrics of the serving process (all prefixed ``tuneloop_``, named after
Prometheus conventions: base units, ``_seconds``, counters ``_total``, bounded label values) and
the ASGI middleware that counts requests, errors, in-flight requests and latency per endpoint.

Under ``bentoml serve`` every worker writes its values to ``$PROMETHEUS_MULTIPROC_DIR`` and
BentoML's ``/metrics`` merges them with ``MultiProcessCollector``: counters and histograms are
summed over workers; gauges say how they merge through ``multiprocess_mode`` (``mostrecent``:
the last write of any worker wins). The objects are defined once at module level, as in BentoML's
examples; creating them does no I/O beyond the multiprocess value files.

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
TRACKED_ENDPOINTS = frozenset({"/classify", "/feedback", "/admin/reload"})
# HTTP status -> `reason` label of tuneloop_request_errors_total (bounded label values).
ERROR_REASONS = {
    400: "invalid_input",  # pydantic validation of the body (empty list, too long, not a string...)
    401: "unauthorized",  # admin: missing or wrong bearer token
    403: "admin_disabled",  # admin: no TUNELOOP_ADMIN_TOKEN configured
    404: "unknown_request",  # feedback: request id never logged
    413: "body_too_large",  # request body above TUNELOOP_MAX_BODY_BYTES
    415: "unsupported_media_type",
    422: "unknown_label",  # feedback: label not in the live model's label list
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
    "tuneloop_model_live", "1 for the model tag that answers now, 0 for tags served before",
    ["tag"], multiprocess_mode="mostrecent",
)
MODEL_SWAPS = Counter("tuneloop_model_swaps", "Models swapped in (the first load counts too)")
SWAP_FAILURE_REASONS = ("not_found", "load", "smoke")
MODEL_SWAP_FAILURES = Counter(
    "tuneloop_model_swap_failures", "Champion models that were not swapped in, by reason (not_found, load, smoke)",
    ["reason"],
)
for _reason in SWAP_FAILURE_REASONS:  # exported at 0 from the start, so rate() and alerts see every reason
    MODEL_SWAP_FAILURES.labels(reason=_reason)
MODEL_LOAD_SECONDS = Gauge(
    "tuneloop_model_load_seconds", "Wall time of the last successful model load + smoke prediction",
    multiprocess_mode="mostrecent",
)


def error_reason(status: int) -> str:
    """The bounded ``reason`` label for an HTTP error status (``http_<code>`` when unmapped)."""
    return ERROR_REASONS.get(status, f"http_{status}")


class RequestMetricsMiddleware:
    """ASGI middleware: counts requests and errors and times them, for ``TRACKED_ENDPOINTS`` only.

    Latency is measured from the moment the request reaches this middleware to the moment the
    response status is sent. A request cut off by BentoML's timeout (HTTP 504, answered by an
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
                REQUEST_ERRORS.labels(endpoint=path, reason=error_reason(status)).inc()
