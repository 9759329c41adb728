"""Warm-start benchmark: a quick retrain from the champion's weights vs from the base model, on the
demo's Banking77 setting, time and holdout figures.

    python benchmarks/warm_start_bench.py --data ../shared/data/banking77 --feedback 300 \
        --max-train-per-label 30 --runs base,champion:0.3,champion:1.0 --json benchmarks/results/warm_start_bench.json

Setting (the classification demo's, ``tuneloop/apps/demo_data.py``): 10 intents keep 5 training rows
each (seed 0), the others all theirs or ``--max-train-per-label``; the first champion trains with the ``quick`` preset; ``--feedback`` labelled requests
as in the demo's drift phase (60 % from the scarce intents, 30 % with keyboard typos, never a holdout
text) are logged with their true labels. Then each run of ``--runs`` retrains that champion on the same
feedback through :func:`tuneloop.monitoring.retrain.retrain_and_gate` (``quick`` preset, gated on the same
holdout, never promoted): ``base`` starts from all-MiniLM-L6-v2 as the champion did, ``champion:S``
continues from the champion's weights at S times the preset's learning rate.

Figures per run: ``seconds`` (the whole retrain: data, training, saving, gate), ``train_seconds``
(fine-tuning), ``epochs_run``, holdout ``macro_f1`` and ``accuracy`` of challenger and champion, and the
challenger's accuracy on the scarce intents' holdout rows (what the retrain is for).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def log_feedback(home, pools, n: int, seed: int, champion) -> int:
    """Log ``n`` drift-phase requests (the champion's predictions) with their true labels; returns n."""
    from tuneloop.apps.demo_data import make_queries
    from tuneloop.state.traffic_store import PredictionRecord, TrafficLog

    queries = make_queries(pools, n, 0.6, 0.3, random.Random(seed))
    predicted, confidence = champion.predict([q.text for q in queries])
    traffic = TrafficLog(home.store_url)
    records = [PredictionRecord(f"bench-{i}", time.time(), q.text, p, float(c), [(p, float(c))], "bench", 1.0)
               for i, (q, p, c) in enumerate(zip(queries, predicted, confidence))]
    traffic.log_predictions(records)
    for record, query in zip(records, queries):
        traffic.add_feedback(record.request_id, query.label)
    return n


def run(data: str, feedback: int, runs: list[str], seed: int, max_train_per_label: int | None = None) -> dict:
    from tuneloop.apps.demo import load_banking77
    from tuneloop.apps.demo_data import build_pools, write_training_data
    from tuneloop.monitoring.retrain import RetrainConfig, retrain_and_gate
    from tuneloop.state.home import Home
    from tuneloop.state.registry import get_model
    from tuneloop.state.traffic_store import TrafficLog
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.predict import Classifier
    from tuneloop.training.train import train

    train_df, test_df = load_banking77(data)
    pools = build_pools(train_df, test_df, 10, 5, seed, max_train_per_label)
    root = Path(tempfile.mkdtemp(prefix="warm-start-bench-"))
    home = Home(root / "home").ensure()
    data_dir = write_training_data(pools, root / "data")
    started = time.perf_counter()
    initial = train(TrainConfig.for_preset("quick", data=str(data_dir), seed=seed, progress=False), home)
    out = {"setting": {"data": data, "feedback": feedback, "seed": seed, "scarce_intents": pools.scarce_intents,
                       "max_train_per_label": max_train_per_label,
                       "initial_train_rows": len(pools.initial_train), "holdout_rows": len(pools.holdout)},
           "initial": {"tag": initial.tag, "train_seconds": round(initial.seconds, 1),
                       "wall_seconds": round(time.perf_counter() - started, 1),
                       "test_macro_f1": initial.test_metrics["macro_f1"], "test_accuracy": initial.test_metrics["accuracy"]},
           "runs": []}
    print(json.dumps(out["initial"]), flush=True)
    log_feedback(home, pools, feedback, seed, initial.classifier)
    labelled = TrafficLog(home.store_url).labelled()
    scarce = pools.holdout[pools.holdout["label"].isin(pools.scarce_intents)]
    for spec in runs:
        warm, _, scale = spec.partition(":")
        cfg = RetrainConfig(preset="quick", warm_start=warm, **({"warm_start_lr_scale": float(scale)} if scale else {}))
        outcome = retrain_and_gate(home, initial.tag, labelled, cfg, lineage={"kind": "benchmark"}, actor="bench",
                                   promote_winner=False)
        model = get_model(home, outcome.challenger_tag)
        clf = Classifier.load(model.path)
        pred, _ = clf.predict(scarce["text"].tolist())
        row = {"run": spec, "warm_start": outcome.warm_start, "lr_scale": cfg.warm_start_lr_scale if warm == "champion"
               else None, "learning_rate": model.info.metadata["train_config"]["learning_rate"],
               "seconds": round(outcome.seconds, 1), "train_seconds": outcome.train_seconds,
               "epochs_run": model.info.metadata["epochs_run"],
               "macro_f1": outcome.challenger_metrics["macro_f1"], "accuracy": outcome.challenger_metrics["accuracy"],
               "champion_macro_f1": outcome.champion_metrics["macro_f1"],
               "champion_accuracy": outcome.champion_metrics["accuracy"], "holdout_rows": outcome.holdout_rows,
               "scarce_holdout_accuracy": sum(p == t for p, t in zip(pred, scarce["label"])) / max(len(scarce), 1),
               "feedback_train_rows": outcome.feedback_train_rows, "gate": outcome.reason}
        out["runs"].append(row)
        print(json.dumps(row), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="Banking77 folder (train.csv, test.csv).")
    parser.add_argument("--feedback", type=int, default=300, help="Labelled drift-phase requests (the demo retrains "
                        "at 300 new labels).")
    parser.add_argument("--runs", default="base,champion:0.3", help="Comma list of base | champion[:lr_scale].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-per-label", type=int, help="Cap on the well-covered intents' training rows "
                        "(the demo: none; a cap makes every run proportionally shorter).")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    args = parser.parse_args()
    out = run(args.data, args.feedback, args.runs.split(","), args.seed, args.max_train_per_label)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
