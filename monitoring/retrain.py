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
from dataclasses import asdict, dataclass, replace

import pandas as pd
from pydantic import BaseModel, Field

from tuneloop.monitoring.feedback_rows import feedback_rows, without_reviewers
from tuneloop.monitoring.gate import GateConfig, GateResult, run_gate
from tuneloop.monitoring.warm_start import DEFAULT_WARM_START, WARM_START_LR_SCALE, WarmStart, warm_start_configs
from tuneloop.state.events import GATED, EventLog
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
    exclude_reviewers: list[str] = Field(default_factory=list, max_length=1000, description="Reviewers whose "
                                         "feedback a retrain neither trains nor gates on (feedback.reviewer names; "
                                         "`--exclude-reviewer`); feedback without a reviewer is kept.")
    warm_start: WarmStart = Field(DEFAULT_WARM_START, description="champion: continue from the champion's weights "
                                  "at warm_start_lr_scale times the preset's learning rate (incremental training); "
                                  "base: start from the base model, as the champion's first run did.")
    warm_start_lr_scale: float = Field(WARM_START_LR_SCALE, gt=0, le=1, description="Learning-rate factor of a "
                                       "champion warm start.")


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
    warm_start: str = "base"  # where training started: champion or base (tuneloop.monitoring.warm_start)
    train_seconds: float | None = None  # of which fine-tuning (s)
    shadow_pending: bool = False  # passed the gate; pending in the shadow stage, not promoted (GateConfig.shadow)

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
    holdout = pd.concat([base_holdout(task, splits), fb_held], ignore_index=True)
    fb_train = fb_train[~fb_train["text"].str.lower().isin(set(holdout["text"].str.lower()))]
    return fb_train, fb_held, holdout


def base_holdout(task: str, splits) -> pd.DataFrame:
    """The test split of ``splits`` with the example columns of ``task`` (:func:`feedback_rows`): the
    part of every gate's holdout that needs no feedback."""
    return splits.test[list(feedback_rows(task).columns)]


def retrain_config(champion, cfg: RetrainConfig) -> TrainConfig:
    """The TrainConfig a retrain of the stored model ``champion`` trains with: the champion's whole data
    configuration (:func:`tuneloop.training.config.data_config`), the recipe of ``cfg.preset``, and
    ``cfg.overrides`` on top. Progress lines (one per 10 s off a terminal) go to the caller's log; no
    base-model comparison (generation's ``compare_base``): the gate compares with the champion."""
    base = TrainConfig.for_preset(cfg.preset, **data_config(champion.info.metadata["train_config"]))
    return base.model_copy(update={"compare_base": False, **cfg.overrides, "progress": True})


def feedback_lineage(labelled: pd.DataFrame, train_rows: int, holdout_rows: int) -> dict:
    """What a challenger learnt from, for its lineage: the feedback rows a retrain received.

    Args:
        labelled: the feedback the retrain used (``TrafficLog.labelled()`` columns, feedback order;
            ``reviewer`` where the store records it).
        train_rows, holdout_rows: how many of them became training rows and held-back holdout rows.

    Returns:
        ``{"rows", "train_rows", "holdout_rows", "reviewers"`` (sorted names; ``[]`` without the column),
        ``"request_ids"`` (``{"first", "last"}`` in feedback order), ``"request_seq"`` and
        ``"feedback_seq"`` (``[min, max]`` of the predictions' and the feedback rows' seq)``}``; the
        ranges are None without feedback.
    """
    def seq_range(column: str) -> list[int] | None:
        return [int(labelled[column].min()), int(labelled[column].max())] if len(labelled) else None

    reviewers = labelled["reviewer"].dropna().astype(str) if "reviewer" in labelled.columns else pd.Series([], dtype=str)
    return {"rows": len(labelled), "train_rows": int(train_rows), "holdout_rows": int(holdout_rows),
            "reviewers": sorted(set(reviewers)),
            "request_ids": ({"first": str(labelled["request_id"].iloc[0]), "last": str(labelled["request_id"].iloc[-1])}
                            if len(labelled) else None),
            "request_seq": seq_range("seq"), "feedback_seq": seq_range("feedback_seq")}


def record_gate(home: Home, challenger_tag: str, verdict: GateResult, actor: str) -> int:
    """Append the ``gated`` event of ``challenger_tag`` (detail: both metric dicts, promoted,
    holdout_rows) to the home's event log; returns its id."""
    return EventLog(home.store_url).record(GATED, verdict.reason, tag=challenger_tag, actor=actor, detail={
        "champion": verdict.champion, "challenger": verdict.challenger, "promoted": verdict.promoted,
        "holdout_rows": verdict.holdout_rows})


def gate_stored(home: Home, champion_tag: str, challenger_tag: str, cfg: RetrainConfig) -> GateResult:
    """Gate two stored models of one task on the champion's holdout: the test split of its data, read as a
    retrain of it would (:func:`retrain_config`), both scored as that retrain's run would score them.

    For ``tuneloop models promote``; records nothing.

    Raises:
        tuneloop.state.registry.ModelNotFoundError: a tag is not in the store.
        ValueError: the two models are of different tasks, or the holdout is empty.
        tuneloop.training.data.DataError: the champion's training data cannot be read.
    """
    champion, challenger = get_model(home, champion_tag), get_model(home, challenger_tag)
    task, other = task_of(dict(champion.info.metadata)), task_of(dict(challenger.info.metadata))
    if task.name != other.name:
        raise ValueError(f"{challenger_tag} is a {other.name} model and {champion_tag} a {task.name} model: "
                         "the gate compares models of one task")
    train_cfg = retrain_config(champion, cfg)
    holdout = base_holdout(task.name, task.load_splits(train_cfg))
    return run_gate(task.with_config(train_cfg), task.load_predictor(champion.path),
                    task.load_predictor(challenger.path), holdout, cfg.gate)


def retrain_and_gate(home: Home, champion_tag: str, labelled: pd.DataFrame, cfg: RetrainConfig,
                     recent_unlabelled: pd.DataFrame | None = None, lineage: dict | None = None,
                     actor: str = "monitor", promote_winner: bool = True) -> RetrainOutcome:
    """Train a challenger, save it (not promoted), gate it, and promote it when it wins (with
    ``cfg.gate.shadow.enabled``, leave a winner pending instead, ``shadow_pending``: the caller starts the
    shadow stage, :func:`tuneloop.monitoring.shadow.begin`).

    Args:
        home: the tuneloop home.
        champion_tag: the serving model's tag (its saved training config is reused).
        labelled: all feedback (``TrafficLog.labelled()``); the task's :func:`feedback_rows` make
            training rows (``feedback_weight`` times each) and holdout rows of it.
        cfg: the retraining policy.
        recent_unlabelled: recent traffic rows without feedback (column ``text``): the challenger's
            drift reference is re-baselined on them (the traffic that made the old model degrade is
            the new normal); rows with feedback are left out because the challenger trained on them.
        lineage: what triggered the retrain (``{"kind": "drift" | "schedule" | "manual" | "job", ...}``:
            the decision's window seq range, the fired signals, ... when known); None: ``{"kind":
            "manual"}``. Saved in the challenger's metadata as ``lineage.trigger``, beside the feedback it
            used (:func:`feedback_lineage`), its data hash and its parent.
        actor: who retrains (``monitor``, ``retrain``), for the ``gated`` and ``promoted`` events.
        promote_winner: False: gate only, never promote (a measurement such as the demo's warm-start
            comparison); the outcome's ``promoted`` is then False and its reason says so.

    Training starts where ``cfg.warm_start`` says (:func:`tuneloop.monitoring.warm_start.warm_start_configs`);
    the challenger's metadata records it under ``warm_start``.
    """
    start = time.perf_counter()
    labelled = without_reviewers(labelled, cfg.exclude_reviewers)  # excluded reviewers: neither trained nor gated on
    champion = get_model(home, champion_tag)
    task = task_of(dict(champion.info.metadata))
    # the champion's whole data configuration; the recipe comes from the retraining preset
    train_cfg = retrain_config(champion, cfg)
    splits = task.load_splits(train_cfg)
    fb_train, fb_held, holdout = feedback_examples(task.name, labelled, splits, cfg.holdout_feedback_fraction)
    extra = pd.concat([fb_train] * cfg.feedback_weight, ignore_index=True) if len(fb_train) else None
    log.info("retraining %s on %d rows + %d feedback rows (x%d)", champion_tag, len(splits.train), len(fb_train),
             cfg.feedback_weight)
    # a classifier head maps output i to label i (its label list must match); a causal LM has no such head
    fit_cfg, saved_cfg, warm = warm_start_configs(
        train_cfg, cfg.warm_start, str(champion.path), dict(champion.info.metadata),
        splits.labels if task.name == "classification" else None, cfg.warm_start_lr_scale)
    result = task.fine_tune(fit_cfg, splits, extra_train=extra)
    challenger_tag = task.save(home, saved_cfg, splits, result,
                               extra_meta={"parent": champion_tag, "feedback_rows": len(fb_train), "warm_start": warm,
                                           "lineage": {
                                               "trigger": lineage or {"kind": "manual"}, "parent": champion_tag,
                                               "feedback": feedback_lineage(labelled, len(fb_train), len(fb_held)),
                                               "data_sha256": splits.report.train_sha256}},
                               reference_rows=_reference_rows(recent_unlabelled, fb_held))
    champion_predictor = task.load_predictor(champion.path, device=result.classifier.device)
    # both models are scored as the challenger's training run scored it (generation: its eval_rows and budget)
    verdict = run_gate(task.with_config(train_cfg), champion_predictor, result.classifier, holdout, cfg.gate)
    if verdict.promoted and EventLog(home.store_url).is_blocked(challenger_tag):  # rolled back once: never again
        verdict = replace(verdict, promoted=False, reason=f"{verdict.reason}; {challenger_tag} is blocked: keep champion")
    record_gate(home, challenger_tag, verdict, actor)
    # with the shadow stage on, a winner waits for its verdict on live traffic (tuneloop.monitoring.shadow)
    shadow = verdict.promoted and promote_winner and cfg.gate.shadow.enabled
    if verdict.promoted and promote_winner and not shadow:
        promote(home, challenger_tag, reason=verdict.reason, actor=actor, detail={"gate": "passed"})
    return RetrainOutcome(
        champion_tag=champion_tag, challenger_tag=challenger_tag, champion_metrics=verdict.champion,
        challenger_metrics=verdict.challenger, promoted=verdict.promoted and promote_winner and not shadow,
        shadow_pending=shadow,
        reason=verdict.reason + ("" if promote_winner or not verdict.promoted else " (not promoted: gate only)"),
        feedback_train_rows=len(fb_train), feedback_holdout_rows=len(fb_held), holdout_rows=verdict.holdout_rows,
        seconds=time.perf_counter() - start, warm_start=warm["warm_start"], train_seconds=round(result.seconds, 2),
    )
