"""The demo's data: a scarce-intents training set, an evaluation holdout, and replay pools that
never overlap the holdout (so no text that evaluates a model can reach its training via feedback).

From Banking77's train and test splits (columns ``text``, ``label`` after loading):

* ``scarce`` intents (seeded choice) keep only ``scarce_examples`` training rows each -- a product
  that just launched features; every other intent keeps all its rows;
* the test split is cut in two halves, stratified by intent: ``holdout`` (evaluates the initial
  model and gates every challenger) and ``test_replay`` (replayed as traffic);
* replay pools: ``known`` = test_replay rows of well-covered intents; ``scarce`` = the scarce
  intents' unused training rows + their test_replay rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuneloop.training.augment import keyboard_typos
from tuneloop.training.data import stratified_split


@dataclass
class DemoPools:
    """Frames with columns ``text, label``; ``scarce_intents`` sorted."""

    initial_train: pd.DataFrame
    holdout: pd.DataFrame
    known_pool: pd.DataFrame
    scarce_pool: pd.DataFrame
    scarce_intents: list[str]

    def describe(self) -> dict:
        """Sizes and provenance, for the run report."""
        return {
            "scarce_intents": self.scarce_intents,
            "initial_train_rows": len(self.initial_train),
            "holdout_rows": len(self.holdout),
            "known_pool_rows": len(self.known_pool),
            "scarce_pool_rows": len(self.scarce_pool),
            "how": "test split halved per intent into holdout (evaluation + gate) and replay; known pool = replay "
                   "rows of well-covered intents; scarce pool = scarce intents' unused training rows + their replay "
                   "rows; holdout texts never replayed, so feedback never carries an evaluation text",
        }


def build_pools(train: pd.DataFrame, test: pd.DataFrame, scarce_intents: int, scarce_examples: int,
                seed: int, max_train_per_label: int | None = None) -> DemoPools:
    """Make the demo's training set, holdout and replay pools (see the module docstring).

    Args:
        train, test: frames with columns ``text, label``.
        scarce_intents: how many intents are made scarce (0: none).
        scarce_examples: training rows each scarce intent keeps.
        seed: seeds the intent choice and every sample.
        max_train_per_label: cap on the well-covered intents' training rows (None: all).

    Raises:
        ValueError: more scarce intents than intents, or fewer than 2 left well-covered.
    """
    labels = sorted(train["label"].unique())
    if scarce_intents > len(labels) - 2:
        raise ValueError(f"--scarce-intents {scarce_intents} leaves fewer than 2 of {len(labels)} intents well covered")
    scarce = sorted(random.Random(seed).sample(labels, scarce_intents))
    kept, unused = [], []
    for label, group in train.groupby("label", sort=True):
        group = group.sample(frac=1.0, random_state=seed)
        n = scarce_examples if label in scarce else (max_train_per_label or len(group))
        kept.append(group.iloc[:n])
        if label in scarce:
            unused.append(group.iloc[n:])
    rest, holdout = stratified_split(test, 0.5, seed)
    is_scarce = rest["label"].isin(scarce)
    scarce_pool = pd.concat(unused + [rest[is_scarce]], ignore_index=True) if scarce else rest.iloc[:0]
    holdout_texts = set(holdout["text"].str.lower())
    scarce_pool = scarce_pool[~scarce_pool["text"].str.lower().isin(holdout_texts)].reset_index(drop=True)
    return DemoPools(initial_train=pd.concat(kept, ignore_index=True), holdout=holdout.reset_index(drop=True),
                     known_pool=rest[~is_scarce].reset_index(drop=True), scarce_pool=scarce_pool,
                     scarce_intents=scarce)


def write_training_data(pools: DemoPools, data_dir: Path) -> Path:
    """Write ``train.csv`` (initial training set) and ``test.csv`` (holdout) with columns text, category."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("train", pools.initial_train), ("test", pools.holdout)):
        df.rename(columns={"label": "category"})[["text", "category"]].to_csv(data_dir / f"{name}.csv", index=False)
    return data_dir


@dataclass(frozen=True)
class Query:
    """One replayed request: the text sent, its true intent, and whether typos were added."""

    text: str
    label: str
    noisy: bool = False


def make_queries(pools: DemoPools, n: int, scarce_share: float, typo_share: float, rng: random.Random) -> list[Query]:
    """``n`` queries: each from the scarce pool with probability ``scarce_share`` (else the known
    pool), drawn with replacement, and given keyboard typos with probability ``typo_share``."""
    known = list(zip(pools.known_pool["text"], pools.known_pool["label"]))
    scarce = list(zip(pools.scarce_pool["text"], pools.scarce_pool["label"]))
    out = []
    for _ in range(n):
        text, label = rng.choice(scarce if scarce and rng.random() < scarce_share else known)
        noisy = rng.random() < typo_share
        out.append(Query(keyboard_typos(text, rng) if noisy else text, label, noisy))
    return out
