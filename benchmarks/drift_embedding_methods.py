"""Which of Evidently's embedding drift methods should the monitor use? Measured, not assumed.

    python benchmarks/drift_embedding_methods.py --data ../shared/data/banking77 [--json out.json]

On the real champion's embeddings (``drift_streams.py``: the demo's quick-trained model, mean-pooled
encoder states), each method -- ``model`` (domain classifier ROC AUC), ``mmd`` (RBF-kernel MMD^2) and
``distance`` (Euclidean distance between mean embeddings) -- is given a p-value
(``tuneloop.monitoring.drift_stats.embedding_test``: permutation null, or the AUC's Mann-Whitney null) and run on
``--null-windows`` in-distribution windows and ``--shift-windows`` fully shifted windows of each
scenario, all of ``--window`` requests against the 1,000-row reference sample. Reported per method:
the fire rate at the policy's per-signal level (0.05 / 6) -- under no drift it must stay near that
level, under drift higher is better -- and the seconds per test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from drift_streams import SCENARIOS, StreamMaker, prepare  # noqa: E402

from tuneloop.monitoring.drift_stats import embedding_test  # noqa: E402
from tuneloop.monitoring.signals import DEFAULT_ALPHA  # noqa: E402

METHODS = ("distance", "mmd", "model")


def compare(data, maker: StreamMaker, window: int, null_windows: int, shift_windows: int, permutations: int,
            log) -> dict:
    ref = data.reference_emb[:1000]
    out: dict = {m: {"seconds": [], "fire_rate": {}} for m in METHODS}
    for scenario in SCENARIOS:
        n = null_windows if scenario == "in_distribution" else shift_windows
        pvals = {m: [] for m in METHODS}
        for w in range(n):
            rng = np.random.default_rng(5000 + w + 100_000 * SCENARIOS.index(scenario))
            cur = data.emb[maker.queries(scenario, window, rng)]
            for m in METHODS:
                started = time.perf_counter()
                pvals[m].append(embedding_test(ref, cur, m, n_permutations=permutations, seed=w)[1])
                out[m]["seconds"].append(time.perf_counter() - started)
        for m in METHODS:
            p = np.array(pvals[m])
            out[m]["fire_rate"][scenario] = {"alpha": float(np.mean(p < DEFAULT_ALPHA)),
                                             "alpha_0.001": float(np.mean(p < 1e-3)), "windows": n}
        log(f"  {scenario}: " + ", ".join(f"{m} {out[m]['fire_rate'][scenario]['alpha']:.2f}" for m in METHODS))
    for m in METHODS:
        out[m]["seconds_per_test"] = float(np.mean(out[m].pop("seconds")))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tuneloop-drift-bench"))
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--null-windows", type=int, default=150)
    ap.add_argument("--shift-windows", type=int, default=40)
    ap.add_argument("--permutations", type=int, default=500, help="Null draws (p resolution 1/(n+1)).")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    data = prepare(args.data, args.cache, log=log)
    res = {"window": args.window, "alpha": DEFAULT_ALPHA, "permutations": args.permutations,
           "methods": compare(data, StreamMaker(data), args.window, args.null_windows, args.shift_windows,
                              args.permutations, log)}
    print(f"| method | no drift (target ~{DEFAULT_ALPHA:.4f}) | " + " | ".join(SCENARIOS[1:]) + " | s per test |")
    print("| --- " * (len(SCENARIOS) + 2) + "|")
    for m, r in res["methods"].items():
        cells = [f"{r['fire_rate'][s]['alpha']:.3f}" for s in SCENARIOS]
        print(f"| {m} | " + " | ".join(cells) + f" | {r['seconds_per_test']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
