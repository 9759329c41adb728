"""Serving settings (:class:`ServeConfig`), read from ``TUNELOOP_*`` environment variables.

The service reads them when it is constructed, in the worker process that ``bentoml serve``
starts; ``tuneloop serve`` and :func:`serving.launch.running_server` pass them down through the
environment. Four of them also shape the HTTP API itself (input limits, batching bounds, request
timeout) and BentoML needs those when the service class is *defined*, so ``serving/service.py``
reads the environment once more at import for exactly those (see the comment there).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from training.home import DEFAULT_HOME, HOME_ENV

# Field name -> environment variable. Unset or empty variables keep the default.
ENV_VARS: dict[str, str] = {
    "home": HOME_ENV,
    "max_text_chars": "TUNELOOP_MAX_TEXT_CHARS",
    "max_batch_texts": "TUNELOOP_MAX_BATCH_TEXTS",
    "poll_seconds": "TUNELOOP_POLL_SECONDS",
    "admin_token": "TUNELOOP_ADMIN_TOKEN",
    "max_latency_ms": "TUNELOOP_MAX_LATENCY_MS",
    "max_batch_size": "TUNELOOP_MAX_BATCH_SIZE",
    "request_timeout_s": "TUNELOOP_REQUEST_TIMEOUT_S",
    "torch_threads": "TUNELOOP_TORCH_THREADS",
}


class ServeConfig(BaseModel):
    """Everything the service needs to know, validated.

    Attributes:
        home: the tuneloop home folder (champion pointer, model store, traffic DB).
        max_text_chars: longest accepted text, in characters; longer ones get HTTP 400.
        max_batch_texts: most texts accepted in one ``/classify`` request (HTTP 400 above).
        poll_seconds: how often the background thread re-reads the champion pointer, in seconds.
        admin_token: bearer token for ``/admin/*``; None disables the admin endpoints (HTTP 403).
        max_latency_ms: adaptive-batching latency bound, in ms. BentoML's dispatcher answers 503
            to a queued request it predicts cannot be served within this bound, so it is large
            (30 s): the demo trains a challenger on the same 2 CPU cores while traffic flows, a
            forward pass can then take seconds, and the demo must see zero failed requests.
        max_batch_size: most texts merged into one forward pass (>= 2, BentoML's minimum).
        request_timeout_s: BentoML ``traffic.timeout``: a request that has not started answering
            after this many seconds gets HTTP 504. Larger than ``max_latency_ms``.
        torch_threads: ``torch.set_num_threads`` in the worker; 1 leaves the second core of the
            2-core demo machine to the trainer, and batching recovers the throughput.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = DEFAULT_HOME
    max_text_chars: int = Field(default=1000, ge=1)
    max_batch_texts: int = Field(default=64, ge=1)
    poll_seconds: float = Field(default=2.0, gt=0)
    admin_token: SecretStr | None = None
    max_latency_ms: int = Field(default=30_000, ge=10)
    max_batch_size: int = Field(default=64, ge=2)
    request_timeout_s: float = Field(default=120.0, gt=0)
    torch_threads: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _timeout_covers_batching(self) -> "ServeConfig":
        if self.request_timeout_s * 1000 <= self.max_latency_ms:
            raise ValueError(
                f"{ENV_VARS['request_timeout_s']} ({self.request_timeout_s} s) must be larger than "
                f"{ENV_VARS['max_latency_ms']} ({self.max_latency_ms} ms), or requests time out "
                "while the batcher is still allowed to hold them"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServeConfig":
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
