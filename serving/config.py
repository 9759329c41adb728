"""Serving settings (:class:`ServeConfig`), read from ``TUNELOOP_*`` environment variables.

The service reads them when it is constructed, in the worker process that ``bentoml serve``
starts; ``tuneloop serve`` and :func:`tuneloop.serving.launch.running_server` pass them down through the
environment. A few also shape the HTTP API itself (input limits, request timeout, whether
metrics are on) and BentoML needs those when the service class is *defined*, so
``serving/service.py`` reads the environment once more at import for exactly those.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from tuneloop.state.home import DEFAULT_HOME, HOME_ENV

# Field name -> environment variable. Unset or empty variables keep the default.
# Retry-After (seconds) of a 503: an overloaded queue or a failed log write clears within a batch
# or two (tens of ms), so 1 s; no model loaded yet means a load and warm-up in progress (~2-5 s for
# MiniLM on 2 CPU cores, the serving README's measurements), so 5 s.
RETRY_AFTER_OVERLOADED_S = 1
RETRY_AFTER_NO_MODEL_S = 5

ENV_VARS: dict[str, str] = {
    "home": HOME_ENV,
    "max_text_chars": "TUNELOOP_MAX_TEXT_CHARS",
    "max_batch_texts": "TUNELOOP_MAX_BATCH_TEXTS",
    "max_body_bytes": "TUNELOOP_MAX_BODY_BYTES",
    "poll_seconds": "TUNELOOP_POLL_SECONDS",
    "admin_token": "TUNELOOP_ADMIN_TOKEN",
    "reviewer_tokens": "TUNELOOP_REVIEWER_TOKENS",
    "reviewer_tokens_file": "TUNELOOP_REVIEWER_TOKENS_FILE",
    "bind_host": "TUNELOOP_BIND_HOST",
    "max_latency_ms": "TUNELOOP_MAX_LATENCY_MS",
    "max_batch_size": "TUNELOOP_MAX_BATCH_SIZE",
    "batch_window_ms": "TUNELOOP_BATCH_WINDOW_MS",
    "max_queue_texts": "TUNELOOP_MAX_QUEUE_TEXTS",
    "request_timeout_s": "TUNELOOP_REQUEST_TIMEOUT_S",
    "torch_threads": "TUNELOOP_TORCH_THREADS",
    "inference_workers": "TUNELOOP_INFERENCE_WORKERS",
    "quantize": "TUNELOOP_QUANTIZE",
    "traffic_log": "TUNELOOP_TRAFFIC_LOG",
    "log_sync": "TUNELOOP_LOG_SYNC",
    "metrics": "TUNELOOP_METRICS",
    "access_log": "TUNELOOP_ACCESS_LOG",
    "trace_requests": "TUNELOOP_TRACE_REQUESTS",
    "gen_max_batch_size": "TUNELOOP_GEN_MAX_BATCH_SIZE",
    "gen_batch_window_ms": "TUNELOOP_GEN_BATCH_WINDOW_MS",
    "gen_max_queue": "TUNELOOP_GEN_MAX_QUEUE",
    "gen_max_new_tokens": "TUNELOOP_GEN_MAX_NEW_TOKENS",
    "gen_max_chars": "TUNELOOP_GEN_MAX_CHARS",
    "workers": "TUNELOOP_WORKERS",
    "replica": "TUNELOOP_REPLICA",
}


class ServeConfig(BaseModel):
    """Everything the service needs to know, validated.

    Attributes:
        home: the tuneloop home folder (champion pointer, model store, traffic DB).
        max_text_chars: longest accepted text, in characters; longer ones get HTTP 400.
        max_batch_texts: most texts accepted in one ``/classify`` request (HTTP 400 above).
        max_body_bytes: largest accepted request body, in bytes (HTTP 413 above). The default
            holds 64 texts of 1000 characters even when every character is JSON-escaped.
        poll_seconds: how often the background thread re-reads the champion pointer, in seconds.
        admin_token: bearer token for ``/admin/*``; None disables the admin endpoints (HTTP 403).
        reviewer_tokens: ``name:token`` pairs, comma-separated, of the reviewers who may post
            ``/feedback`` (:mod:`tuneloop.serving.reviewers`); None with no ``reviewer_tokens_file``:
            ``/feedback`` is open, and the service starts only on a loopback ``bind_host``.
        reviewer_tokens_file: a file of reviewer tokens (``name:token`` lines or JSON; not readable by
            other users), read with ``reviewer_tokens`` when both are set.
        bind_host: the address the server binds (``tuneloop serve --host``; set by
            :func:`tuneloop.serving.launch.serve_env`). Without reviewer tokens the service refuses to
            start on one that is not loopback.
        max_latency_ms: load shedding: a text that waited this long in the batch queue is
            answered 503 instead of being computed. Large (30 s) because the demo trains a
            challenger on the same 2 CPU cores while traffic flows, and a forward pass can then
            take seconds; the demo must see zero failed requests.
        max_batch_size: most texts merged into one model call (it is cut into length groups,
            see :mod:`tuneloop.serving.inference`). 64: the throughput gain flattens above ~32 short
            texts on CPU, and a batch of 64 short texts stays under ~0.2 s on one core.
        batch_window_ms: how long an idle batcher waits after the first text for more before it
            starts a batch, in ms. Under load batches form while the model is busy, so this only
            matters at the start of bursts; 2 ms is ~5% of a batch of short texts on 1 core.
        max_queue_texts: most texts waiting for the model; more get HTTP 503 (back-pressure).
        request_timeout_s: BentoML ``traffic.timeout``: a request that has not started answering
            after this many seconds gets HTTP 504. Larger than ``max_latency_ms``.
        torch_threads: ``torch.set_num_threads`` (intra-op threads per forward pass). 1: on a
            small or shared CPU, intra-op threads stall at every op's barrier whenever another
            thread or process holds a core (see :mod:`tuneloop.serving.batcher`).
        inference_workers: batches computed at once, each on its own thread. 1 leaves the
            second core of the 2-core demo machine to the event loop and the trainer; 2 uses
            both cores on a dedicated 2-core server (the benchmark's setting).
        quantize: ``"int8"``: serve with dynamic int8 quantisation of every ``nn.Linear`` (CPU;
            see :meth:`tuneloop.training.predict.Classifier.load`); ``"bf16"``: weights and activations
            in bfloat16 (fast only on CPUs with AVX512-BF16 or AMX, and on GPUs, which use bf16
            anyway); ``"none"``: the weights as saved (fp32 on CPU); ``"auto"``: on CPU, int8 when
            the model was trained for it (``serving_quantization: int8`` in its metadata,
            ``tuneloop train --quantize int8``), else bf16 when the CPU computes it natively
            (:func:`tuneloop.serving.champion.cpu_has_native_bf16`), else fp32; on a GPU, bf16.
        traffic_log: log every prediction to ``traffic.db`` (off only for benchmarks: the
            monitor and ``/feedback`` need the log).
        log_sync: SQLite ``synchronous`` for the traffic log. ``normal``: a commit survives a
            killed process (the guarantee of the service); ``full``: also an OS crash or power
            loss, at the cost of an fsync per group commit.
        metrics: Prometheus metrics (``/metrics`` and the per-request counters); off only for
            benchmarks.
        access_log: BentoML's access log (one line per request in the server log).
        trace_requests: BentoML's OpenTelemetry spans for the API routes. Off by default: no
            exporter is configured, and the spans cost ~0.5 ms of CPU per request (measured).
            Turn on together with a BentoML ``tracing`` exporter configuration.
        gen_max_batch_size: generation: most requests (rows) merged into one left-padded
            ``generate`` call. 8: a batch decodes one token for every row per step, so rows beyond
            a few dozen slow every stream in it; 8 keeps a CPU step short.
        gen_batch_window_ms: generation: how long an idle engine waits after the first request
            for more before it starts a batch, in ms (a batch cannot take rows once it runs).
        gen_max_queue: generation: most requests waiting for a batch; more get HTTP 503.
        gen_max_new_tokens: generation: the largest ``max_new_tokens`` (``max_tokens``) a request
            may ask for (HTTP 400 above).
        gen_max_chars: generation: the longest prompt (all chat messages together) or corrected
            reply accepted, in characters (HTTP 400 above); the model's own token limit is
            checked too.
        workers: worker processes of the service (BentoML ``workers``), each with its own copy of
            the model, batcher, log writer and champion poller, sharing one port (the kernel
            spreads connections over them; ``/metrics`` sums them). 1 is the one-machine default;
            ``benchmarks/serve_workers_bench.py`` measures 2 against 1. Read when the service
            class is defined (BentoML needs it then).
        replica: the name of this service replica, logged with every prediction (which replica
            answered) beside the worker index; None: the host name. ``tuneloop serve`` passes
            ``<host name>:<port>``, so replicas on one machine differ.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = DEFAULT_HOME
    max_text_chars: int = Field(default=1000, ge=1)
    max_batch_texts: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    poll_seconds: float = Field(default=2.0, gt=0)
    admin_token: SecretStr | None = None
    reviewer_tokens: SecretStr | None = None
    reviewer_tokens_file: Path | None = None
    bind_host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    max_latency_ms: int = Field(default=30_000, ge=10)
    max_batch_size: int = Field(default=64, ge=1)
    batch_window_ms: float = Field(default=2.0, ge=0, le=1000)
    max_queue_texts: int = Field(default=2048, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    torch_threads: int = Field(default=1, ge=1)
    inference_workers: int = Field(default=1, ge=1, le=64)
    quantize: Literal["auto", "none", "int8", "bf16"] = "auto"
    traffic_log: bool = True
    log_sync: Literal["normal", "full"] = "normal"
    metrics: bool = True
    access_log: bool = True
    trace_requests: bool = False
    gen_max_batch_size: int = Field(default=8, ge=1, le=256)
    gen_batch_window_ms: float = Field(default=10.0, ge=0, le=1000)
    gen_max_queue: int = Field(default=64, ge=1)
    gen_max_new_tokens: int = Field(default=512, ge=1, le=8192)
    gen_max_chars: int = Field(default=8000, ge=1)
    workers: int = Field(default=1, ge=1, le=64)
    replica: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")

    @model_validator(mode="after")
    def _check_bounds(self) -> ServeConfig:
        if self.request_timeout_s * 1000 <= self.max_latency_ms:
            raise ValueError(
                f"{ENV_VARS['request_timeout_s']} ({self.request_timeout_s} s) must be larger than "
                f"{ENV_VARS['max_latency_ms']} ({self.max_latency_ms} ms), or requests time out "
                "while the batcher is still allowed to hold them"
            )
        if self.max_queue_texts < self.max_batch_texts:
            raise ValueError(
                f"{ENV_VARS['max_queue_texts']} ({self.max_queue_texts}) must be at least "
                f"{ENV_VARS['max_batch_texts']} ({self.max_batch_texts}), or a full request never fits"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Build the config from environment variables (see ``ENV_VARS``).

        Args:
            environ: the variables to read; ``os.environ`` when None.

        Raises:
            ValueError: a variable holds an invalid value; the message names the variable.
        """
        environ = os.environ if environ is None else environ
        values = {field: environ[var] for field, var in ENV_VARS.items() if environ.get(var, "").strip()}
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_VARS.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else 'config'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValueError(f"invalid serving configuration in the environment: {problems}") from None

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce this config in a child process."""
        env = {}
        for field, var in ENV_VARS.items():
            value = getattr(self, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[var] = str(value)
        return env
