"""One window's inputs, checked and sampled once, for every drift signal: :class:`WindowContext`.

The drift tests see seeded subsamples (``DriftConfig.max_reference_rows`` reference rows,
``max_current_rows`` window rows) with a 0/1 ``correct`` column and, given a calibration, the
calibrated confidence (CBPE) and the "above the ATC threshold" flag; accuracy and its estimates use
every row of both frames. :func:`window_context` builds it; the signal functions of
:mod:`tuneloop.monitoring.drift` read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.monitoring.performance import Calibration
from tuneloop.monitoring.signals import MIN_ROWS, DriftConfig

if TYPE_CHECKING:  # pandas is imported inside the functions: importing this module stays cheap
    import pandas as pd

REQUIRED_COLUMNS = ("text", "label", "confidence")

CurrentEmbeddings = np.ndarray | Callable[[list[str]], np.ndarray]


@dataclass(frozen=True, eq=False)
class WindowContext:
    """One window against the reference, as every signal function reads it.

    Attributes:
        config: how the signals are computed.
        reference: the reference sample as given, every row (reference accuracy, estimates).
        current: the window as given, every row (feedback accuracy, estimates).
        ref: the drift tests' sample of ``reference`` (at most ``config.max_reference_rows`` rows), columns
            ``text, label, confidence, correct[, calibrated_confidence, above_atc_threshold]``.
        cur: the same for ``current`` (at most ``config.max_current_rows`` rows).
        current_positions: positions of ``cur``'s rows in ``current``, increasing, shape (len(cur),).
        reference_embeddings: embeddings of ``ref``'s rows, shape (len(ref), d); None without embeddings.
        current_embeddings: embeddings of ``cur``'s rows, shape (len(cur), d); None without embeddings.
        calibration: the champion's confidence calibration; None: no label-free accuracy estimate.
        vocab: the tokenizer's vocabulary for the OOV descriptor; None: the shipped MiniLM's.
    """

    config: DriftConfig
    reference: pd.DataFrame
    current: pd.DataFrame
    ref: pd.DataFrame
    cur: pd.DataFrame
    current_positions: np.ndarray
    reference_embeddings: np.ndarray | None
    current_embeddings: np.ndarray | None
    calibration: Calibration | None
    vocab: set[str] | None

    @property
    def has_embeddings(self) -> bool:
        """Both samples have embeddings (the embedding drift test can run)."""
        return self.reference_embeddings is not None and self.current_embeddings is not None


def sample_rows(frame: pd.DataFrame, what: str, cap: int, seed: int,
                extra_columns: Sequence[str] = ()) -> tuple[pd.DataFrame, np.ndarray]:
    """Check a frame's columns and size and take a seeded subsample of at most ``cap`` rows.

    Args:
        frame: rows with ``text, label, confidence`` (more columns are ignored).
        what: the frame's name in error messages.
        cap: the most rows kept.
        seed: seed of the subsample.
        extra_columns: more columns of ``frame`` kept as they are (after the three; absent ones are skipped).

    Returns:
        (frame with columns ``text`` (str), ``label`` (str), ``confidence`` (float), then ``extra_columns``,
        and a fresh index, positions of its rows in ``frame``, increasing).

    Raises:
        ValueError: a column is missing or the frame has fewer than ``MIN_ROWS`` rows.
    """
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it needs {list(REQUIRED_COLUMNS)} (+ optional true_label)")
    if len(frame) < MIN_ROWS:
        raise ValueError(f"{what} has {len(frame)} rows; need >= {MIN_ROWS} (check DriftPolicy.min_window first)")
    pos = np.arange(len(frame))
    if len(frame) > cap:
        pos = np.sort(np.random.default_rng(seed).choice(len(frame), cap, replace=False))
    kept = frame.iloc[pos]
    extra = {c: kept[c].to_numpy() for c in extra_columns if c in kept.columns}
    return pd.DataFrame({"text": kept["text"].fillna("").astype(str).to_numpy(),
                         "label": kept["label"].astype(str).to_numpy(),
                         "confidence": kept["confidence"].astype(float).to_numpy(), **extra}), pos


def labelled_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` with a ``true_label`` (none when the column is absent)."""
    return frame[frame["true_label"].notna()] if "true_label" in frame.columns else frame.iloc[:0]


def correctness(frame: pd.DataFrame) -> np.ndarray:
    """Per row: 1.0 where the true label is known and equals ``label``, 0.0 where it differs, NaN where unknown."""
    if "true_label" not in frame.columns:
        return np.full(len(frame), np.nan)
    truth = frame["true_label"]
    return np.where(truth.notna(), (truth.astype(str) == frame["label"].astype(str)).astype(float), np.nan)


def _sampled_current_embeddings(current_embeddings: CurrentEmbeddings, cur: pd.DataFrame, n_current: int,
                                positions: np.ndarray) -> np.ndarray | None:
    """The embeddings of the sampled window rows: the function applied to their texts, or the given
    array's rows at ``positions`` (None when the array does not have one row per window row)."""
    if callable(current_embeddings):
        return np.asarray(current_embeddings(cur["text"].tolist()))
    return np.asarray(current_embeddings)[positions] if len(current_embeddings) == n_current else None


def window_context(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig, *,
                   reference_embeddings: np.ndarray | None = None,
                   current_embeddings: CurrentEmbeddings | None = None,
                   calibration: Calibration | None = None, vocab: set[str] | None = None,
                   extra_columns: Sequence[str] = ()) -> WindowContext:
    """Check, sample and annotate one window and its reference (arguments as for ``compute_signals``;
    ``extra_columns``: more columns the sampled ``ref`` and ``cur`` keep, see :func:`sample_rows`).

    Returns:
        The WindowContext; embeddings are kept only when both are given.

    Raises:
        ValueError: a frame lacks a column, has fewer than ``MIN_ROWS`` rows, or embeddings do not
            match their frame's length.
    """
    ref, ref_pos = sample_rows(reference, "reference", config.max_reference_rows, config.seed, extra_columns)
    cur, cur_pos = sample_rows(current, "current window", config.max_current_rows, config.seed, extra_columns)
    ref_emb = cur_emb = None
    if reference_embeddings is not None and current_embeddings is not None:
        cur_emb = _sampled_current_embeddings(current_embeddings, cur, len(current), cur_pos)
        if len(reference_embeddings) != len(reference) or cur_emb is None or len(cur_emb) != len(cur):
            given = len(cur_emb) if callable(current_embeddings) else len(current_embeddings)
            raise ValueError(f"embeddings do not match their rows: reference {len(reference_embeddings)} vs "
                             f"{len(reference)}, current {given} vs {len(current)}")
        ref_emb = np.asarray(reference_embeddings)[ref_pos]
    ref["correct"], cur["correct"] = correctness(reference.iloc[ref_pos]), correctness(current.iloc[cur_pos])
    if calibration is not None:
        for frame in (ref, cur):
            frame["calibrated_confidence"] = calibration(frame["confidence"].to_numpy())  # CBPE
            frame["above_atc_threshold"] = calibration.above_threshold(frame["confidence"].to_numpy())  # ATC
    return WindowContext(config=config, reference=reference, current=current, ref=ref, cur=cur,
                         current_positions=cur_pos, reference_embeddings=ref_emb, current_embeddings=cur_emb,
                         calibration=calibration, vocab=vocab)
