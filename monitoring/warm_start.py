"""Where a challenger's training starts: the champion's weights (``warm_start: champion``) or the base
model (``warm_start: base``).

Continuing from the deployed model with a smaller learning rate is what the fine-tuning literature calls
incremental (or continual) training: the model keeps what it learned and adapts to the new rows, here the
original training data plus the feedback (the original data replayed, so it forgets little: "rehearsal",
Robins 1995, "Catastrophic forgetting, rehearsal and pseudorehearsal"). Starting from the base model
repeats the champion's own training on more data.

A champion's model folder is a complete model (classification: encoder + classifier head; generation:
the LoRA adapters merged into the weights), so the start is that folder used as ``base_model`` of the
training run that fits the challenger; nothing is downloaded. The challenger's *saved* training config
keeps the champion's own ``base_model`` (its lineage says where its weights started), so that a later
``warm_start: base`` retrain still starts from the real base model.
"""

from __future__ import annotations

import logging
from typing import Literal

from tuneloop.training.config import TrainConfig

log = logging.getLogger(__name__)

WarmStart = Literal["champion", "base"]
# Chosen by measurement (README, "Scheduled and incremental retraining"; benchmarks/warm_start_bench.py, the
# demo's Banking77 setting capped at 30 rows per well-covered intent, 300 feedback labels, one seed, a busy
# 2-core machine): base 0.9045 holdout macro F1 in 838 s (3 epochs), champion at 0.3x the learning rate
# 0.8955 in 607 s (early-stopped after 2). The gate needs +0.01 and the demo's retrain won by +0.013, so the
# 0.009 macro F1 matters more than the minutes saved: base stays the default, champion is the option.
DEFAULT_WARM_START: WarmStart = "base"
# The learning rate of a warm-started run is the preset's times this: the champion has converged already,
# and a full learning rate would move it far from what it learned (incremental fine-tuning uses a smaller
# rate than the first run).
WARM_START_LR_SCALE = 0.3


def warm_start_configs(train_cfg: TrainConfig, warm_start: WarmStart, champion_dir: str, champion_meta: dict,
                       labels: list[str] | None, lr_scale: float = WARM_START_LR_SCALE
                       ) -> tuple[TrainConfig, TrainConfig, dict]:
    """The configs of a challenger's run: the one it trains with and the one saved with it.

    Args:
        train_cfg: the retrain's config (the champion's data config, the preset's recipe, the overrides).
        warm_start: ``champion``: start from the champion's weights at ``lr_scale`` times the learning
            rate; ``base``: start from ``train_cfg.base_model`` as the champion's first run did.
        champion_dir: the champion's model folder (a full ``save_pretrained`` model).
        champion_meta: its metadata (``labels`` for classification; ``train_config`` for its pooling).
        labels: the challenger's label list (classification; None for generation). A classifier head
            maps output i to ``labels[i]``: when the champion's labels differ, its head cannot be
            continued, and the run starts from the base model instead (said in the returned record).
        lr_scale: the learning-rate factor of a champion start, in (0, 1].

    Returns:
        ``(fit_cfg, saved_cfg, record)``: ``fit_cfg`` trains (``base_model`` = ``champion_dir`` for a
        champion start); ``saved_cfg`` is the same but with the original ``base_model``; ``record`` is
        ``{"warm_start": "champion"|"base", "requested": ..., "learning_rate": ...}`` plus ``"reason"``
        when the request could not be honoured.

    Raises:
        ValueError: ``lr_scale`` is not in (0, 1], or ``warm_start`` is unknown.
    """
    if not 0 < lr_scale <= 1:
        raise ValueError(f"warm-start learning-rate scale {lr_scale} must be in (0, 1]")
    if warm_start not in ("champion", "base"):
        raise ValueError(f"warm_start {warm_start!r}: use champion or base")
    record: dict = {"warm_start": "base", "requested": warm_start, "learning_rate": train_cfg.learning_rate}
    if warm_start == "base":
        return train_cfg, train_cfg, record
    champion_labels = champion_meta.get("labels")
    if labels is not None and champion_labels is not None and list(champion_labels) != list(labels):
        record["reason"] = (f"the champion's {len(champion_labels)} labels differ from the data's {len(labels)}: "
                            "its classifier head cannot be continued, so training starts from the base model")
        log.warning("warm start champion: %s", record["reason"])
        return train_cfg, train_cfg, record
    update: dict = {"learning_rate": train_cfg.learning_rate * lr_scale}
    pooling = (champion_meta.get("train_config") or {}).get("pooling")
    if labels is not None and pooling in ("mean", "cls"):
        update["pooling"] = pooling  # the head was trained on this sentence vector: keep it
    saved_cfg = train_cfg.model_copy(update=update)
    fit_cfg = saved_cfg.model_copy(update={"base_model": str(champion_dir)})
    record.update(warm_start="champion", learning_rate=saved_cfg.learning_rate)
    return fit_cfg, saved_cfg, record
