"""Serving benchmark: the tuneloop service against a naive server and the in-process ceiling.

    python benchmarks/serve_bench.py --data ../shared/data/banking77 --json serve_bench.json

Every variant serves the same MiniLM Banking77 classifier (trained once into ``--home``, see
``serve_models.py``) with the same torch intra-op thread count (``--threads``), and gets
Banking77 test queries, one per request, from :mod:`tuneloop.apps.loadgen` on 127.0.0.1:

* ``service``: ``bentoml serve`` of the tuneloop service (adaptive batching, traffic log, metrics)
  with ``--workers`` inference workers;
* ``service_off``: the same with the traffic log and metrics off (``TUNELOOP_TRAFFIC_LOG=0``,
  ``TUNELOOP_METRICS=0``);
* ``service_int8`` / ``service_bf16``: the same with ``TUNELOOP_QUANTIZE=int8`` / ``bf16``
  (``service`` and ``service_off`` are pinned to fp32 with ``TUNELOOP_QUANTIZE=none``; the
  default ``auto`` serves bf16 on a CPU with native bf16, i.e. ``service_bf16``);
* ``naive``: ``serve_naive.py`` (FastAPI, one forward pass per request, on its thread pool);
* ``ceiling`` / ``ceiling_int8``: no HTTP: ``--workers`` threads in this process, each running
  the service's batched prediction on batch after batch of 32 random test queries (the largest
  batch 32 clients can make); the plain ``Classifier.predict_proba`` is measured the same way
  and the faster of the two is the ceiling.

The machine is shared, so the variants are measured in interleaved slices (each round runs every
variant for ``--slice-seconds``, in rotating order), the 1-minute load average is recorded with
every slice, and the CPU time each variant used is counted (server processes; for the ceiling,
this process), which gives CPU ms per text: a figure other processes on the machine disturb far
less than throughput. Throughput: ``--clients`` closed-loop clients. Latency: open loop (Poisson
arrivals) at ``--latency-load`` x the service's saturation throughput, ``service`` and
``service_off`` interleaved. Hot swaps: three, at that load. Accuracy: fp32, int8 and bf16 on the
whole test split, in process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from serve_models import ensure_model, reset_traffic, test_queries
from serve_parts import (
    ADMIN_TOKEN,
    Ceiling,
    batch_stats,
    cpu_seconds,
    load1,
    metric_sums,
    naive_server,
    precision_accuracy,
    swap_under_load,
)

from tuneloop.apps.loadgen import LoadResult, closed_loop, open_loop
from tuneloop.serving.launch import log_tail, running_server, server_processes
from tuneloop.state.home import Home

TARGETS = {"vs_naive": 3.0, "vs_ceiling": 0.70, "p99_ms": 100.0, "overhead_p50": 0.05}
HTTP_VARIANTS = ("service", "service_int8", "service_bf16", "naive")


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Sleep in 60 s steps while the 1-minute load average is above ``max_load`` (at most ``max_wait_s``)."""
    waited = 0.0
    while load1() > max_load and waited < max_wait_s:
        logging.warning("load average %.2f > %.2f: waiting 60 s (waited %.0f s)", load1(), max_load, waited)
        time.sleep(60)
        waited += 60
    return load1()


def merge(results: list[LoadResult]) -> LoadResult:
    return LoadResult([o for r in results for o in r.outcomes], sum(r.duration_s for r in results))


def summary(result: LoadResult, loads: list[float], cpu_s: float | None = None) -> dict:
    texts = sum(o.n_texts for o in result.ok)
    out = {"texts_per_s": round(result.texts_per_s(), 1), "p50_ms": round(result.latency_ms(50), 1),
           "p99_ms": round(result.latency_ms(99), 1), "requests": len(result.outcomes),
           "statuses": result.statuses(), "load_avg_1m": loads}
    if cpu_s is not None:
        out["server_cpu_ms_per_text"] = round(cpu_s / max(texts, 1) * 1000, 2)
    return out


def measure_throughput(urls: dict, procs: dict, ceilings: dict, texts: list[str], args) -> dict:
    """Interleaved closed-loop slices of the HTTP variants and in-process slices of the ceilings."""
    for name in HTTP_VARIANTS:  # warm-up: batcher, connections, allocator
        asyncio.run(closed_loop(urls[name], texts, args.clients, 3, seed=99))
    names = [*HTTP_VARIANTS, *ceilings]
    runs: dict[str, list] = {name: [] for name in names}
    loads: dict[str, list[float]] = {name: [] for name in names}
    cpu = {name: 0.0 for name in HTTP_VARIANTS}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            loads[name].append(load1())
            if name in ceilings:
                runs[name].append(ceilings[name].slice(args.slice_seconds, args.workers))
            else:
                before = cpu_seconds(procs[name])
                runs[name].append(asyncio.run(closed_loop(urls[name], texts, args.clients, args.slice_seconds, seed=r)))
                cpu[name] += cpu_seconds(procs[name]) - before
            logging.info("round %d %s done (load %.2f)", r, name, loads[name][-1])
    out = {name: summary(merge(runs[name]), loads[name], cpu[name]) for name in HTTP_VARIANTS}
    for name in ceilings:
        out[name] = {key: round(float(np.mean([s[key] for s in runs[name]])), 2) for key in runs[name][0]}
        out[name]["texts_per_s"] = max(out[name]["plain"], out[name]["grouped"])
        out[name]["load_avg_1m"] = loads[name]
    return out


def measure_latency(urls: dict, texts: list[str], rate: float, args) -> dict:
    """Open-loop slices at ``rate`` texts/s, ``service`` and ``service_off`` interleaved."""
    runs: dict[str, list] = {"service": [], "service_off": []}
    loads: dict[str, list[float]] = {"service": [], "service_off": []}
    for r in range(args.rounds):
        for name in (("service", "service_off") if r % 2 == 0 else ("service_off", "service")):
            loads[name].append(load1())
            runs[name].append(asyncio.run(open_loop(urls[name], texts, rate, args.slice_seconds, seed=r)))
    return {"rate_texts_per_s": round(rate, 1), **{name: summary(merge(runs[name]), loads[name]) for name in runs}}


def run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    home = Home(args.home)
    model = ensure_model(home, args.data)
    texts, labels = test_queries(args.data)
    env = {"TUNELOOP_TORCH_THREADS": str(args.threads), "TUNELOOP_INFERENCE_WORKERS": str(args.workers),
           "TUNELOOP_POLL_SECONDS": "3600",
           "TUNELOOP_QUANTIZE": "none"}  # fp32 unless a variant says otherwise (auto may pick bf16 on this CPU)
    report = {"settings": {**vars(args), "data": str(args.data), "home": str(args.home), "json": str(args.json),
                           "model": model.tag, "cpu_count": os.cpu_count()},
              "load_avg_at_start": wait_for_quiet(args.max_load, args.max_wait_s)}
    reset_traffic(home)
    log_dir = home.root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    variants = {"service": {"TUNELOOP_ADMIN_TOKEN": ADMIN_TOKEN},
                "service_off": {"TUNELOOP_TRAFFIC_LOG": "0", "TUNELOOP_METRICS": "0"},
                "service_int8": {"TUNELOOP_QUANTIZE": "int8"}, "service_bf16": {"TUNELOOP_QUANTIZE": "bf16"}}
    with contextlib.ExitStack() as stack:
        servers = {  # each its own BENTOML_HOME: BentoML keeps its Prometheus files there
            name: stack.enter_context(running_server(
                home, env={**env, **extra, "BENTOML_HOME": str(home.root / f"bentoml-{name}")}, ready_timeout=300))
            for name, extra in variants.items()
        }
        urls = {name: server.url for name, server in servers.items()}
        procs = {name: server_processes(server.process) for name, server in servers.items()}
        urls["naive"], naive_process = stack.enter_context(naive_server(model.path, args.threads, log_dir / "naive.log"))
        procs["naive"] = server_processes(naive_process)
        ceilings = {"ceiling": Ceiling(model.path, texts, None), "ceiling_int8": Ceiling(model.path, texts, "int8")}

        before = metric_sums(urls["service"])
        report["throughput"] = measure_throughput(urls, procs, ceilings, texts, args)
        report["service_batches_at_saturation"] = batch_stats(before, metric_sums(urls["service"]))
        rate = args.latency_load * report["throughput"]["service"]["texts_per_s"]
        before = metric_sums(urls["service"])
        report["latency"] = measure_latency(urls, texts, rate, args)
        report["service_batches_at_half_load"] = batch_stats(before, metric_sums(urls["service"]))
        report["hot_swap"] = swap_under_load(home, model, urls["service"], texts, rate,
                                             max(args.slice_seconds * 2, 18.0))
        logs = {name: log_tail(server.log_path, 1500) for name, server in servers.items()}
    del ceilings
    report["accuracy"] = precision_accuracy(model.path, texts, labels)
    report["load_avg_at_end"] = load1()
    report["figures"] = figures(report)
    if any(set(s.get("statuses", {})) - {200} for s in report["throughput"].values()):
        report["server_log_tails"] = logs
    return report


def figures(report: dict) -> dict:
    """The issue's figures and whether each target is reached."""
    t, lat = report["throughput"], report["latency"]
    svc, off = lat["service"], lat["service_off"]
    out = {
        "service_vs_naive": round(t["service"]["texts_per_s"] / t["naive"]["texts_per_s"], 2),
        "service_vs_ceiling": round(t["service"]["texts_per_s"] / t["ceiling"]["texts_per_s"], 3),
        "cpu_per_text_naive_vs_service": round(t["naive"]["server_cpu_ms_per_text"]
                                               / t["service"]["server_cpu_ms_per_text"], 2),
        "cpu_per_text_ceiling_vs_service": round(t["ceiling"]["grouped_cpu_ms_per_text"]
                                                 / t["service"]["server_cpu_ms_per_text"], 3),
        "p50_ms_at_half_load": svc["p50_ms"], "p99_ms_at_half_load": svc["p99_ms"],
        "log_metrics_overhead_p50": round(svc["p50_ms"] / off["p50_ms"] - 1, 3),
        "int8_throughput_gain": round(t["service_int8"]["texts_per_s"] / t["service"]["texts_per_s"], 2),
        "int8_accuracy_change_pt": report["accuracy"]["int8_change_pt"],
        "bf16_throughput_gain": round(t["service_bf16"]["texts_per_s"] / t["service"]["texts_per_s"], 2),
        "bf16_vs_naive": round(t["service_bf16"]["texts_per_s"] / t["naive"]["texts_per_s"], 2),
        "bf16_accuracy_change_pt": report["accuracy"]["bf16_change_pt"],
    }
    out["met"] = {
        "service_vs_naive >= 3": out["service_vs_naive"] >= TARGETS["vs_naive"],
        "service_vs_ceiling >= 0.70": out["service_vs_ceiling"] >= TARGETS["vs_ceiling"],
        "p99 <= 100 ms": out["p99_ms_at_half_load"] <= TARGETS["p99_ms"],
        "log+metrics overhead <= 5%": out["log_metrics_overhead_p50"] <= TARGETS["overhead_p50"],
    }
    return out


def table(report: dict) -> str:
    """The figures as a plain-text table (the README's)."""
    t, lat, f, swap = report["throughput"], report["latency"], report["figures"], report["hot_swap"]
    sat, half = report["service_batches_at_saturation"], report["service_batches_at_half_load"]

    def loads(values: list[float]) -> str:
        return f"{min(values):.1f}-{max(values):.1f}"

    def batches(b: dict) -> str:
        return f"{b['mean_batch_texts']:.1f} texts, {b['mean_batch_ms']:.0f} ms, log commit {b['mean_log_commit_ms']:.1f} ms"

    rows = [
        ("throughput at 32 clients: service (fp32)", f"{t['service']['texts_per_s']:.0f} texts/s",
         loads(t["service"]["load_avg_1m"])),
        ("  naive FastAPI, one forward pass per request", f"{t['naive']['texts_per_s']:.0f} texts/s",
         loads(t["naive"]["load_avg_1m"])),
        ("  ceiling: in process, batches of 32 (plain / length-grouped)",
         f"{t['ceiling']['plain']:.0f} / {t['ceiling']['grouped']:.0f} texts/s", loads(t["ceiling"]["load_avg_1m"])),
        ("  service / naive (target >= 3x)", f"{f['service_vs_naive']:.2f}x", ""),
        ("  service / ceiling (target >= 70%)", f"{f['service_vs_ceiling']:.0%}", ""),
        ("CPU ms per text: service / naive / ceiling (grouped)",
         f"{t['service']['server_cpu_ms_per_text']:.2f} / {t['naive']['server_cpu_ms_per_text']:.2f} / "
         f"{t['ceiling']['grouped_cpu_ms_per_text']:.2f}", ""),
        ("  service batches at saturation: mean size, compute, log commit", batches(sat), ""),
        (f"latency at {lat['rate_texts_per_s']:.0f} texts/s (50% of saturation): p50 / p99 (target p99 <= 100 ms)",
         f"{lat['service']['p50_ms']:.1f} / {lat['service']['p99_ms']:.1f} ms", loads(lat["service"]["load_avg_1m"])),
        ("  same, traffic log + metrics off: p50 / p99",
         f"{lat['service_off']['p50_ms']:.1f} / {lat['service_off']['p99_ms']:.1f} ms",
         loads(lat["service_off"]["load_avg_1m"])),
        ("  log + metrics overhead on p50 (target <= 5%)", f"{f['log_metrics_overhead_p50']:+.1%}", ""),
        ("  service batches at 50% load: mean size, compute, log commit", batches(half), ""),
        (f"{swap['swaps']} hot swaps at 50% load: failed requests", f"{swap['failed_requests']} of {swap['requests']}",
         f"{swap['load_avg_1m']:.1f}"),
        ("  max latency of requests in flight during a swap / p99 of the others",
         f"{swap['max_ms_during_swaps']:.0f} / {swap['p99_ms_others']:.0f} ms", ""),
        ("int8: service throughput at 32 clients", f"{t['service_int8']['texts_per_s']:.0f} texts/s",
         loads(t["service_int8"]["load_avg_1m"])),
        ("  int8 throughput gain over fp32 (service / ceiling)",
         f"{f['int8_throughput_gain']:.2f}x / {t['ceiling_int8']['grouped'] / t['ceiling']['grouped']:.2f}x", ""),
        ("  test accuracy fp32 -> int8 (3,080 queries)",
         f"{report['accuracy']['fp32']:.2%} -> {report['accuracy']['int8']:.2%} "
         f"({f['int8_accuracy_change_pt']:+.2f} pt)", ""),
        ("bf16 (AVX512-BF16): service throughput at 32 clients", f"{t['service_bf16']['texts_per_s']:.0f} texts/s",
         loads(t["service_bf16"]["load_avg_1m"])),
        ("  gain over fp32 / vs naive fp32 / test accuracy change",
         f"{f['bf16_throughput_gain']:.2f}x / {f['bf16_vs_naive']:.2f}x / {f['bf16_accuracy_change_pt']:+.2f} pt", ""),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'value':>{value_width}}  load avg (1 min)", "-" * (width + value_width + 20)]
    lines += [f"{name:<{width}}  {value:>{value_width}}  {load}" for name, value, load in rows]
    bad = {n: s["statuses"] for n, s in {**t, **lat}.items() if isinstance(s, dict) and set(s.get("statuses", {})) - {200}}
    lines.append(f"non-2xx answers: {bad or 'none'}; load average before the run {report['load_avg_at_start']}, "
                 f"after {report['load_avg_at_end']} (the benchmark itself keeps ~2 cores busy)")
    return "\n".join(lines)


def add_round_options(parser: argparse.ArgumentParser) -> None:
    """The options every interleaved-rounds benchmark here shares (this one and serve_workers_bench.py):
    --rounds, --slice-seconds, --max-load, --max-wait-s, --json."""
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--slice-seconds", type=float, default=8.0, help="seconds per variant per round")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait while the 1-min load average is above")
    parser.add_argument("--max-wait-s", type=float, default=600, help="longest wait for a quiet machine")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/banking77"), help="Banking77 folder")
    parser.add_argument("--home", type=Path, default=Path(".tuneloop/bench-home"),
                        help="benchmark home (the model is trained into it once)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every variant")
    parser.add_argument("--workers", type=int, default=2,
                        help="batches computed at once by the service and the ceiling (TUNELOOP_INFERENCE_WORKERS)")
    parser.add_argument("--latency-load", type=float, default=0.5, help="open-loop rate / saturation throughput")
    add_round_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
