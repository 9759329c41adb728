"""Drift benchmark on Banking77: false alarms, detection delay, CBPE estimation error, cost per cycle.

    python benchmarks/drift_bench.py --data ../shared/data/banking77 [--runs 20] [--json out.json]

Everything runs through the monitor's own code: ``compute_signals`` (Evidently's stattest functions;
``with_report=False`` skips only the HTML/plot rendering, see ``tuneloop.monitoring.drift_report``) and
``policy.decide`` with the default ``DriftPolicy``, on the real outputs of the demo's quick-trained
champion (``drift_streams.py``). Windows close every ``--window`` requests (the demo's monitor,
1 s interval, closes them at its 100-row ``min_window``). 30 % of requests get feedback.

1. False alarms: ``--fa-runs`` in-distribution streams of 5,000 requests; a run false-alarms when any
   window is judged *degraded*. Target <= 5 %.
2. Detection delay: per scenario, ``--runs`` streams of in-distribution traffic whose shift starts at a
   random offset (uniform over a window, so windows straddle the onset as in production); delay =
   last request of the first *degraded* window - onset request. Target median <= 200 for (a), (c).
3. Estimation error: |CBPE estimated accuracy - true accuracy of the same requests|, mean over
   ``--estimate-window``-row windows of in-distribution and shifted traffic. Target <= 3 points.
4. Cost: a real ``Monitor.cycle()`` (embedding, Evidently report + HTML + workspace) on a 1,000-row
   window, with the 1-minute load average at the time. Target <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from drift_streams import SCENARIOS, StreamMaker, prepare, window_frame  # noqa: E402

from tuneloop.monitoring.drift import compute_signals  # noqa: E402
from tuneloop.monitoring.performance import wilson_interval  # noqa: E402
from tuneloop.monitoring.policy import DriftPolicy, PolicyState, decide  # noqa: E402

SHIFTS = SCENARIOS[1:]
FEEDBACK_SHARE = 0.3


def judge_stream(data, ids: list[int], window: int, policy: DriftPolicy, rng: np.random.Generator,
                 stop_after: int = 0) -> list[dict]:
    """Judge consecutive ``window``-row windows of a stream, until the first *degraded* window that
    ends at or after request ``stop_after``; one dict per window judged."""
    state, out = PolicyState(), []
    cfg = policy.drift_config()
    for start in range(0, len(ids) - window + 1, window):
        chunk = ids[start:start + window]
        frame = window_frame(data, chunk, rng.random(window) < FEEDBACK_SHARE)
        rep = compute_signals(data.reference, frame, cfg, reference_embeddings=data.reference_emb,
                              current_embeddings=data.emb[chunk], calibration=data.calibration, vocab=data.vocab,
                              with_report=False)
        d = decide(rep, policy, state, new_labels=10**9)  # retraining is not simulated
        state = d.state
        rows = data.rows.iloc[chunk]
        out.append({"end": start + window - 1, "alarm": d.alarm, "degraded": d.degraded, "fired": d.fired,
                    "strong": d.strong, "estimated": rep.estimated_accuracy,
                    "true": float((rows["label"] == rows["true_label"]).mean()), "seconds": rep.seconds})
        if d.degraded and start + window - 1 >= stop_after:
            break
    return out


def false_alarms(data, maker: StreamMaker, runs: int, n: int, window: int, policy: DriftPolicy, log) -> dict:
    hits, windows, alarms, fired = 0, 0, 0, {}
    for run in range(runs):
        rng = np.random.default_rng(1000 + run)
        res = judge_stream(data, maker.queries("in_distribution", n, rng), window, policy, rng)
        hits += any(w["degraded"] for w in res)
        windows += len(res)
        alarms += sum(w["alarm"] for w in res)
        for w in res:
            for f in w["fired"]:
                fired[f] = fired.get(f, 0) + 1
        log(f"  false-alarm run {run + 1}/{runs}: {len(res)} windows, degraded={any(w['degraded'] for w in res)}")
    lo, hi = wilson_interval(hits, runs)
    return {"runs": runs, "requests_per_run": n, "window": window, "runs_with_alarm": hits,
            "p_any_alarm": hits / runs, "p_any_alarm_ci95": [lo, hi], "windows": windows,
            "alarming_windows": alarms, "signal_fire_rate": {k: v / windows for k, v in sorted(fired.items())}}


def detection(data, maker: StreamMaker, scenario: str, runs: int, window: int, policy: DriftPolicy,
              before: int, max_after: int, log) -> dict:
    delays, early, strong = [], 0, 0
    for run in range(runs):
        rng = np.random.default_rng(2000 + 97 * run + SHIFTS.index(scenario))
        onset = before + int(rng.integers(window))
        ids = maker.queries("in_distribution", onset, rng) + maker.queries(scenario, max_after, rng)
        res = judge_stream(data, ids, window, policy, rng, stop_after=onset)
        early += any(w["degraded"] and w["end"] < onset for w in res)
        hit = next((w for w in res if w["degraded"] and w["end"] >= onset), None)
        delays.append(None if hit is None else hit["end"] - onset)
        strong += bool(hit and hit["strong"])
        log(f"  {scenario} run {run + 1}/{runs}: onset {onset}, delay {delays[-1]}")
    found = [d for d in delays if d is not None]
    return {"runs": runs, "detected": len(found), "median_delay": float(np.median(found)) if found else None,
            "p90_delay": float(np.percentile(found, 90)) if found else None, "max_delay": max(found, default=None),
            "delays": delays, "confirmed_by_strong_window": strong, "false_alarms_before_onset": early,
            "max_requests_after_onset": max_after}


def estimation(data, maker: StreamMaker, runs: int, n: int, window: int) -> dict:
    """Mean absolute error (points) of each label-free estimator (ATC, CBPE; ``tuneloop.monitoring.performance``)
    against the true accuracy of the same ``window`` requests, per scenario."""
    from tuneloop.monitoring.performance import estimate_accuracy

    out: dict = {}
    for scenario in SCENARIOS:
        est: dict[str, list] = {"atc": [], "cbpe": []}
        true = []
        for run in range(runs):
            rng = np.random.default_rng(3000 + run)
            rows = data.rows.iloc[maker.queries(scenario, n, rng)]
            conf, ok = rows["confidence"].to_numpy(), (rows["label"] == rows["true_label"]).to_numpy()
            for s in range(0, n - window + 1, window):
                for method in est:
                    est[method].append(estimate_accuracy(data.calibration, conf[s:s + window], method)[0])
                true.append(ok[s:s + window].mean())
        out[scenario] = {"windows": len(true), "mean_true": float(np.mean(true))}
        for method, values in est.items():
            err = (np.array(values) - np.array(true)) * 100
            out[scenario][method] = {"mae_points": float(np.abs(err).mean()), "bias_points": float(err.mean()),
                                     "mean_estimated": float(np.mean(values))}
    return {"window": window, "by_scenario": out}


def cycle_cost(data, maker: StreamMaker, cache_dir: Path, n: int = 1000) -> dict:
    """Wall time of real ``Monitor.cycle()`` calls on ``n``-row windows (first: loads the champion and
    embeds its reference sample; then steady state), with the 1-minute load average."""
    import shutil
    import tempfile

    from tuneloop.monitoring.monitor import Monitor, MonitorConfig
    from tuneloop.state.home import Home
    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-cost-"))
    home = Home(tmp / "home")
    shutil.copytree(cache_dir / "home" / "bentoml", home.bentoml_dir)
    shutil.copy(cache_dir / "home" / "champion.json", home.champion_path)
    mon = Monitor(home, MonitorConfig(metrics_port=None, policy=DriftPolicy(min_window=100, min_new_labels=10**9)))
    traffic, rng, runs = TrafficLog(home.traffic_db_path), np.random.default_rng(7), []
    for i, scenario in enumerate(("in_distribution", "scarce_intents", "typos", "label_mix")):
        rows = data.rows.iloc[maker.queries(scenario, n, rng)]
        recs = [PredictionRecord(f"r{i}-{j}", time.time(), t, l, float(c), [(l, float(c))], data.model_tag, 5.0)
                for j, (t, l, c) in enumerate(zip(rows["text"], rows["label"], rows["confidence"]))]
        traffic.log_predictions(recs)
        for rec, label in zip(recs, rows["true_label"]):
            if rng.random() < FEEDBACK_SHARE:
                traffic.add_feedback(rec.request_id, label)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = mon.cycle()
        runs.append({"window": scenario, "seconds": round(time.perf_counter() - started, 2), "load_avg_1m": load,
                     "action": result.action, "cold": i == 0})
    shutil.rmtree(tmp, ignore_errors=True)
    steady = [r["seconds"] for r in runs[1:]]
    return {"rows": n, "cycles": runs, "steady_state_median_seconds": float(np.median(steady)),
            "steady_state_max_seconds": max(steady)}


def print_table(res: dict) -> None:
    fa, det, cost = res.get("false_alarms"), res.get("detection", {}), res.get("cost")
    lines = ["| figure | target | result |", "| --- | --- | --- |"]
    if fa:
        lo, hi = fa["p_any_alarm_ci95"]
        lines.append(f"| false alarms: P(any alarm) in {fa['runs']} in-distribution streams of "
                     f"{fa['requests_per_run']:,} requests | <= 5 % | {100 * fa['p_any_alarm']:.1f} % "
                     f"({fa['runs_with_alarm']}/{fa['runs']}; 95 % CI {100 * lo:.1f}-{100 * hi:.1f} %); "
                     f"{fa['alarming_windows']} of {fa['windows']} windows alarmed unconfirmed |")
    names = {"scarce_intents": "(a) scarce intents 60 % + typos 30 %", "typos": "(b) typos on 30 % of queries",
             "label_mix": "(c) label mix: 10 intents"}
    for scenario, r in det.items():
        target = "report" if scenario == "typos" else "median <= 200"
        lines.append(f"| detection delay {names[scenario]}, requests ({r['runs']} runs) | {target} | median "
                     f"{r['median_delay']}, p90 {r['p90_delay']}, max {r['max_delay']}; detected "
                     f"{r['detected']}/{r['runs']} within {r['max_requests_after_onset']} |")
    for est in (res.get("estimation"), res.get("estimation_100")):
        if not est:
            continue
        for scenario, r in est["by_scenario"].items():
            cells = "; ".join(f"{m.upper()} MAE {r[m]['mae_points']:.2f} (bias {r[m]['bias_points']:+.2f})"
                              for m in ("atc", "cbpe"))
            lines.append(f"| estimation error, {scenario}, {est['window']}-request windows, points | <= 3 | {cells}; "
                         f"true accuracy {r['mean_true']:.3f}, {r['windows']} windows |")
    if cost:
        detail = ", ".join(f"{c['window']}{' (cold)' if c['cold'] else ''} {c['seconds']} s at load "
                           f"{c['load_avg_1m']:.2f}" for c in cost["cycles"])
        lines.append(f"| cost of one monitor cycle, {cost['rows']}-request window | <= 10 s | {detail} |")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="Banking77 folder (train.csv, test.csv).")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tuneloop-drift-bench"), help="Model + outputs cache.")
    ap.add_argument("--runs", type=int, default=20, help="Runs per detection scenario.")
    ap.add_argument("--fa-runs", type=int, default=40, help="In-distribution streams for the false-alarm figure.")
    ap.add_argument("--stream", type=int, default=5000, help="Requests per false-alarm stream.")
    ap.add_argument("--window", type=int, default=100, help="Requests per monitoring window.")
    ap.add_argument("--estimate-window", type=int, default=500, help="Requests per CBPE estimation window.")
    ap.add_argument("--only", nargs="*", default=["false_alarms", "detection", "estimation", "cost"])
    ap.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    data = prepare(args.data, args.cache, log=log)
    maker, policy = StreamMaker(data), DriftPolicy()
    res: dict = {"model": data.model_tag, "policy": policy.model_dump(mode="json"), "window": args.window}
    started = time.time()
    if "false_alarms" in args.only:
        res["false_alarms"] = false_alarms(data, maker, args.fa_runs, args.stream, args.window, policy, log)
    if "detection" in args.only:
        res["detection"] = {s: detection(data, maker, s, args.runs, args.window, policy, 500, 2000, log)
                            for s in SHIFTS}
    if "estimation" in args.only:
        res["estimation"] = estimation(data, maker, args.runs, 2000, args.estimate_window)
        res["estimation_100"] = estimation(data, maker, args.runs, 2000, 100)
    if "cost" in args.only:
        res["cost"] = cycle_cost(data, maker, args.cache)
    res["wall_seconds"] = round(time.time() - started, 1)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
