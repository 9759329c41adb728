"""Loading a champion beside the live model: load, smoke-test, warm up, and only then hand it over.

A model folder that fails to load or gives a smoke prediction that is not a probability row per
text is refused with :class:`ModelSwapError`, and the caller keeps serving the old model. A model
that passes is warmed up (and its per-pass cost measured, see :mod:`tuneloop.serving.inference`) before it
is swapped in, so the first batches it serves are as fast as the rest.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneloop.serving import inference, metrics
from tuneloop.serving.tasks import ModelSwapError, serving_task
from tuneloop.state.home import Home
from tuneloop.state.registry import ModelNotFoundError, get_model, read_champion
from tuneloop.training.predict import Classifier, pick_device
from tuneloop.training.task import task_of

log = logging.getLogger("bentoml.service.tuneloop")  # under "bentoml": shown by `bentoml serve`

LOADER_NICE = 10  # loads run at this nice value: serving threads (nice 0) get ~10x its CPU share; measured
# with MiniLM under load: the worst latency of requests in flight during a swap fell from ~0.5-0.7 s to ~0.25-0.4 s


@dataclass(frozen=True)
class LiveModel:
    """A loaded, smoke-tested, warmed-up model and its store tag (``name:version``).

    Attributes:
        tag: the store tag.
        classifier: the predictor (a ``Classifier``, or a ``Generator`` for generation); never
            mutated once live, so in-flight batches keep their reference.
        overhead_tokens: its measured per-forward-pass overhead in tokens (length grouping).
        precision: what it computes in: ``"fp32"``, ``"bf16"`` or ``"int8"`` (see :func:`resolve_quantize`).
        task: the task it serves (:mod:`tuneloop.serving.tasks`).
        loaded_at: when it was loaded (Unix s).
    """

    tag: str
    classifier: Classifier | Any
    overhead_tokens: float = inference.DEFAULT_OVERHEAD_TOKENS
    precision: str = "fp32"
    task: str = "classification"
    loaded_at: float = 0.0

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), n_labels)``, computed in length groups."""
        return inference.predict_proba(self.classifier, texts, self.overhead_tokens)


@dataclass(frozen=True)
class ReloadOutcome:
    """Result of one champion check. ``error`` says why the champion is not serving, if it is not."""

    reloaded: bool
    model_tag: str | None
    champion_tag: str | None
    error: str | None = None


def resolve_quantize(setting: str, metadata: dict) -> str | None:
    """What to serve a model as: ``"int8"``, ``"bf16"`` or None (as saved).

    Args:
        setting: ``"auto"``, ``"none"``, ``"int8"`` or ``"bf16"`` (``TUNELOOP_QUANTIZE``).
        metadata: the stored model's metadata; ``"auto"`` follows its ``serving_quantization``.
    """
    if setting == "auto":
        if pick_device() != "cpu":
            return None  # a GPU serves in bf16 anyway (Classifier.load)
        if metadata.get("serving_quantization") == "int8":
            return "int8"
        return "bf16" if cpu_has_native_bf16() else None
    return None if setting == "none" else setting


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in Linux's
    ``/proc/cpuinfo`` flags). There, serving MiniLM in bf16 gave 1.43x the fp32 throughput at the
    same Banking77 test accuracy (``benchmarks/serve_bench.py``, README); elsewhere bf16 is
    emulated and slower, so ``auto`` keeps fp32. False when the flags cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load_checked(home: Home, tag: str, quantize: str = "none") -> LiveModel:
    """Load model ``tag`` from the store, smoke-test and warm it up, without touching the live model.

    Args:
        home: the tuneloop home whose store holds ``tag``.
        tag: the model's tag.
        quantize: ``"auto"``, ``"none"``, ``"int8"`` or ``"bf16"`` (see :func:`resolve_quantize`).

    Raises:
        ModelSwapError: the tag is not in the store, its folder does not load, or its smoke
            prediction is not a finite probability row per text over its labels.
    """
    try:
        stored = get_model(home, tag)
    except ModelNotFoundError as exc:
        raise ModelSwapError("not_found", str(exc)) from exc
    metadata = dict(stored.info.metadata)
    precision = resolve_quantize(quantize, metadata)
    try:
        task = task_of(metadata)
        serving = serving_task(task.name)
        classifier = task.load_predictor(stored.path, precision=precision)
    except Exception as exc:  # anything wrong with an unvetted folder must leave the old model serving
        raise ModelSwapError("load", f"model {tag} failed to load: {type(exc).__name__}: {exc}") from exc
    serving.check(tag, classifier)
    try:
        overhead = serving.warm_up(classifier)
    except Exception as exc:
        raise ModelSwapError("smoke", f"model {tag} failed the warm-up passes: {type(exc).__name__}: {exc}") from exc
    served_as = precision or ("bf16" if classifier.device == "cuda" else "fp32")
    return LiveModel(tag=tag, classifier=classifier, overhead_tokens=overhead, precision=served_as, task=task.name,
                     loaded_at=time.time())


def _lower_priority() -> None:
    """Raise the calling thread's nice value to ``LOADER_NICE`` (Linux: per thread; elsewhere a no-op)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)
    except (AttributeError, OSError):  # not Linux, or not permitted: load at normal priority
        pass


class ChampionHolder:
    """Holds the live model and swaps in the champion that ``<home>/champion.json`` names.

    ``refresh`` loads a new champion beside the live one (:func:`load_checked`) and only then
    swaps the reference, under a lock that readers hold for a pointer read: batches in flight
    finish on the model they started with, and no request waits for a load. A champion that fails
    is logged with the reason, counted in ``tuneloop_model_swap_failures_total{reason}``, and not
    retried by the poller until the pointer changes (``force`` retries it).

    Args:
        home: the tuneloop home.
        quantize: ``"auto"``, ``"none"``, ``"int8"`` or ``"bf16"``, passed to :func:`load_checked`.
        poll_seconds: how often :meth:`start_polling`'s thread re-reads the pointer.
        worker_label: this worker's ``worker`` label on ``tuneloop_model_live`` (every worker
            process holds and swaps its own model).
    """

    def __init__(self, home: Home, quantize: str, poll_seconds: float, worker_label: str = "0") -> None:
        self.home = home
        self.quantize = quantize
        self.poll_seconds = poll_seconds
        self.worker_label = worker_label
        self._live: LiveModel | None = None
        self._swap_lock = threading.Lock()  # guards the reference to the live model
        self._reload_lock = threading.Lock()  # one load at a time (poller vs /admin/reload)
        self._failed: tuple[tuple[str, float], str] | None = None  # (pointer, error) not to retry
        self.unready_reason = "the service is starting"
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="tuneloop-loader", initializer=_lower_priority)

    @property
    def live(self) -> LiveModel | None:
        """The model answering now (None until a champion loaded)."""
        with self._swap_lock:
            return self._live

    def refresh(self, force: bool = False) -> ReloadOutcome:
        """Swap in the champion if the pointer names a model other than the live one.

        The work runs on the loader thread, at a lower CPU priority than the threads that serve
        (a load + warm-up of MiniLM is ~1 s of CPU that would otherwise slow the batches in flight).

        Args:
            force: retry a champion that already failed to load (the poller does not).

        Returns:
            What happened; the old model keeps serving whenever ``reloaded`` is False.
        """
        return self._loader.submit(self._refresh, force).result()

    def _refresh(self, force: bool) -> ReloadOutcome:
        with self._reload_lock:
            live = self.live
            live_tag = live.tag if live else None
            pointer = read_champion(self.home)
            if pointer is None:
                error = f"no champion model in {self.home.root}: train and promote one (`tuneloop train --home ...`)"
                if self.unready_reason != error:
                    log.error("%s; staying unready and checking %s every %s s", error,
                              self.home.champion_path, self.poll_seconds)
                self.unready_reason = error
                return ReloadOutcome(False, live_tag, None, error)
            if pointer.tag == live_tag:
                return ReloadOutcome(False, live_tag, pointer.tag)
            key = (pointer.tag, pointer.promoted_at)
            if self._failed is not None and self._failed[0] == key and not force:
                return ReloadOutcome(False, live_tag, pointer.tag, self._failed[1])
            start = time.perf_counter()
            try:
                new = load_checked(self.home, pointer.tag, self.quantize)
            except ModelSwapError as exc:
                metrics.MODEL_SWAP_FAILURES.labels(reason=exc.reason).inc()
                log.error("champion %s NOT swapped in (%s); still serving %s", pointer.tag, exc, live_tag,
                          exc_info=exc.__cause__)
                self._failed = (key, str(exc))
                if live is None:
                    self.unready_reason = f"the champion model could not be loaded: {exc}"
                return ReloadOutcome(False, live_tag, pointer.tag, str(exc))
            seconds = time.perf_counter() - start
            with self._swap_lock:
                self._live = new
            self._failed = None
            metrics.MODEL_SWAPS.inc()
            metrics.MODEL_LOAD_SECONDS.set(seconds)
            if live_tag is not None:
                metrics.MODEL_LIVE.labels(tag=live_tag, worker=self.worker_label).set(0)
            metrics.MODEL_LIVE.labels(tag=new.tag, worker=self.worker_label).set(1)
            log.info("now serving %s in %s (loaded, smoke-tested and warmed up in %.2f s; per-pass overhead "
                     "%.0f tokens; was %s; worker %s)", new.tag, new.precision, seconds, new.overhead_tokens, live_tag,
                     self.worker_label)
            return ReloadOutcome(True, new.tag, pointer.tag)

    def start_polling(self) -> None:
        """Re-read the pointer every ``poll_seconds`` on a daemon thread until :meth:`stop`."""
        self._poller = threading.Thread(target=self._poll, name="tuneloop-champion-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop the poller thread (waits up to 5 s for a load in progress) and the loader thread."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self._loader.shutdown(wait=False, cancel_futures=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # e.g. a hand-edited champion.json; keep polling, keep serving
                log.exception("champion check failed; retrying in %s s", self.poll_seconds)
