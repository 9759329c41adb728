"""The promotion gate: a challenger replaces the champion only if it is better on the same holdout.

Modelled on TFX's Evaluator ("bless" a model only if it beats the last blessed one) and MLflow's
``MetricThreshold`` (minimum absolute change against a baseline): both models are scored on the
same holdout rows, and the challenger must gain at least ``min_gain`` on the gate metric without
getting worse on the task's guard metric by more than its tolerance: classification guards accuracy
(higher is better, ``max_accuracy_drop``), generation guards the holdout perplexity of the reference
replies (lower is better, ``max_perplexity_rise``). A task names its guard with ``guard_metric`` and
``guard_higher_is_better``; a task without them is guarded on accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tuneloop.serving.generation import DEFAULT_MAX_NEW_TOKENS
from tuneloop.training.task import Task

DEFAULT_GUARD = "accuracy"  # the guard of a task that names none (classification's)
GUARD_TOLERANCES = {"accuracy": "max_accuracy_drop", "perplexity": "max_perplexity_rise"}  # guard -> GateConfig field


class ShadowConfig(BaseModel):
    """The gate's optional shadow stage (:mod:`tuneloop.monitoring.shadow`): a challenger that passed the
    holdout gate answers a sample of live requests in shadow (computed by the monitor on logged requests,
    never returned to a client) and is promoted only if its agreement with reviewers' feedback on them is
    >= the champion's minus ``tolerance``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Keep a challenger that passed the holdout gate pending, in shadow, "
                          "instead of promoting it at once.")
    sample_share: float = Field(0.2, gt=0, le=1, description="Share of live requests (logged after the challenger "
                                "was saved) the challenger answers in shadow; a seeded hash of the request id picks them.")
    min_rows: int = Field(100, ge=1, le=100_000, description="Shadowed requests with reviewer feedback needed before "
                          "the verdict.")
    max_wait_windows: int = Field(20, ge=1, le=10_000, description="Judged windows to wait for min_rows; then the "
                                  "challenger is dropped.")
    tolerance: float = Field(0.0, ge=0, le=1, description="Promote when challenger agreement >= champion agreement "
                             "- tolerance (accuracy, or ROUGE-L for generation; 0..1).")
    max_rows_per_window: int = Field(64, ge=1, le=10_000, description="Requests answered in shadow per window at "
                                     "most (bounds the monitor's extra work per cycle).")
    max_kept: int = Field(2000, ge=1, le=20_000, description="Shadow answers kept in the monitor state at most.")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=4096, description="generation: token budget of a "
                                "shadow reply (default: the service's default budget).")
    seed: int = Field(0, description="Seed of the request sample.")


class GateConfig(BaseModel):
    """When a challenger may replace the champion."""

    metric: Literal["macro_f1", "accuracy", "rougeL", "rouge1", "rouge2", "bleu", "chrf"] | None = Field(
        None, description="Metric compared on the holdout (higher is better); None: the task's primary metric "
        "(classification: macro_f1; generation: rougeL).")
    min_gain: float = Field(0.01, ge=-1, le=1, description="Challenger must beat the champion by this much (absolute; negative tolerates a loss).")
    max_accuracy_drop: float = Field(0.0, ge=0, le=1, description="Accuracy may not fall by more than this.")
    max_perplexity_rise: float = Field(0.0, ge=0, description="generation: the holdout perplexity of the reference "
                                       "replies may not rise by more than this (absolute; 0: must not get worse).")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig, description="The optional shadow stage on live "
                                 "traffic after the holdout gate (off by default).")

    def guard_tolerance(self, metric: str) -> float:
        """How much the guard ``metric`` may worsen: ``max_accuracy_drop`` for accuracy, ``max_perplexity_rise``
        for perplexity.

        Raises:
            ValueError: no tolerance is configured for ``metric``.
        """
        if metric not in GUARD_TOLERANCES:
            raise ValueError(f"the gate has no tolerance for guard metric {metric!r}; it knows {sorted(GUARD_TOLERANCES)}")
        return getattr(self, GUARD_TOLERANCES[metric])


@dataclass
class GateResult:
    """Both models' holdout metrics (no per-class detail) and the verdict."""

    champion: dict
    challenger: dict
    promoted: bool
    reason: str
    holdout_rows: int


def judge(champion: dict, challenger: dict, cfg: GateConfig, holdout_rows: int,
          primary_metric: str = "macro_f1", guard_metric: str = DEFAULT_GUARD,
          guard_higher_is_better: bool = True) -> GateResult:
    """Pure verdict on two metric dicts (``accuracy``, ``macro_f1``, ``rougeL``, ``perplexity``, ...).

    The challenger is promoted when it gains at least ``cfg.min_gain`` on the gate metric (higher is
    better) and its guard metric is not worse than the champion's by more than
    ``cfg.guard_tolerance(guard_metric)`` (a drop when higher is better, a rise when lower is better).

    Args:
        champion, challenger: each model's metrics on the same holdout; both hold the gate and guard metrics.
        cfg: the gate's thresholds; ``cfg.metric`` None means ``primary_metric``.
        holdout_rows: how many rows both were scored on (for the reason).
        primary_metric: the task's primary metric.
        guard_metric: the task's guard metric (classification: accuracy; generation: perplexity).
        guard_higher_is_better: its direction.

    Raises:
        KeyError: a metric dict lacks the gate or guard metric.
        ValueError: no tolerance is configured for ``guard_metric``.
    """
    metric = cfg.metric or primary_metric
    gain = challenger[metric] - champion[metric]
    guard, allowed = guard_metric, cfg.guard_tolerance(guard_metric)
    if guard_higher_is_better:
        worse, word = champion[guard] - challenger[guard], "drop"
    else:
        worse, word = challenger[guard] - champion[guard], "rise"
    ok = gain >= cfg.min_gain and worse <= allowed
    reason = (f"{metric}: challenger {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
              f"(gain {gain:+.4f}, needs >= {cfg.min_gain:.4f}); {guard} {challenger[guard]:.4f} vs "
              f"{champion[guard]:.4f} ({word} {worse:+.4f}, allowed <= {allowed:.4f}) "
              f"on {holdout_rows} holdout rows -> {'promote' if ok else 'keep champion'}")
    return GateResult(champion=champion, challenger=challenger, promoted=ok, reason=reason, holdout_rows=holdout_rows)


def run_gate(task: Task, champion, challenger, holdout: pd.DataFrame, cfg: GateConfig) -> GateResult:
    """Score both predictors on ``holdout`` with ``task.evaluate`` and judge on ``task.primary_metric``
    (unless ``cfg.metric`` names another), guarded by the task's ``guard_metric`` in the direction of
    its ``guard_higher_is_better`` (defaults: accuracy, higher is better).

    Raises:
        ValueError: the holdout is empty.
    """
    if holdout.empty:
        raise ValueError("the gate needs a non-empty holdout")
    return judge(task.evaluate(champion, holdout), task.evaluate(challenger, holdout), cfg, len(holdout),
                 primary_metric=task.primary_metric, guard_metric=getattr(task, "guard_metric", DEFAULT_GUARD),
                 guard_higher_is_better=getattr(task, "guard_higher_is_better", True))
