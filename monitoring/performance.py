"""Model performance in a window: measured on feedback labels, and estimated without them.

* With labels: accuracy with a Wilson 95 % interval, macro F1, the number of labels, and the recall of
  the intents whose share of the labelled traffic moved most against the reference.
* Without labels, two estimators, both calibrated on the validation split's outputs that training
  saves (``calibration.jsonl``):

  - ``cbpe``: confidence-based performance estimation, as NannyML's CBPE: an isotonic map from the
    top-1 confidence to P(correct); estimated accuracy = the window's mean mapped confidence. Exact in
    expectation while P(correct | confidence) holds on the traffic (covariate shift).
  - ``atc``: average thresholded confidence (Garg et al., ICLR 2022, "Leveraging unlabeled data to
    predict out-of-distribution performance"): the threshold t under which the validation split has as
    many confidences as it has errors; estimated accuracy = the window's share of confidences above t.

  Measured on Banking77 (benchmarks/drift_bench.py, 500-request windows): both within 1 point in
  distribution; with 60 % queries of intents the model barely learned, CBPE overestimates by 13 points
  (the model is confidently wrong on them, which breaks its assumption) and ATC errs by 1.4; on 30 %
  typos CBPE errs by 0.9 and ATC by 2.3. ATC is the default (``DriftConfig.estimator``); both are
  reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from tuneloop.state.registry import CALIBRATION_FILE

if TYPE_CHECKING:  # pandas is imported where used: importing this module stays cheap
    import pandas as pd

WILSON_Z = 1.959964  # two-sided 95 %


class Calibration(BaseModel):
    """A monotone piecewise-linear map confidence -> P(correct) (isotonic regression knots)."""

    x: list[float] = Field(description="Confidence knots, increasing, 0..1.")
    y: list[float] = Field(description="P(correct) at each knot, non-decreasing, 0..1.")
    n: int = Field(description="Rows it was fitted on.")
    source: str = Field("", description="Where the fitting rows came from.")
    accuracy: float = Field(description="Accuracy of those rows (the map's mean output on them).")
    atc_threshold: float = Field(description="ATC threshold: share of fitting confidences below it = error rate.")

    def __call__(self, confidence: np.ndarray) -> np.ndarray:
        """Calibrated P(correct) per row, shape like ``confidence``."""
        return np.interp(np.asarray(confidence, dtype=float), self.x, self.y)

    def above_threshold(self, confidence: np.ndarray) -> np.ndarray:
        """1.0 where the confidence exceeds the ATC threshold, else 0.0; shape like ``confidence``."""
        return (np.asarray(confidence, dtype=float) > self.atc_threshold).astype(float)


def fit_calibration(confidence: np.ndarray, correct: np.ndarray, source: str = "") -> Calibration:
    """Fit the isotonic confidence -> correctness map.

    Args:
        confidence: top-1 probabilities, shape (n,), 0..1.
        correct: 1 where the prediction was right, shape (n,).
        source: provenance note stored with the map.

    Raises:
        ValueError: fewer than 20 rows (too few to calibrate anything).
    """
    from sklearn.isotonic import IsotonicRegression

    conf, ok = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) < 20:
        raise ValueError(f"calibration needs >= 20 labelled rows, got {len(conf)}")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, ok)
    x, y = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
    atc = float(np.quantile(conf, 1.0 - ok.mean()))
    return Calibration(x=x, y=y, n=len(conf), source=source, accuracy=float(ok.mean()), atc_threshold=atc)


def load_calibration(model_dir: Path, reference: pd.DataFrame | None = None) -> Calibration | None:
    """The champion's calibration: fitted on ``calibration.jsonl`` (validation outputs saved at training
    time), else on the labelled rows of its reference sample; None when neither has >= 20 labels."""
    import pandas as pd

    path = Path(model_dir) / CALIBRATION_FILE
    if path.exists():
        rows, source = pd.read_json(path, lines=True, dtype=False), "validation split (calibration.jsonl)"
    elif reference is not None and "true_label" in reference:
        rows, source = reference, "labelled reference rows"
    else:
        return None
    rows = rows[rows["true_label"].notna()]
    if len(rows) < 20:
        return None
    correct = (rows["true_label"].astype(str) == rows["label"].astype(str)).to_numpy()
    return fit_calibration(rows["confidence"].to_numpy(), correct, source)


def estimate_accuracy(calibration: Calibration, confidence: np.ndarray, method: str = "atc") -> tuple[float, float]:
    """Estimated accuracy of a window from its top-1 confidences alone.

    Args:
        calibration: the champion's calibration.
        confidence: the window's top-1 probabilities, shape (n,).
        method: ``atc`` (share above the ATC threshold) or ``cbpe`` (mean calibrated confidence).

    Returns:
        (estimate, sd): sd is the sampling sd of a realised accuracy of ``n`` rows around the estimate.

    Raises:
        ValueError: unknown method.
    """
    if method == "cbpe":
        p = calibration(confidence)
        return float(p.mean()), float(math.sqrt((p * (1 - p)).sum()) / max(len(p), 1))
    if method == "atc":
        est = float(calibration.above_threshold(confidence).mean()) if len(confidence) else float("nan")
        return est, float(math.sqrt(est * (1 - est) / max(len(confidence), 1)))
    raise ValueError(f"unknown estimator {method!r}; use atc or cbpe")


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (default 95 %); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class FeedbackPerformance(BaseModel):
    """Accuracy and macro F1 on a window's feedback, with the label count and a 95 % interval."""

    n_labels: int
    accuracy: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    macro_f1: float | None = None
    intents: list[dict] = Field(default_factory=list, description="Intents whose labelled share moved most: "
                                "intent, reference_share, window_share, reference_recall, window_recall, n.")


def _recall(frame: pd.DataFrame) -> pd.Series:
    ok = frame["true_label"].astype(str) == frame["label"].astype(str)
    return ok.groupby(frame["true_label"].astype(str)).mean()


def feedback_performance(window: pd.DataFrame, reference: pd.DataFrame | None = None,
                         top_intents: int = 5) -> FeedbackPerformance:
    """Measure the window's labelled rows (``true_label`` not null).

    Args:
        window: rows with ``label`` (predicted) and ``true_label`` (None when unlabelled).
        reference: the reference sample (its labelled rows give reference shares and recalls).
        top_intents: how many moved intents to report.

    Returns:
        FeedbackPerformance; metrics are None when the window has no labels.
    """
    import pandas as pd
    from sklearn.metrics import f1_score

    lab = window[window["true_label"].notna()] if "true_label" in window else window.iloc[:0]
    n = len(lab)
    if n == 0:
        return FeedbackPerformance(n_labels=0)
    truth, pred = lab["true_label"].astype(str), lab["label"].astype(str)
    ok = int((truth == pred).sum())
    out = FeedbackPerformance(n_labels=n, accuracy=ok / n, accuracy_ci=wilson_interval(ok, n),
                              macro_f1=float(f1_score(truth, pred, average="macro", zero_division=0)))
    ref_lab = reference[reference["true_label"].notna()] if reference is not None and "true_label" in reference \
        else window.iloc[:0]
    share = truth.value_counts(normalize=True)
    ref_share = ref_lab["true_label"].astype(str).value_counts(normalize=True) if len(ref_lab) else pd.Series(dtype=float)
    moved = (share.reindex(share.index.union(ref_share.index), fill_value=0.0)
             - ref_share.reindex(share.index.union(ref_share.index), fill_value=0.0)).abs()
    recall, ref_recall, counts = _recall(lab), _recall(ref_lab) if len(ref_lab) else pd.Series(dtype=float), truth.value_counts()
    for intent in moved.sort_values(ascending=False, kind="stable").index[:top_intents]:
        out.intents.append({"intent": intent, "reference_share": float(ref_share.get(intent, 0.0)),
                            "window_share": float(share.get(intent, 0.0)),
                            "reference_recall": None if intent not in ref_recall else float(ref_recall[intent]),
                            "window_recall": None if intent not in recall else float(recall[intent]),
                            "n": int(counts.get(intent, 0))})
    return out
