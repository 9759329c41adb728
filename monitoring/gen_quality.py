"""Quality of generated replies from feedback, and the two generation signals that read it.

Feedback on a generation row is a reviewer's corrected reply (``true_reply``) and/or a rating
(``rating``: +1 good, -1 bad). Two signals, each firing like classification's ``accuracy_drop``
(enough feedback, an effect that matters, and a one-sided test at the policy's level):

* ``rouge_drop``: the reference's mean ROUGE-L F-measure (its replies against their known reference
  replies, ``reply`` vs ``true_reply`` of ``reference.jsonl``) minus the window's (each reply against
  its reviewer's corrected reply), per pair by :func:`tuneloop.training.gen_metrics.rouge_l_each`
  (Google's ``rouge-score``, Lin 2004); p-value: one-sided Mann-Whitney U (``scipy.stats.mannwhitneyu``)
  of the window's scores against the reference's. Both sides compare a model reply with a human one;
  ROUGE-L rewards wording close to it, not correctness (the model card says so too).
* ``bad_rating_rise``: the window's share of bad ratings minus a baseline: the reference's share when
  the reference carries ratings (one-sided Fisher exact test, as ``accuracy_drop``), else
  ``DriftConfig.baseline_bad_rating_share`` (one-sided exact binomial test, ``scipy.stats.binomtest``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.monitoring.signals import RATING, ROUGE, DriftConfig, SignalResult

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, eq=False)
class ReplyQuality:
    """Feedback figures of a window and its reference (every row, not the drift tests' samples).

    Attributes:
        reference_rouge: ROUGE-L F-measure (0..1) of each reference row with a reply and a known
            reference reply, shape (n_ref_pairs,).
        current_rouge: the same for each window row with a reply and a corrected reply, shape (n_pairs,).
        rated: window rows with a rating; bad: those rated bad (-1).
        reference_rated, reference_bad: the same in the reference (0 when it has no ratings).
        feedback: window rows with any feedback (a corrected reply or a rating).
    """

    reference_rouge: np.ndarray
    current_rouge: np.ndarray
    rated: int
    bad: int
    reference_rated: int
    reference_bad: int
    feedback: int

    @property
    def bad_share(self) -> float | None:
        """Share of the window's ratings that are bad; None without ratings."""
        return self.bad / self.rated if self.rated else None

    def baseline_bad_share(self, config: DriftConfig) -> float:
        """The reference's bad-rating share when it has ratings, else ``config.baseline_bad_rating_share``."""
        if self.reference_rated:
            return self.reference_bad / self.reference_rated
        return config.baseline_bad_rating_share


def _texts(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` with missing and empty texts as None (an all-None series without the column)."""
    import pandas as pd

    if column not in frame.columns:
        return pd.Series([None] * len(frame), index=frame.index, dtype=object)
    col = frame[column]
    return col.where(col.notna() & (col.astype(str).str.strip() != ""), None)


def row_rouge(frame: pd.DataFrame) -> np.ndarray:
    """Per row: ROUGE-L F-measure (0..1) of ``reply`` against ``true_reply``; NaN where either is
    missing or empty. Shape (len(frame),)."""
    from tuneloop.training.gen_metrics import rouge_l_each

    reply, truth = _texts(frame, "reply"), _texts(frame, "true_reply")
    pairs = (reply.notna() & truth.notna()).to_numpy()
    out = np.full(len(frame), np.nan)
    if pairs.any():
        out[pairs] = rouge_l_each(reply[pairs].astype(str).tolist(), truth[pairs].astype(str).tolist())
    return out


def _ratings(frame: pd.DataFrame) -> tuple[int, int]:
    """(rated rows, bad ones) of ``frame``'s ``rating`` column (+1 good / -1 bad / None); (0, 0) without it."""
    import pandas as pd

    if "rating" not in frame.columns:
        return 0, 0
    rating = pd.to_numeric(frame["rating"], errors="coerce").dropna()
    return len(rating), int((rating < 0).sum())


def reply_quality(reference: pd.DataFrame, current: pd.DataFrame, reference_rouge: np.ndarray | None = None,
                  current_rouge: np.ndarray | None = None) -> ReplyQuality:
    """The feedback figures of ``current`` (a window) and ``reference``.

    Args:
        reference, current: frames with ``reply``, ``true_reply`` and optionally ``rating`` columns.
        reference_rouge, current_rouge: their :func:`row_rouge` when already computed (else computed here).

    Returns:
        ReplyQuality.
    """
    ref_rouge = row_rouge(reference) if reference_rouge is None else reference_rouge
    cur_rouge = row_rouge(current) if current_rouge is None else current_rouge
    rated, bad = _ratings(current)
    ref_rated, ref_bad = _ratings(reference)
    corrected = _texts(current, "true_reply").notna()
    has_rating = current["rating"].notna() if "rating" in current.columns else False
    return ReplyQuality(reference_rouge=ref_rouge[~np.isnan(ref_rouge)], current_rouge=cur_rouge[~np.isnan(cur_rouge)],
                        rated=rated, bad=bad, reference_rated=ref_rated, reference_bad=ref_bad,
                        feedback=int((corrected | has_rating).sum()))


def rouge_drop(config: DriftConfig, quality: ReplyQuality) -> SignalResult:
    """``rouge_drop``: value = reference mean ROUGE-L minus the window's (-1..1), threshold =
    ``config.max_rouge_drop``, p-value of a one-sided Mann-Whitney U test (window scores lower); value
    and p-value None without pairs on either side. Fires on ``config.min_labels`` corrected replies or more."""
    from scipy.stats import mannwhitneyu

    ref, cur = quality.reference_rouge, quality.current_rouge
    drop = p = None
    if len(ref) and len(cur):
        drop = float(ref.mean() - cur.mean())
        p = float(mannwhitneyu(cur, ref, alternative="less").pvalue)
    fired = bool(drop is not None and len(cur) >= config.min_labels and drop >= config.max_rouge_drop
                 and p < config.alpha)
    details = {"n_labels": len(cur), "rouge_l": float(cur.mean()) if len(cur) else None,
               "reference_rouge_l": float(ref.mean()) if len(ref) else None, "reference_pairs": len(ref),
               "min_labels": config.min_labels}
    return SignalResult(name=ROUGE, method="reference ROUGE-L - live ROUGE-L vs corrected replies (Mann-Whitney U)",
                        value=drop, threshold=config.max_rouge_drop, fired=fired, p_value=p, details=details)


def bad_rating_rise(config: DriftConfig, quality: ReplyQuality) -> SignalResult:
    """``bad_rating_rise``: value = the window's bad-rating share minus the baseline
    (:meth:`ReplyQuality.baseline_bad_share`), threshold = ``config.max_bad_rating_rise``, p-value of a
    one-sided Fisher exact test against the reference's ratings, or of an exact binomial test against
    ``config.baseline_bad_rating_share``; value and p-value None without ratings. Fires on
    ``config.min_labels`` ratings or more."""
    from scipy.stats import binomtest, fisher_exact

    baseline = quality.baseline_bad_share(config)
    rise = p = None
    if quality.rated:
        rise = quality.bad / quality.rated - baseline
        if quality.reference_rated:  # H1: bad ratings more likely in the window than in the reference
            table = [[quality.bad, quality.rated - quality.bad],
                     [quality.reference_bad, quality.reference_rated - quality.reference_bad]]
            p = float(fisher_exact(table, alternative="greater").pvalue)
        else:
            p = float(binomtest(quality.bad, quality.rated, baseline, alternative="greater").pvalue)
    test = "Fisher exact vs the reference's ratings" if quality.reference_rated else "binomial vs the baseline share"
    fired = bool(rise is not None and quality.rated >= config.min_labels and rise >= config.max_bad_rating_rise
                 and p < config.alpha)
    details = {"n_labels": quality.rated, "bad": quality.bad, "bad_share": quality.bad_share,
               "baseline_bad_share": baseline, "reference_rated": quality.reference_rated,
               "min_labels": config.min_labels}
    return SignalResult(name=RATING, method=f"bad-rating share - baseline ({test})", value=rise,
                        threshold=config.max_bad_rating_rise, fired=fired, p_value=p, details=details)
