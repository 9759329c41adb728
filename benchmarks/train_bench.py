"""Training benchmark on Banking77: accuracy, wall time, throughput and peak memory per configuration.

    python benchmarks/train_bench.py --data ../shared/data/banking77 --configs quick,full,reference \
        --seeds 0,1,2 --json train_bench.json

Configurations (each run in its own subprocess, so peak resident memory is per run):

* ``quick``      the quick preset (demo and retraining loop): bottom 3 layers frozen and cached
* ``quick_nocache`` the same without caching the frozen layers (measures the caching gain)
* ``full``       the default (``tuneloop train``) preset: embeddings + 2 bottom layers frozen and
                 cached, mean pooling, dynamic padding, length grouping
* ``all_layers`` every weight trains (mean pooling, dynamic padding, length grouping)
* ``reference``  the Transformers ``run_glue`` recipe with the same model and hyperparameters as
                 ``full`` (epochs, learning rate, batch size, label smoothing): every weight trains,
                 every text padded to 128 tokens, random batches (no length grouping), the
                 ``AutoModelForSequenceClassification`` head ([CLS] pooler)

Figures per configuration (mean and standard deviation over seeds): ``test_accuracy``,
``test_macro_f1``, ``wall_seconds`` (process start to model evaluated, data loading included),
``train_seconds``, ``examples_per_second`` (training examples x epochs / train seconds),
``peak_rss_gib``; and ``throughput_vs_reference`` (full / reference examples per second).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "quick": ("quick", {}),
    "quick_nocache": ("quick", {"cache_frozen": False}),
    "full": ("full", {}),
    "all_layers": ("all_layers", {}),
    "reference": ("full", {"method": "full", "padding": "max_length", "max_length": 128, "group_by_length": False,
                           "pooling": "cls"}),
}


def worker(name: str, seed: int, data: str, overrides: dict) -> dict:
    """One training run in this process; returns its figures."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.data import load_splits_for
    from tuneloop.training.train import fine_tune

    preset, extra = CONFIGS[name]
    cfg = TrainConfig.for_preset(preset, data=data, seed=seed, progress=False, **{**extra, **overrides})
    result = fine_tune(cfg, load_splits_for(cfg))
    return {"config": name, "seed": seed, "test_accuracy": result.test_metrics["accuracy"],
            "test_macro_f1": result.test_metrics["macro_f1"], "train_seconds": result.seconds,
            "wall_seconds": time.perf_counter() - start, "epochs_run": result.epochs_run,
            "examples_per_second": result.extra["examples_per_second"], "cache_seconds": result.extra["cache_seconds"],
            "train_rows": result.train_rows}


def run_one(name: str, seed: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--seed", str(seed), "--data", args.data,
           "--overrides", json.dumps(overrides(args))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    if status != 0:
        raise RuntimeError(f"{name} seed {seed} failed (status {status})")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_gib"] = usage.ru_maxrss / 2**20  # Linux: KiB
    return row


def overrides(args) -> dict:
    out = {}
    if args.epochs:
        out["epochs"] = args.epochs
    if args.max_train_per_label:
        out["max_train_per_label"] = args.max_train_per_label
    return {**out, **json.loads(args.set)}


def summarise(rows: list[dict]) -> list[dict]:
    """One object per configuration with mean and std of every figure over seeds."""
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        runs = [r for r in rows if r["config"] == name]
        entry = {"config": name, "seeds": [r["seed"] for r in runs]}
        for key in ("test_accuracy", "test_macro_f1", "wall_seconds", "train_seconds", "examples_per_second",
                    "peak_rss_gib", "epochs_run", "cache_seconds"):
            values = [r[key] for r in runs]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    by = {e["config"]: e for e in out}
    if "full" in by and "reference" in by:
        by["full"]["throughput_vs_reference"] = by["full"]["examples_per_second"] / by["reference"]["examples_per_second"]
    if "quick" in by and "quick_nocache" in by:
        by["quick"]["caching_speedup"] = by["quick_nocache"]["train_seconds"] / by["quick"]["train_seconds"]
    return out


def print_table(summary: list[dict]) -> None:
    cols = ("config", "test_accuracy", "test_macro_f1", "wall_seconds", "examples_per_second", "peak_rss_gib")
    print(" | ".join(f"{c:>20}" for c in cols))
    for e in summary:
        cells = [e["config"]] + [f"{e[c]:.4f} ± {e[c + '_std']:.4f}" if c.startswith("test") else f"{e[c]:.1f}"
                                 for c in cols[1:]]
        print(" | ".join(f"{c:>20}" for c in cells))
    for e in summary:
        for extra in ("throughput_vs_reference", "caching_speedup"):
            if extra in e:
                print(f"{e['config']}: {extra} = {e[extra]:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/banking77")
    p.add_argument("--configs", default="quick,full,reference", help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--epochs", type=float, help="override epochs (e.g. 1 for a throughput-only comparison)")
    p.add_argument("--max-train-per-label", type=int, help="cap training rows per intent (smoke runs)")
    p.add_argument("--set", default="{}", help='JSON object of TrainConfig fields for every configuration, '
                                               'e.g. \'{"label_smoothing": 0.1}\'')
    p.add_argument("--json", help="write the summary as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed, args.data, json.loads(args.overrides))))
        return
    rows = []
    for name in args.configs.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(name, seed, args)
            print(f"# {name} seed {seed}: accuracy {row['test_accuracy']:.4f}, {row['wall_seconds']:.0f} s wall, "
                  f"{row['examples_per_second']:.0f} ex/s, {row['peak_rss_gib']:.2f} GiB", flush=True)
            rows.append(row)
    summary = summarise(rows)
    print_table(summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": rows, "configs": summary, "load_average": os.getloadavg()}, fh, indent=1)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
