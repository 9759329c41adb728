"""Replay streams for the drift benchmark, with a real champion's outputs (no synthetic predictions).

Setup (cached under ``--cache``, built once, ~5-10 min on 2 CPU cores):

1. the demo's pools (``tuneloop.apps.demo_data.build_pools``: 10 seeded intents keep 5 training rows
   each; the test split is halved per intent into a holdout and replay pools);
2. the demo's initial champion: the quick preset trained on that training set (``tuneloop.training.train``);
3. the champion's outputs -- predicted label, top-1 confidence and sentence embedding (the same
   mean-pooled encoder state the monitor uses) -- for every replay-pool text, for ``TYPO_VARIANTS``
   keyboard-typo variants of each (``tuneloop.training.augment.keyboard_typos``, as the demo makes them), and for
   the reference sample; and the CBPE calibration the monitor would load.

A stream is a list of row ids into that table, so thousands of windows are judged without running
the model again. Scenarios (each seeded per run): in-distribution = replay queries of the
well-covered intents (the demo's ``in_distribution`` phase); after the onset, (a) the demo's drift
(60 % scarce intents, 30 % typos), (b) typos on 30 % of queries, (c) queries of 10 random intents only.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TYPO_VARIANTS = 3  # typo variants per pool text (a query gets one at random)
SCENARIOS = ("in_distribution", "scarce_intents", "typos", "label_mix")


@dataclass
class BenchData:
    """The champion's outputs. ``rows``: one row per (pool text, variant) with columns pool (known |
    scarce), text, true_label, label, confidence, variant (-1 clean, else typo variant); ``emb``: (n, d)."""

    rows: pd.DataFrame
    emb: np.ndarray
    reference: pd.DataFrame
    reference_emb: np.ndarray
    calibration: object
    vocab: set[str]
    model_tag: str
    scarce_intents: list[str]


def _outputs(clf, texts: list[str], batch_size: int = 64) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Predicted labels, confidences and embeddings in one forward pass per batch."""
    from tuneloop.monitoring.embeddings import embed_texts

    pred, conf = clf.predict(texts, batch_size=batch_size)
    return pred, conf, embed_texts(clf, texts, batch_size=batch_size)


def prepare(data_dir: Path, cache_dir: Path, seed: int = 0, log=print) -> BenchData:
    """Train (or reuse) the demo's champion and tabulate its outputs (see the module docstring)."""
    from tuneloop.apps.demo import load_banking77
    from tuneloop.apps.demo_data import build_pools, write_training_data
    from tuneloop.monitoring.drift import load_reference
    from tuneloop.monitoring.performance import load_calibration
    from tuneloop.state.home import Home
    from tuneloop.state.registry import REFERENCE_FILE, get_model, read_champion
    from tuneloop.training.augment import keyboard_typos
    from tuneloop.training.config import TrainConfig
    from tuneloop.training.predict import Classifier
    from tuneloop.training.train import train

    cache_dir = Path(cache_dir)
    train_df, test_df = load_banking77(str(data_dir))
    pools = build_pools(train_df, test_df, scarce_intents=10, scarce_examples=5, seed=seed)
    home = Home(cache_dir / "home")
    if read_champion(home) is None:
        log(f"training the demo's champion (quick preset) into {home.root} ...")
        shutil.rmtree(home.root, ignore_errors=True)
        data = write_training_data(pools, cache_dir / "data")
        train(TrainConfig.for_preset("quick", data=str(data), seed=seed, progress=False), home.ensure())
    tag = read_champion(home).tag
    model_dir = Path(get_model(home, tag).path)
    reference = load_reference(model_dir / REFERENCE_FILE)
    table = cache_dir / f"outputs-{tag.split(':')[-1]}.parquet"
    clf = Classifier.load(model_dir, device="cpu")
    if not table.exists():
        rng = random.Random(seed)
        parts = []
        for pool_name, pool in (("known", pools.known_pool), ("scarce", pools.scarce_pool)):
            for variant in range(-1, TYPO_VARIANTS):
                texts = pool["text"].tolist() if variant < 0 else [keyboard_typos(t, rng) for t in pool["text"]]
                parts.append(pd.DataFrame({"pool": pool_name, "text": texts, "true_label": pool["label"].tolist(),
                                           "variant": variant, "source": np.arange(len(pool))}))
        rows = pd.concat(parts, ignore_index=True)
        log(f"champion {tag}: outputs for {len(rows)} replay texts + {len(reference)} reference texts ...")
        pred, conf, emb = _outputs(clf, rows["text"].tolist())
        rows["label"], rows["confidence"] = pred, conf
        ref_emb = _outputs(clf, reference["text"].astype(str).tolist())[2]
        rows.to_parquet(table)
        np.save(table.with_suffix(".emb.npy"), emb)
        np.save(table.with_suffix(".ref_emb.npy"), ref_emb)
    rows = pd.read_parquet(table)
    return BenchData(rows=rows, emb=np.load(table.with_suffix(".emb.npy")), reference=reference,
                     reference_emb=np.load(table.with_suffix(".ref_emb.npy")),
                     calibration=load_calibration(model_dir, reference), vocab=set(clf.tokenizer.get_vocab()),
                     model_tag=tag, scarce_intents=pools.scarce_intents)


class StreamMaker:
    """Draws seeded request streams (row ids into ``BenchData.rows``)."""

    def __init__(self, data: BenchData) -> None:
        rows = data.rows
        self.n_sources = {p: int(rows.loc[rows["pool"] == p, "source"].max()) + 1 for p in ("known", "scarce")}
        self.index = {(p, s, v): i for i, (p, s, v) in enumerate(zip(rows["pool"], rows["source"], rows["variant"]))}
        known = rows[(rows["pool"] == "known") & (rows["variant"] == -1)]
        self.known_by_intent = known.groupby("true_label")["source"].apply(list).to_dict()

    def _row(self, rng: np.random.Generator, pool: str, source: int, typo_share: float) -> int:
        variant = int(rng.integers(TYPO_VARIANTS)) if rng.random() < typo_share else -1
        return self.index[(pool, source, variant)]

    def queries(self, scenario: str, n: int, rng: np.random.Generator) -> list[int]:
        """``n`` row ids of one scenario (drawn with replacement, like the demo's replay)."""
        if scenario == "in_distribution":
            return [self._row(rng, "known", int(rng.integers(self.n_sources["known"])), 0.0) for _ in range(n)]
        if scenario == "scarce_intents":  # the demo's drift phase: 60 % scarce intents, 30 % typos
            return [self._row(rng, "scarce", int(rng.integers(self.n_sources["scarce"])), 0.3) if rng.random() < 0.6
                    else self._row(rng, "known", int(rng.integers(self.n_sources["known"])), 0.3) for _ in range(n)]
        if scenario == "typos":
            return [self._row(rng, "known", int(rng.integers(self.n_sources["known"])), 0.3) for _ in range(n)]
        if scenario == "label_mix":  # all traffic from 10 random well-covered intents
            intents = rng.choice(sorted(self.known_by_intent), size=10, replace=False)
            sources = [s for i in intents for s in self.known_by_intent[i]]
            return [self._row(rng, "known", int(rng.choice(sources)), 0.0) for _ in range(n)]
        raise ValueError(f"unknown scenario {scenario!r}; choose from {SCENARIOS}")


def window_frame(data: BenchData, ids: list[int], feedback: np.ndarray) -> pd.DataFrame:
    """The monitor's view of a window: text, predicted label, confidence, true_label where fed back."""
    rows = data.rows.iloc[ids]
    return pd.DataFrame({"text": rows["text"].to_numpy(), "label": rows["label"].to_numpy(),
                         "confidence": rows["confidence"].to_numpy(),
                         "true_label": np.where(feedback, rows["true_label"].to_numpy(), None)})
