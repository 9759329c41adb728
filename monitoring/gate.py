"""The promotion gate: a challenger replaces the champion only if it is better on the same holdout.

Modelled on TFX's Evaluator ("bless" a model only if it beats the last blessed one) and MLflow's
``MetricThreshold`` (minimum absolute change against a baseline): both models are scored on the
same holdout rows, and the challenger must gain at least ``min_gain`` on the gate metric without
losing more than ``max_accuracy_drop`` accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

from tuneloop.training.evaluate import classification_metrics
from tuneloop.training.predict import Classifier


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    metric: Literal["macro_f1", "accuracy"] = Field("macro_f1", description="Metric compared on the holdout.")
    min_gain: float = Field(0.01, ge=-1, le=1, description="Challenger must beat the champion by this much (absolute; negative tolerates a loss).")
    max_accuracy_drop: float = Field(0.0, ge=0, le=1, description="Accuracy may not fall by more than this.")


@dataclass
class GateResult:
    """Both models' holdout metrics (no per-class detail) and the verdict."""

    champion: dict
    challenger: dict
    promoted: bool
    reason: str
    holdout_rows: int


def score(clf: Classifier, holdout: pd.DataFrame) -> dict:
    """``classification_metrics`` of ``clf`` on ``holdout`` (columns text, label), without per-class detail."""
    pred, _ = clf.predict(holdout["text"].tolist())
    return classification_metrics(holdout["label"].tolist(), pred, per_class=False)


def judge(champion: dict, challenger: dict, cfg: GateConfig, holdout_rows: int) -> GateResult:
    """Pure verdict on two metric dicts (``accuracy``, ``macro_f1``, ...)."""
    gain = challenger[cfg.metric] - champion[cfg.metric]
    acc_drop = champion["accuracy"] - challenger["accuracy"]
    ok = gain >= cfg.min_gain and acc_drop <= cfg.max_accuracy_drop
    reason = (f"{cfg.metric}: challenger {challenger[cfg.metric]:.4f} vs champion {champion[cfg.metric]:.4f} "
              f"(gain {gain:+.4f}, needs >= {cfg.min_gain:.4f}); accuracy {challenger['accuracy']:.4f} vs "
              f"{champion['accuracy']:.4f} (drop {acc_drop:+.4f}, allowed <= {cfg.max_accuracy_drop:.4f}) "
              f"on {holdout_rows} holdout rows -> {'promote' if ok else 'keep champion'}")
    return GateResult(champion=champion, challenger=challenger, promoted=ok, reason=reason, holdout_rows=holdout_rows)


def run_gate(champion: Classifier, challenger: Classifier, holdout: pd.DataFrame, cfg: GateConfig) -> GateResult:
    """Score both models on ``holdout`` and judge.

    Raises:
        ValueError: the holdout is empty.
    """
    if holdout.empty:
        raise ValueError("the gate needs a non-empty holdout")
    return judge(score(champion, holdout), score(challenger, holdout), cfg, len(holdout))
