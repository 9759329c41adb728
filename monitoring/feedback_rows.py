"""Feedback as training and holdout rows, per task: what a retrain learns from the labelled traffic
(``TrafficLog.labelled()``) and what the gate scores it on.

One small class per task, looked up by the task's name with :func:`feedback_rows` (the retraining side of
the task seam; it belongs with :class:`tuneloop.training.task.Task` once the training tasks carry
``example_columns`` and a ``feedback_rows`` method, and then this module goes):

* classification: a row with a true label trains and evaluates as (``text``, ``label`` = the true label);
  labels the model does not have are not trained on (a classifier cannot learn a new class);
* generation: a row trains as (``text``, ``reply``) with ``reply`` = the reviewer's corrected reply, or the
  model's own reply when it was rated good (+1) and not corrected; a row rated bad without a correction
  is not trained on (nothing says what the reply should have been). Only corrected replies evaluate.
  ``label`` (the group) is ``feedback``, as ``tuneloop.training.gen_train`` marks feedback rows.
"""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd

FEEDBACK_GROUP = "feedback"  # the label (group) of generation rows that come from feedback


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """``frame[name]`` with empty strings as missing (all missing without the column)."""
    if name not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    col = frame[name]
    return col.where(col.notna() & (col.astype(str).str.strip() != ""), None)


class FeedbackRows(Protocol):
    """How one task turns feedback into example rows (see the module docstring)."""

    name: str
    columns: tuple[str, ...]  # an example row's columns: the test split's, the holdout's, extra_train's

    def train_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """Training rows (``columns``) from feedback rows (``TrafficLog.labelled()`` columns)."""

    def holdout_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """Holdout rows (``columns``) from held-back feedback rows."""

    def learnable(self, rows: pd.DataFrame, splits: Any) -> pd.DataFrame:
        """The training rows a model trained on ``splits`` (a ``DataSplits``) can learn from."""


class ClassificationFeedback:
    """Feedback of a classifier: (text, true label)."""

    name = "classification"
    columns = ("text", "label")

    def train_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """Rows with a true label: ``text``, ``label`` = the true label."""
        truth = _column(feedback, "true_label")
        kept = truth.notna()
        return pd.DataFrame({"text": _column(feedback, "text")[kept],
                             "label": truth[kept]}).reset_index(drop=True)

    def holdout_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """The same rows as :meth:`train_rows`."""
        return self.train_rows(feedback)

    def learnable(self, rows: pd.DataFrame, splits: Any) -> pd.DataFrame:
        """Rows whose label is one of ``splits.labels``."""
        return rows[rows["label"].isin(splits.labels)]


class GenerationFeedback:
    """Feedback of a generator: (prompt, corrected reply), or the model's reply rated good."""

    name = "generation"
    columns = ("text", "reply", "label")

    def train_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """Rows with a corrected reply (``reply`` = it) or rated good (+1) with a reply of the model's own
        (``reply`` = that); ``label`` = ``feedback``. Rows rated bad without a correction are left out."""
        corrected, own = _column(feedback, "true_reply"), _column(feedback, "reply")
        rating = pd.to_numeric(_column(feedback, "rating"), errors="coerce")
        reply = corrected.where(corrected.notna(), own.where(rating > 0, None))
        kept = reply.notna()
        return pd.DataFrame({"text": _column(feedback, "text")[kept],
                             "reply": reply[kept], "label": FEEDBACK_GROUP}).reset_index(drop=True)

    def holdout_rows(self, feedback: pd.DataFrame) -> pd.DataFrame:
        """Rows with a corrected reply: ``text``, ``reply`` = the correction, ``label`` = ``feedback``."""
        corrected = _column(feedback, "true_reply")
        kept = corrected.notna()
        return pd.DataFrame({"text": _column(feedback, "text")[kept],
                             "reply": corrected[kept], "label": FEEDBACK_GROUP}).reset_index(drop=True)

    def learnable(self, rows: pd.DataFrame, splits: Any) -> pd.DataFrame:
        """Every row (a generator can learn any reply)."""
        return rows


def feedback_rows(task: str) -> FeedbackRows:
    """How task ``task`` turns feedback into example rows.

    Raises:
        ValueError: no such task (the message lists the known ones).
    """
    known = {t.name: t for t in (ClassificationFeedback(), GenerationFeedback())}
    if task not in known:
        raise ValueError(f"retraining cannot use the feedback of task {task!r}: it knows {sorted(known)}")
    return known[task]


def without_reviewers(labelled: pd.DataFrame, reviewers: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Feedback rows (``TrafficLog.labelled()``) not given by any of ``reviewers`` (exact names, as
    stored in ``feedback.reviewer``); rows without a reviewer are kept. The same frame when
    ``reviewers`` is empty or there is no ``reviewer`` column, else a copy with a fresh index."""
    if not reviewers or "reviewer" not in labelled.columns or labelled.empty:
        return labelled
    return labelled[~labelled["reviewer"].isin(set(reviewers))].reset_index(drop=True)
