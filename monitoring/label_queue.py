"""The queue of requests most worth labelling: when the monitor finds the model degraded but has too
few labels to retrain (``need_labels``), a reviewer should label these first.

Usefulness of an unlabelled request = the mean of two percentile ranks within the window:

* uncertainty, ``1 - confidence``: the model itself doubts its answer (uncertainty sampling);
* novelty, ``1 - cosine similarity to the nearest reference text`` in the champion's embedding space:
  the request lies where the reference (and so the training data) has nothing -- the drifted part.

The queue is rewritten every judged window to ``<home>/label_queue.json``: ``{"created_at",
"champion", "window", "items": [{"request_id", "text", "label", "confidence", "novelty", "score"}]}``,
best first, each item also with the answering ``model_tag`` and (generation) the model's ``reply``
when the window has them. Label them through ``POST /feedback``, or in Label Studio
(``tuneloop labels export`` / ``import``, :mod:`tuneloop.monitoring.label_studio`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

QUEUE_FILE = "label_queue.json"
# Chosen default queue length; equal to DriftPolicy's default min_new_labels (50), so labelling one full
# queue is enough feedback for a retrain.
DEFAULT_QUEUE_SIZE = 50
QUEUE_COLUMNS = ["request_id", "text", "label", "confidence", "novelty", "score"]
QUEUE_EXTRA_COLUMNS = ["model_tag", "reply"]  # kept when the window has them (a reviewer sees what the model said)
# A traffic row has feedback when any of these is known: a true label (classification), a corrected reply or
# a rating (generation).
FEEDBACK_COLUMNS = ("true_label", "true_reply", "rating")


def has_feedback(frame: pd.DataFrame) -> np.ndarray:
    """Per row of ``frame``: True where any of :data:`FEEDBACK_COLUMNS` it has is known; shape (len(frame),)."""
    mask = np.zeros(len(frame), dtype=bool)
    for column in FEEDBACK_COLUMNS:
        if column in frame.columns:
            mask |= frame[column].notna().to_numpy()
    return mask


def rank_for_labelling(window: pd.DataFrame, novelty: np.ndarray | None,
                       size: int = DEFAULT_QUEUE_SIZE) -> pd.DataFrame:
    """The ``size`` most useful unlabelled rows of a window, best first.

    Args:
        window: rows with ``request_id, text, label, confidence`` and feedback columns (:data:`FEEDBACK_COLUMNS`,
            None where none came): rows with feedback are left out.
        novelty: per row of ``window``, 1 - nearest-reference cosine similarity, shape (n,); None: rank
            by uncertainty alone.
        size: queue length.

    Returns:
        DataFrame with columns ``request_id, text, label, confidence, novelty, score`` (score 0..1),
        then those of :data:`QUEUE_EXTRA_COLUMNS` that ``window`` has with at least one value.
    """
    frame = window.reset_index(drop=True).copy()
    frame["novelty"] = np.nan if novelty is None else np.asarray(novelty, dtype=float)
    frame = frame[~has_feedback(frame)]
    columns = QUEUE_COLUMNS + [c for c in QUEUE_EXTRA_COLUMNS if c in frame.columns and frame[c].notna().any()]
    if frame.empty:
        return frame.assign(score=[])[QUEUE_COLUMNS]
    uncertainty = (1 - frame["confidence"].astype(float)).rank(pct=True)
    score = uncertainty if novelty is None else (uncertainty + frame["novelty"].rank(pct=True)) / 2
    frame["score"] = score.to_numpy()
    return frame.sort_values("score", ascending=False, kind="stable").head(size)[columns].reset_index(drop=True)


def write_queue(path: Path, queue: pd.DataFrame, champion: str, window: str) -> None:
    """Replace the queue file atomically."""
    path = Path(path)
    items = json.loads(queue.to_json(orient="records"))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"created_at": time.time(), "champion": champion, "window": window,
                               "items": items}, indent=1))
    tmp.replace(path)


def read_queue(path: Path) -> dict:
    """The last queue written (``{"items": []}`` when there is none yet)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"items": []}
