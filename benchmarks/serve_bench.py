"""Serving benchmark: the tuneloop service against a naive server and the in-process ceiling.

    python benchmarks/serve_bench.py --data ../shared/data/banking77 --json serve_bench.json

Every variant serves the same MiniLM Banking77 classifier (trained once into ``--home``, see
``serve_models.py``) with the same torch intra-op thread count (``--threads``), and gets
Banking77 test queries, one per request, from :mod:`serving.loadgen` on 127.0.0.1:

* ``service``: ``bentoml serve`` of the tuneloop service (adaptive batching, traffic log, metrics);
* ``service_off``: the same with the traffic log and metrics off (``TUNELOOP_TRAFFIC_LOG=0``,
  ``TUNELOOP_METRICS=0``);
* ``service_int8``: the same with ``TUNELOOP_QUANTIZE=int8``;
* ``naive``: ``serve_naive.py`` (FastAPI, one forward pass per request);
* ``ceiling`` / ``ceiling_int8``: no HTTP: ``--workers`` threads in this process, each running
  the service's batched prediction on batch after batch of 32 random test queries (the largest
  batch 32 clients can make); the plain ``Classifier.predict_proba`` is measured the same way
  and the faster of the two is the ceiling.

The machine is shared, so the variants are measured in interleaved slices (each round runs every
variant for ``--slice-seconds``, in rotating order), and the 1-minute load average is recorded
with every slice. Throughput: ``clients`` closed-loop clients. Latency: open loop (Poisson
arrivals) at ``--latency-load`` x the service's saturation throughput, ``service`` and
``service_off`` interleaved. int8 accuracy: fp32 vs int8 on the whole test split, in process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from serve_models import copy_as_new_version, ensure_model, reset_traffic, test_queries
from serving.launch import free_port, log_tail, running_server, stop_server, wait_ready
from serving.loadgen import LoadResult, closed_loop, open_loop
from training.home import Home

HERE = Path(__file__).resolve().parent
CEILING_BATCH = 32  # texts per in-process batch: what 32 one-text clients can give the batcher at most
TARGETS = {"vs_naive": 3.0, "vs_ceiling": 0.70, "p99_ms": 100.0, "overhead_p50": 0.05}
SWAPS = 3  # hot swaps under load
ADMIN_TOKEN = "serve-bench-token"  # only for the benchmark's own server on 127.0.0.1


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Sleep in 60 s steps while the 1-minute load average is above ``max_load`` (at most ``max_wait_s``)."""
    waited = 0.0
    while load1() > max_load and waited < max_wait_s:
        logging.warning("load average %.2f > %.2f: waiting 60 s (waited %.0f s)", load1(), max_load, waited)
        time.sleep(60)
        waited += 60
    return load1()


@contextlib.contextmanager
def naive_server(model_dir: Path, threads: int, log_path: Path):
    port = free_port()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "serve_naive.py"), "--model", str(model_dir), "--port", str(port),
             "--threads", str(threads)], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log_path, 180)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


class Ceiling:
    """In-process batched prediction on random batches of test queries (no HTTP)."""

    def __init__(self, model_dir: Path, texts: list[str], quantize: str | None) -> None:
        from serving import inference
        from training.predict import Classifier

        self.clf = Classifier.load(model_dir, device="cpu", quantize=quantize)
        self.overhead = inference.warm_up(self.clf)
        self.texts, self.rng = texts, random.Random(0)

    def _stream(self, name: str, seconds: float, seed: int) -> int:
        from serving import inference

        rng, n, start = random.Random(seed), 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            batch = rng.sample(self.texts, CEILING_BATCH)
            if name == "plain":
                self.clf.predict_proba(batch, batch_size=CEILING_BATCH)
            else:
                inference.predict_proba(self.clf, batch, self.overhead)
            n += len(batch)
        return n

    def slice(self, seconds: float, workers: int) -> dict:
        """Texts/s of ``workers`` threads each predicting batch after batch, plain and grouped."""
        from concurrent.futures import ThreadPoolExecutor

        rates = {}
        with ThreadPoolExecutor(workers) as pool:
            for name in ("plain", "grouped"):
                start = time.perf_counter()
                done = sum(pool.map(lambda seed: self._stream(name, seconds / 2, seed), range(workers)))
                rates[name] = done / (time.perf_counter() - start)
        return rates


def merge(results: list[LoadResult]) -> LoadResult:
    return LoadResult([o for r in results for o in r.outcomes], sum(r.duration_s for r in results))


def summary(result: LoadResult, loads: list[float]) -> dict:
    return {"texts_per_s": round(result.texts_per_s(), 1), "p50_ms": round(result.latency_ms(50), 1),
            "p99_ms": round(result.latency_ms(99), 1), "requests": len(result.outcomes),
            "statuses": result.statuses(), "load_avg_1m": loads}


def swap_under_load(home: Home, model, url: str, texts: list[str], rate: float, args: argparse.Namespace) -> dict:
    """Open-loop load at ``rate`` while the champion is hot-swapped ``SWAPS`` times through
    /admin/reload; latencies of the requests in flight during a swap against the others."""
    import threading

    import httpx

    from training.store import promote

    tags = [copy_as_new_version(home, model) for _ in range(SWAPS)]
    result, windows = {}, []
    duration = max(args.slice_seconds * 2, 6.0 * SWAPS)
    load = threading.Thread(target=lambda: result.update(run=asyncio.run(open_loop(url, texts, rate, duration, seed=7))))
    load.start()
    for tag in tags:
        time.sleep(duration / (SWAPS + 1) - (windows[-1][1] - windows[-1][0] if windows else 0))
        promote(home, tag, reason="benchmark hot swap")
        start = time.time()
        r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120)
        windows.append((start, time.time()))
        assert r.json().get("reloaded"), r.text
    load.join()
    promote(home, model.tag, reason="benchmark: back to the benchmark model")
    run = result["run"]
    during = [o for o in run.ok if any(o.sent_at <= end and o.sent_at + o.latency_s >= start for start, end in windows)]
    others = [o for o in run.ok if o not in during]
    return {"swaps": SWAPS, "failed_requests": len(run.failed), "requests": len(run.outcomes),
            "swap_seconds": [round(end - start, 2) for start, end in windows],
            "in_flight_during_swaps": len(during),
            "max_ms_during_swaps": round(max((o.latency_s for o in during), default=float("nan")) * 1000, 1),
            "p99_ms_others": round(float(np.percentile([o.latency_s for o in others], 99)) * 1000, 1),
            "load_avg_1m": load1()}


def batch_stats(url: str) -> dict:
    """Mean batch size, batch compute time and log group-commit time, from the service's /metrics."""
    import httpx

    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("tuneloop_batch_size_", "tuneloop_batch_inference_seconds_", "tuneloop_log_write_seconds_")):
            values[name] = float(value)

    def mean(prefix: str) -> float:
        return values.get(f"{prefix}_sum", 0.0) / max(values.get(f"{prefix}_count", 0.0), 1.0)

    return {"mean_batch_texts": round(mean("tuneloop_batch_size"), 1),
            "mean_batch_ms": round(mean("tuneloop_batch_inference_seconds") * 1000, 1),
            "mean_log_commit_ms": round(mean("tuneloop_log_write_seconds") * 1000, 2)}


def int8_accuracy(model_dir: Path, texts: list[str], labels: list[str]) -> dict:
    from training.predict import Classifier

    out = {}
    for name, quantize in (("fp32", None), ("int8", "int8")):
        clf = Classifier.load(model_dir, device="cpu", quantize=quantize)
        pred, _ = clf.predict(texts)
        out[name] = round(float(np.mean([p == y for p, y in zip(pred, labels)])), 4)
    out["change_pt"] = round((out["int8"] - out["fp32"]) * 100, 2)
    return out


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    home = Home(args.home)
    model = ensure_model(home, args.data)
    texts, labels = test_queries(args.data)
    env = {"TUNELOOP_TORCH_THREADS": str(args.threads), "TUNELOOP_INFERENCE_WORKERS": str(args.workers),
           "TUNELOOP_POLL_SECONDS": "3600"}
    report = {"settings": {**vars(args), "data": str(args.data), "home": str(args.home), "model": model.tag,
                           "cpu_count": os.cpu_count()},
              "load_avg_at_start": wait_for_quiet(args.max_load, args.max_wait_s)}
    reset_traffic(home)
    log_dir = home.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    variants = {"service": {"TUNELOOP_ADMIN_TOKEN": ADMIN_TOKEN}, "service_off": {"TUNELOOP_TRAFFIC_LOG": "0", "TUNELOOP_METRICS": "0"},
                "service_int8": {"TUNELOOP_QUANTIZE": "int8"}}
    with contextlib.ExitStack() as stack:
        servers = {  # each its own BENTOML_HOME: BentoML keeps its Prometheus files there
            name: stack.enter_context(running_server(
                home, env={**env, **extra, "BENTOML_HOME": str(home.root / f"bentoml-{name}")}, ready_timeout=300))
            for name, extra in variants.items()
        }
        urls = {name: server.url for name, server in servers.items()}
        urls["naive"] = stack.enter_context(naive_server(model.path, args.threads, log_dir / "naive.log"))
        ceilings = {"ceiling": Ceiling(model.path, texts, None), "ceiling_int8": Ceiling(model.path, texts, "int8")}
        for name in ("service", "service_int8", "naive"):  # warm-up: batcher, connections, allocator
            asyncio.run(closed_loop(urls[name], texts, args.clients, 3, seed=99))
        runs: dict[str, list] = {name: [] for name in ("service", "service_int8", "naive", *ceilings)}
        loads: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            order = list(runs)[r % len(runs):] + list(runs)[: r % len(runs)]
            for name in order:
                loads[name].append(load1())
                if name in ceilings:
                    runs[name].append(ceilings[name].slice(args.slice_seconds, args.workers))
                else:
                    runs[name].append(asyncio.run(closed_loop(urls[name], texts, args.clients, args.slice_seconds,
                                                              seed=r)))
                logging.info("round %d %s done (load %.2f)", r, name, loads[name][-1])
        throughput = {name: summary(merge(runs[name]), loads[name]) for name in ("service", "service_int8", "naive")}
        for name in ceilings:
            throughput[name] = {kind: round(float(np.mean([s[kind] for s in runs[name]])), 1)
                                for kind in ("plain", "grouped")}
            throughput[name]["texts_per_s"] = max(throughput[name]["plain"], throughput[name]["grouped"])
            throughput[name]["load_avg_1m"] = loads[name]
        report["throughput"] = throughput

        rate = args.latency_load * throughput["service"]["texts_per_s"]
        lat_runs: dict[str, list] = {"service": [], "service_off": []}
        lat_loads: dict[str, list[float]] = {"service": [], "service_off": []}
        for r in range(args.rounds):
            for name in (("service", "service_off") if r % 2 == 0 else ("service_off", "service")):
                lat_loads[name].append(load1())
                lat_runs[name].append(asyncio.run(open_loop(urls[name], texts, rate, args.slice_seconds, seed=r)))
        report["latency"] = {"rate_texts_per_s": round(rate, 1),
                             **{name: summary(merge(lat_runs[name]), lat_loads[name]) for name in lat_runs}}
        report["service_batches"] = batch_stats(urls["service"])
        report["hot_swap"] = swap_under_load(home, model, urls["service"], texts, rate, args)
        logs = {name: log_tail(server.log_path, 1500) for name, server in servers.items()}
    del ceilings
    report["int8_accuracy"] = int8_accuracy(model.path, texts, labels)
    report["load_avg_at_end"] = load1()
    report["figures"] = figures(report)
    if any(s.get("statuses", {}).keys() - {200} for s in throughput.values() if "statuses" in s):
        report["server_log_tails"] = logs
    return report


def figures(report: dict) -> dict:
    """The issue's figures and whether each target is reached."""
    t, lat = report["throughput"], report["latency"]
    svc, off = lat["service"], lat["service_off"]
    out = {
        "service_vs_naive": round(t["service"]["texts_per_s"] / t["naive"]["texts_per_s"], 2),
        "service_vs_ceiling": round(t["service"]["texts_per_s"] / t["ceiling"]["texts_per_s"], 3),
        "p50_ms_at_half_load": svc["p50_ms"], "p99_ms_at_half_load": svc["p99_ms"],
        "log_metrics_overhead_p50": round(svc["p50_ms"] / off["p50_ms"] - 1, 3),
        "int8_throughput_gain": round(t["service_int8"]["texts_per_s"] / t["service"]["texts_per_s"], 2),
        "int8_accuracy_change_pt": report["int8_accuracy"]["change_pt"],
    }
    out["met"] = {
        "service_vs_naive >= 3": out["service_vs_naive"] >= TARGETS["vs_naive"],
        "service_vs_ceiling >= 0.70": out["service_vs_ceiling"] >= TARGETS["vs_ceiling"],
        "p99 <= 100 ms": out["p99_ms_at_half_load"] <= TARGETS["p99_ms"],
        "log+metrics overhead <= 5%": out["log_metrics_overhead_p50"] <= TARGETS["overhead_p50"],
    }
    return out


def table(report: dict) -> str:
    t, lat, f = report["throughput"], report["latency"], report["figures"]

    def loads(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}"

    rows = [
        ("throughput, service (fp32), 32 clients", f"{t['service']['texts_per_s']:.0f} texts/s", loads(t["service"]["load_avg_1m"])),
        ("throughput, naive FastAPI, 32 clients", f"{t['naive']['texts_per_s']:.0f} texts/s", loads(t["naive"]["load_avg_1m"])),
        ("ceiling, in-process batches of 32 (plain / grouped)",
         f"{t['ceiling']['plain']:.0f} / {t['ceiling']['grouped']:.0f} texts/s", loads(t["ceiling"]["load_avg_1m"])),
        ("service batches over the run: mean texts / compute ms / log commit ms",
         f"{report['service_batches']['mean_batch_texts']:.1f} / {report['service_batches']['mean_batch_ms']:.1f} / "
         f"{report['service_batches']['mean_log_commit_ms']:.2f}", ""),
        ("service / naive (target >= 3x)", f"{f['service_vs_naive']:.2f}x", ""),
        ("service / ceiling (target >= 70%)", f"{f['service_vs_ceiling']:.0%}", ""),
        (f"latency at {lat['rate_texts_per_s']:.0f} texts/s (50% of saturation): p50 / p99 (target p99 <= 100 ms)",
         f"{lat['service']['p50_ms']:.1f} / {lat['service']['p99_ms']:.1f} ms", loads(lat["service"]["load_avg_1m"])),
        ("same, traffic log + metrics off: p50 / p99",
         f"{lat['service_off']['p50_ms']:.1f} / {lat['service_off']['p99_ms']:.1f} ms", loads(lat["service_off"]["load_avg_1m"])),
        ("log + metrics overhead on p50 (target <= 5%)", f"{f['log_metrics_overhead_p50']:+.1%}", ""),
        (f"{report['hot_swap']['swaps']} hot swaps at 50% load: failed / max latency in flight vs p99 others",
         f"{report['hot_swap']['failed_requests']} / {report['hot_swap']['max_ms_during_swaps']:.0f} vs "
         f"{report['hot_swap']['p99_ms_others']:.0f} ms", f"{report['hot_swap']['load_avg_1m']:.1f}"),
        ("throughput, service int8, 32 clients", f"{t['service_int8']['texts_per_s']:.0f} texts/s",
         loads(t["service_int8"]["load_avg_1m"])),
        ("int8 throughput gain (service) / ceiling int8 (grouped)",
         f"{f['int8_throughput_gain']:.2f}x / {t['ceiling_int8']['grouped']:.0f} texts/s", ""),
        ("test accuracy fp32 -> int8 (3,080 queries)",
         f"{report['int8_accuracy']['fp32']:.2%} -> {report['int8_accuracy']['int8']:.2%} "
         f"({f['int8_accuracy_change_pt']:+.2f} pt)", ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'value':>28}  load avg (1 min)", "-" * (width + 50)]
    lines += [f"{name:<{width}}  {value:>28}  {load}" for name, value, load in rows]
    lines.append(f"non-2xx answers: {[(n, s['statuses']) for n, s in {**t, **lat}.items() if isinstance(s, dict) and set(s.get('statuses', {200: 0})) - {200}] or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/banking77"), help="Banking77 folder")
    parser.add_argument("--home", type=Path, default=Path(".tuneloop/bench-home"),
                        help="benchmark home (the model is trained into it once)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every variant")
    parser.add_argument("--workers", type=int, default=2,
                        help="batches computed at once by the service and the ceiling (TUNELOOP_INFERENCE_WORKERS)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--slice-seconds", type=float, default=8.0, help="seconds per variant per round")
    parser.add_argument("--latency-load", type=float, default=0.5, help="open-loop rate / saturation throughput")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait while the 1-min load average is above")
    parser.add_argument("--max-wait-s", type=float, default=600, help="longest wait for a quiet machine")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
