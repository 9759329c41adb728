"""Retrain a challenger on the original training data plus labelled feedback, gate it against the
champion on one holdout, and promote it when it wins.

No text that evaluates a model reaches its training: feedback is split by a hash of its request
id into a training share and a held-back share; the holdout is the original test split plus the
held-back feedback; and feedback rows whose text is in the holdout are dropped from training. Which
feedback makes a training or a holdout row, and with which columns, is the task's
(:mod:`tuneloop.monitoring.feedback_rows`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass

import pandas as pd
from pydantic import BaseModel, Field

from tuneloop.monitoring.feedback_rows import feedback_rows
from tuneloop.monitoring.gate import GateConfig, run_gate
from tuneloop.state.home import Home
from tuneloop.state.registry import get_model, promote
from tuneloop.training.config import TrainConfig, data_config
from tuneloop.training.task import task_of

log = logging.getLogger(__name__)


class RetrainConfig(BaseModel):
    """How the loop retrains. Training fields come from the champion's saved config, with the
    ``preset`` and ``overrides`` on top."""

    preset: str = Field("quick", description="Training preset for challengers (quick: minutes on CPU).")
    holdout_feedback_fraction: float = Field(0.2, ge=0, lt=1, description="Share of feedback held back for the gate.")
    feedback_weight: int = Field(3, ge=1, le=20, description="Each training feedback row is repeated this many times: "
                                 "feedback is the freshest evidence of the live distribution.")
    reference_rows: int = Field(500, ge=50, description="Recent unlabelled traffic rows the challenger's drift "
                                "reference is re-baselined on (fewer than half of them: keep the validation split).")
    gate: GateConfig = Field(default_factory=GateConfig)
    overrides: dict = Field(default_factory=dict, description="TrainConfig fields to force (e.g. epochs).")


@dataclass
class RetrainOutcome:
    """A retrain's result: tags, both holdout scores, verdict, sizes, duration (s)."""

    champion_tag: str
    challenger_tag: str
    champion_metrics: dict
    challenger_metrics: dict
    promoted: bool
    reason: str
    feedback_train_rows: int
    feedback_holdout_rows: int
    holdout_rows: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def split_feedback(labelled: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deterministically split feedback rows (``TrafficLog.labelled()``: request_id, text, true_label,
    ...) into (train, held_back) shares of about ``1 - holdout_fraction`` and ``holdout_fraction``, by a
    hash of the request id: a request always lands on the same side. Both keep every column."""
    if labelled.empty:
        return labelled.iloc[:0].copy(), labelled.iloc[:0].copy()
    bucket = labelled["request_id"].map(lambda r: int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
    held = (bucket < holdout_fraction).to_numpy()
    return labelled[~held].reset_index(drop=True), labelled[held].reset_index(drop=True)


def _reference_rows(recent_unlabelled: pd.DataFrame | None, held_back: pd.DataFrame) -> pd.DataFrame | None:
    """Rows to re-baseline the challenger's drift reference on: recent unlabelled traffic (text
    only) plus the held-back feedback rows (the task's example columns, never trained on), so the
    reference stays representative of live traffic and keeps true labels (or reference replies) for
    the feedback signals."""
    if recent_unlabelled is None or recent_unlabelled.empty:
        return None
    return pd.concat([recent_unlabelled[["text"]], held_back], ignore_index=True)


def feedback_examples(task: str, labelled: pd.DataFrame, splits, holdout_fraction: float
                      ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The rows a retrain of a ``task`` model trains on and is gated on.

    Args:
        task: the task's name (:func:`tuneloop.monitoring.feedback_rows.feedback_rows`).
        labelled: all feedback (``TrafficLog.labelled()``).
        splits: the champion's data splits (``test`` frame with the task's example columns; ``labels``).
        holdout_fraction: share of feedback requests held back for the gate (:func:`split_feedback`).

    Returns:
        (train, held_back, holdout), each with the task's example columns: the feedback training rows
        the model can learn, without texts of the holdout (case-insensitive); the held-back feedback's
        holdout rows; and the holdout = the test split + those rows.
    """
    rows = feedback_rows(task)
    fb_train, fb_held = split_feedback(labelled, holdout_fraction)
    fb_train, fb_held = rows.learnable(rows.train_rows(fb_train), splits), rows.holdout_rows(fb_held)
    holdout = pd.concat([splits.test[list(rows.columns)], fb_held], ignore_index=True)
    fb_train = fb_train[~fb_train["text"].str.lower().isin(set(holdout["text"].str.lower()))]
    return fb_train, fb_held, holdout


def retrain_and_gate(home: Home, champion_tag: str, labelled: pd.DataFrame, cfg: RetrainConfig,
                     recent_unlabelled: pd.DataFrame | None = None) -> RetrainOutcome:
    """Train a challenger, save it (not promoted), gate it, and promote it when it wins.

    Args:
        home: the tuneloop home.
        champion_tag: the serving model's tag (its saved training config is reused).
        labelled: all feedback (``TrafficLog.labelled()``); the task's :func:`feedback_rows` make
            training rows (``feedback_weight`` times each) and holdout rows of it.
        cfg: the retraining policy.
        recent_unlabelled: recent traffic rows without feedback (column ``text``): the challenger's
            drift reference is re-baselined on them (the traffic that made the old model degrade is
            the new normal); rows with feedback are left out because the challenger trained on them.
    """
    start = time.perf_counter()
    champion = get_model(home, champion_tag)
    task = task_of(dict(champion.info.metadata))
    # the champion's whole data configuration; the recipe comes from the retraining preset
    base = TrainConfig.for_preset(cfg.preset, **data_config(champion.info.metadata["train_config"]))
    # progress lines (one per 10 s off a terminal, tuneloop.training.progress) go to the monitor's log
    # a challenger needs no base-model comparison (generation's compare_base): the gate compares it with the champion
    train_cfg = base.model_copy(update={"compare_base": False, **cfg.overrides, "progress": True})
    splits = task.load_splits(train_cfg)
    fb_train, fb_held, holdout = feedback_examples(task.name, labelled, splits, cfg.holdout_feedback_fraction)
    extra = pd.concat([fb_train] * cfg.feedback_weight, ignore_index=True) if len(fb_train) else None
    log.info("retraining %s on %d rows + %d feedback rows (x%d)", champion_tag, len(splits.train), len(fb_train),
             cfg.feedback_weight)
    result = task.fine_tune(train_cfg, splits, extra_train=extra)
    challenger_tag = task.save(home, train_cfg, splits, result,
                               extra_meta={"parent": champion_tag, "feedback_rows": len(fb_train)},
                               reference_rows=_reference_rows(recent_unlabelled, fb_held))
    champion_predictor = task.load_predictor(champion.path, device=result.classifier.device)
    # both models are scored as the challenger's training run scored it (generation: its eval_rows and budget)
    verdict = run_gate(task.with_config(train_cfg), champion_predictor, result.classifier, holdout, cfg.gate)
    if verdict.promoted:
        promote(home, challenger_tag, reason=verdict.reason)
    return RetrainOutcome(
        champion_tag=champion_tag, challenger_tag=challenger_tag, champion_metrics=verdict.champion,
        challenger_metrics=verdict.challenger, promoted=verdict.promoted, reason=verdict.reason,
        feedback_train_rows=len(fb_train), feedback_holdout_rows=len(fb_held), holdout_rows=verdict.holdout_rows,
        seconds=time.perf_counter() - start,
    )
