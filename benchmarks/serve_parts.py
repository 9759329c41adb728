"""The pieces ``serve_bench.py`` measures with: the naive server process, the in-process ceiling,
CPU-time accounting, hot swaps under load, the service's batch statistics and int8 accuracy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from serve_models import BenchModel, copy_as_new_version

from tuneloop.apps.loadgen import LoadResult, open_loop
from tuneloop.serving.launch import free_port, stop_server, wait_ready
from tuneloop.state.home import Home

HERE = Path(__file__).resolve().parent
CEILING_BATCH = 32  # texts per in-process batch: what 32 one-text clients can give the batcher at most
SWAPS = 3  # hot swaps under load
ADMIN_TOKEN = "serve-bench-token"  # only for the benchmark's own server on 127.0.0.1


def load1() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def cpu_seconds(processes: list) -> float:
    """User + system CPU seconds used so far by ``psutil`` processes (all their threads)."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(Exception):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def naive_server(model_dir: Path, threads: int, log_path: Path):
    """Run ``serve_naive.py`` on a free port; yields ``(url, process)``."""
    port = free_port()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "serve_naive.py"), "--model", str(model_dir), "--port", str(port),
             "--threads", str(threads)], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log_path, 180)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop_server(process)


class Ceiling:
    """In-process batched prediction on random batches of test queries (no HTTP)."""

    def __init__(self, model_dir: Path, texts: list[str], quantize: str | None) -> None:
        from tuneloop.serving import inference
        from tuneloop.training.predict import Classifier

        self.clf = Classifier.load(model_dir, device="cpu", quantize=quantize)
        self.overhead = inference.warm_up(self.clf)
        self.texts = texts

    def _stream(self, kind: str, seconds: float, seed: int) -> int:
        from tuneloop.serving import inference

        rng, n, start = random.Random(seed), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = rng.sample(self.texts, CEILING_BATCH)
            if kind == "plain":
                self.clf.predict_proba(batch, batch_size=CEILING_BATCH)
            else:
                inference.predict_proba(self.clf, batch, self.overhead)
            n += len(batch)
        return n

    def slice(self, seconds: float, workers: int) -> dict:
        """``workers`` threads each predicting batch after batch for ``seconds / 2``, plain then
        grouped: texts/s and CPU ms per text of each."""
        out = {}
        with ThreadPoolExecutor(workers) as pool:
            for kind in ("plain", "grouped"):
                start, cpu = time.perf_counter(), time.process_time()
                done = sum(pool.map(lambda seed, kind=kind: self._stream(kind, seconds / 2, seed), range(workers)))
                out[kind] = done / (time.perf_counter() - start)
                out[f"{kind}_cpu_ms_per_text"] = (time.process_time() - cpu) / done * 1000
        return out


def swap_under_load(home: Home, model: BenchModel, url: str, texts: list[str], rate: float,
                    duration_s: float) -> dict:
    """Open-loop load at ``rate`` for ``duration_s`` while the champion is hot-swapped ``SWAPS``
    times through /admin/reload; latencies of the requests in flight during a swap vs the others."""
    import httpx

    from tuneloop.state.registry import promote

    tags = [copy_as_new_version(home, model) for _ in range(SWAPS)]
    result, windows = {}, []
    load = threading.Thread(target=lambda: result.update(run=asyncio.run(open_loop(url, texts, rate, duration_s,
                                                                                   seed=7))))
    load.start()
    for tag in tags:
        time.sleep(max(duration_s / (SWAPS + 1) - (windows[-1][1] - windows[-1][0] if windows else 0), 0))
        promote(home, tag, reason="benchmark hot swap")
        start = time.time()
        r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)
        windows.append((start, time.time()))
        assert r.json().get("reloaded"), r.text
    load.join()
    promote(home, model.tag, reason="benchmark: back to the benchmark model")
    run: LoadResult = result["run"]
    during = [o for o in run.ok if any(o.sent_at <= end and o.sent_at + o.latency_s >= start for start, end in windows)]
    others = [o.latency_s for o in run.ok if o not in during]
    return {"swaps": SWAPS, "failed_requests": len(run.failed), "requests": len(run.outcomes),
            "swap_seconds": [round(end - start, 2) for start, end in windows],
            "in_flight_during_swaps": len(during),
            "max_ms_during_swaps": round(max((o.latency_s for o in during), default=float("nan")) * 1000, 1),
            "p99_ms_others": round(float(np.percentile(others, 99)) * 1000, 1) if others else None,
            "load_avg_1m": load1()}


def metric_sums(url: str) -> dict[str, float]:
    """The ``_sum`` and ``_count`` samples of the service's batch and log-write histograms."""
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("tuneloop_batch_size_", "tuneloop_batch_inference_seconds_", "tuneloop_log_write_seconds_")):
            values[name] = float(value)
    return values


def batch_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean batch size, batch compute time and log group-commit time between two :func:`metric_sums`."""
    def mean(prefix: str) -> float:
        count = after.get(f"{prefix}_count", 0.0) - before.get(f"{prefix}_count", 0.0)
        return (after.get(f"{prefix}_sum", 0.0) - before.get(f"{prefix}_sum", 0.0)) / max(count, 1.0)

    return {"mean_batch_texts": round(mean("tuneloop_batch_size"), 1),
            "mean_batch_ms": round(mean("tuneloop_batch_inference_seconds") * 1000, 1),
            "mean_log_commit_ms": round(mean("tuneloop_log_write_seconds") * 1000, 2)}


def precision_accuracy(model_dir: Path, texts: list[str], labels: list[str]) -> dict:
    """Test accuracy of the model in fp32, int8 and bf16 on ``texts`` (in process)."""
    from tuneloop.training.predict import Classifier

    out = {}
    for name in ("fp32", "int8", "bf16"):
        clf = Classifier.load(model_dir, device="cpu", quantize=None if name == "fp32" else name)
        pred, _ = clf.predict(texts)
        out[name] = round(float(np.mean([p == y for p, y in zip(pred, labels)])), 4)
    for name in ("int8", "bf16"):
        out[f"{name}_change_pt"] = round((out[name] - out["fp32"]) * 100, 2)
    return out
