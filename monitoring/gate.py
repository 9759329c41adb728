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

from tuneloop.training.task import Task


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    metric: Literal["macro_f1", "accuracy"] | None = Field(
        None, description="Metric compared on the holdout; None: the task's primary metric (classification: macro_f1).")
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


def judge(champion: dict, challenger: dict, cfg: GateConfig, holdout_rows: int,
          primary_metric: str = "macro_f1") -> GateResult:
    """Pure verdict on two metric dicts (``accuracy``, ``macro_f1``, ...).

    Args:
        champion, challenger: each model's metrics on the same holdout.
        cfg: the gate's thresholds; ``cfg.metric`` None means ``primary_metric``.
        holdout_rows: how many rows both were scored on (for the reason).
        primary_metric: the task's primary metric.
    """
    metric = cfg.metric or primary_metric
    gain = challenger[metric] - champion[metric]
    acc_drop = champion["accuracy"] - challenger["accuracy"]
    ok = gain >= cfg.min_gain and acc_drop <= cfg.max_accuracy_drop
    reason = (f"{metric}: challenger {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
              f"(gain {gain:+.4f}, needs >= {cfg.min_gain:.4f}); accuracy {challenger['accuracy']:.4f} vs "
              f"{champion['accuracy']:.4f} (drop {acc_drop:+.4f}, allowed <= {cfg.max_accuracy_drop:.4f}) "
              f"on {holdout_rows} holdout rows -> {'promote' if ok else 'keep champion'}")
    return GateResult(champion=champion, challenger=challenger, promoted=ok, reason=reason, holdout_rows=holdout_rows)


def run_gate(task: Task, champion, challenger, holdout: pd.DataFrame, cfg: GateConfig) -> GateResult:
    """Score both predictors on ``holdout`` with ``task.evaluate`` and judge on ``task.primary_metric``
    (unless ``cfg.metric`` names another).

    Raises:
        ValueError: the holdout is empty.
    """
    if holdout.empty:
        raise ValueError("the gate needs a non-empty holdout")
    return judge(task.evaluate(champion, holdout), task.evaluate(challenger, holdout), cfg, len(holdout),
                 primary_metric=task.primary_metric)
