"""The model and data of ``serve_bench.py``: a MiniLM classifier fine-tuned on Banking77, trained
once into a benchmark home and reused, and the Banking77 test queries.

The model is trained with the ``quick`` preset on at most 40 examples per intent for 2 epochs
(a few minutes on 2 cores): serving speed does not depend on how well the head is trained, but the
int8 accuracy figure needs a trained model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuneloop.state.home import Home
from tuneloop.state.registry import get_model, read_champion

log = logging.getLogger(__name__)

TRAIN_OVERRIDES = {"max_train_per_label": 40, "epochs": 2, "progress": False}  # quick preset, capped


@dataclass(frozen=True)
class BenchModel:
    """The benchmark's champion: its tag, folder and test accuracy (from its training run)."""

    tag: str
    path: Path
    test_accuracy: float | None


def test_queries(data_dir: Path) -> tuple[list[str], list[str]]:
    """Banking77 test texts and their intents, in file order."""
    df = pd.read_csv(Path(data_dir) / "test.csv")
    return df["text"].astype(str).tolist(), df["category"].astype(str).tolist()


def ensure_model(home: Home, data_dir: Path) -> BenchModel:
    """The champion of ``home``; trains one first (quick preset, see module docstring) if there is none."""
    pointer = read_champion(home)
    if pointer is None:
        from tuneloop.training.config import TrainConfig
        from tuneloop.training.train import train

        log.warning("no model in %s: training one (quick preset, %s); this happens once", home.root, TRAIN_OVERRIDES)
        train(TrainConfig.for_preset("quick", data=str(data_dir), **TRAIN_OVERRIDES), home.ensure())
        pointer = read_champion(home)
    stored = get_model(home, pointer.tag)
    metrics = stored.info.metadata.get("metrics", {})
    test = metrics.get("test", metrics)
    accuracy = test.get("accuracy", test.get("test_accuracy")) if isinstance(test, dict) else None
    return BenchModel(tag=pointer.tag, path=Path(stored.path), test_accuracy=accuracy)


def reset_traffic(home: Home) -> None:
    """Delete the benchmark home's traffic database (every run starts from an empty log)."""
    for path in home.root.glob("traffic.db*"):
        path.unlink()


def copy_as_new_version(home: Home, model: BenchModel) -> str:
    """Save the benchmark model's files again as a new version (a new tag to hot-swap to)."""
    import shutil

    from tuneloop.state.registry import save_model

    stored = get_model(home, model.tag)

    def write(path: Path) -> None:
        shutil.copytree(model.path, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml"))

    return save_model(home, write, metadata=dict(stored.info.metadata), labels={"copy_of": model.tag.split(":")[1]})
