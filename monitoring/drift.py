"""Drift signals of one traffic window against the champion's reference sample, in ONE Evidently report.

Four signals, each with a p-value so that the policy can correct for testing them together:

* ``text_drift``: Evidently's text drift (``ValueDrift`` on a text column), a TF-IDF + SGD domain
  classifier separating reference rows from window rows; value = its held-out ROC AUC. p-value: the
  normal approximation of the AUC's Mann-Whitney null, which Evidently's percentile method estimates
  by 1000 random-classifier AUCs (verdicts differed on 3 of 480 calibration windows, all at p =
  0.013 vs 0.0125). We hand Evidently that cutoff (``abs_text_content_drift``) and skip the
  bootstrap, which is 95 % of the report's cost (1.9 s -> 0.12 s).
* ``label_drift``: predicted-label distribution. Evidently's default for <= 1000 reference rows
  (chi-square goodness of fit against the reference counts) fires on 36-55 % of same-distribution
  100-200 row windows over 77 intents (~2 expected per cell, reference noise ignored; its JS >= 0.1
  default above 1000 rows on 100 %). We register a permutation test of the 2 x K chi-square
  homogeneity statistic (null drawn exactly from the multivariate hypergeometric law of the window's
  counts given the pooled counts): valid at any sparsity, no merging of rare intents.
* ``confidence_drift``: two-sample Kolmogorov-Smirnov p-value of the top-1 confidence (Evidently
  ``ks``); tests on classifier outputs detect shift best (Rabanser et al. 2019, "Failing Loudly").
* ``accuracy_drop``: reference accuracy minus feedback accuracy in the window; one-sided Fisher exact
  test on the correct/wrong counts of both (so the reference's own noise counts). scikit-learn/scipy,
  because Evidently's classification metrics cannot take a row subset inside the same report; the
  numbers go into the snapshot's metadata.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pandas is imported inside the functions: importing this module (or policy) stays cheap
    import pandas as pd

TEXT, LABEL, CONFIDENCE, ACCURACY = "text_drift", "label_drift", "confidence_drift", "accuracy_drop"
ALL_SIGNALS = (TEXT, LABEL, CONFIDENCE, ACCURACY)
MIN_ROWS = 10  # below this the domain classifier's held-out half may hold no window row at all
REQUIRED_COLUMNS = ("text", "label", "confidence")


class DriftConfig(BaseModel):
    """How the signals are computed (the decision thresholds live in ``policy.DriftPolicy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(0.0125, gt=0, lt=1, description="Per-signal significance level, already corrected: "
                         "0.05 / 4 signals (Bonferroni). Use DriftPolicy.drift_config() to keep both in step.")
    max_reference_rows: int = Field(1000, ge=MIN_ROWS, description="Reference cap (seeded subsample) for the "
                                    "drift tests: bounds cost and power. Reference accuracy uses all labelled rows.")
    max_current_rows: int = Field(1000, ge=MIN_ROWS, description="Window cap for the drift tests, so large windows "
                                  "do not make every tiny difference significant. Accuracy uses all labelled rows.")
    text_method: Literal["abs_text_content_drift", "perc_text_content_drift"] = Field(
        "abs_text_content_drift", description="Evidently text drift method: AUC vs a cutoff, or AUC vs a bootstrap "
        "percentile of 1000 random-classifier AUCs (same test, but the bootstrap is ~95 % of the cost: 1.5 s).")
    text_auc_threshold: float | None = Field(None, gt=0.5, lt=1, description="AUC cutoff for abs_text_content_drift. "
        "None: the (1 - alpha) quantile of the AUC's Mann-Whitney null for the actual sample sizes (e.g. 0.587 for "
        "1000 vs 150 rows at alpha 0.0125). Evidently's fixed 0.55 false-alarms on 100-200 row windows.")
    label_permutations: int = Field(2000, ge=100, description="Null draws of the label test (p resolution 1/(n+1)).")
    min_labels: int = Field(30, ge=1, description="Labelled rows needed before accuracy_drop may fire.")
    max_accuracy_drop: float = Field(0.10, ge=0, le=1, description="Absolute accuracy drop that matters.")
    seed: int = Field(0, description="Seed of the reference/window subsamples (the permutation null uses seed 0).")


class SignalResult(BaseModel):
    """One signal of one window. ``fired`` applies the DriftConfig's level; the policy re-judges ``p_value``."""

    name: str
    method: str
    value: float | None = Field(description="Score: ROC AUC (text), p-value (label, confidence), drop (accuracy).")
    threshold: float = Field(description="Cutoff on ``value`` at the config's alpha.")
    fired: bool
    p_value: float | None = None
    evidently_fired: bool | None = Field(None, description="Evidently's own test verdict, where it ran one.")


class WindowReport(BaseModel):
    """Signals of one window, plus the Evidently snapshot (not serialised) for saving."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    signals: list[SignalResult]
    n_current: int
    n_reference: int
    n_labels: int
    accuracy: float | None
    macro_f1: float | None
    reference_accuracy: float | None
    computed_at: float = Field(description="Unix seconds when the signals were computed.")
    seconds: float = Field(description="Wall time of compute_signals.")
    snapshot: Any = Field(None, exclude=True, repr=False)

    def signal(self, name: str) -> SignalResult:
        """The signal called ``name``. Raises KeyError if absent."""
        for s in self.signals:
            if s.name == name:
                return s
        raise KeyError(name)


def label_permutation_test(reference: pd.Series, current: pd.Series, n_permutations: int = 2000,
                           seed: int = 0) -> tuple[float, float]:
    """Two-sample test of equal category distributions, valid for sparse counts.

    Args:
        reference, current: category values (any hashable), shapes (n_ref,), (n_cur,).
        n_permutations: null draws; the window's counts given the pooled counts follow a multivariate
            hypergeometric law under H0, so draws are exact permutations without shuffling rows.
        seed: seed of the null draws (same data -> same p-value).

    Returns:
        (chi-square statistic of the 2 x K table, permutation p-value = (1 + #null >= obs) / (1 + n)).
    """
    import pandas as pd

    codes, uniques = pd.factorize(pd.concat([reference, current], ignore_index=True).astype(str))
    n_ref, n_cur = len(reference), len(current)
    total = np.bincount(codes, minlength=len(uniques))
    expected = n_cur * total / (n_ref + n_cur)
    scale = (n_ref + n_cur) ** 2 / (n_ref * n_cur)  # sum_k (c_k - e_k)^2 / t_k * scale == 2xK Pearson X^2

    def stat(counts: np.ndarray) -> np.ndarray:
        return scale * (((counts - expected) ** 2) / total).sum(axis=-1)

    observed = float(stat(np.bincount(codes[n_ref:], minlength=len(uniques))))
    null = stat(np.random.default_rng(seed).multivariate_hypergeometric(total, n_cur, size=n_permutations))
    p_value = (1 + int((null >= observed - 1e-9).sum())) / (n_permutations + 1)
    return observed, p_value


def _label_stattest_name(n_permutations: int) -> str:
    """Register (once per process) the permutation label test in Evidently's stattest registry."""
    from evidently.legacy.calculations.stattests.registry import (StatTest, StatTestNotFoundError,
                                                                  get_registered_stattest, register_stattest)
    from evidently.legacy.core import ColumnType

    name = f"perm_chisquare_{n_permutations}"
    try:
        get_registered_stattest(name, ColumnType.Categorical)
    except StatTestNotFoundError:
        def impl(ref: pd.Series, cur: pd.Series, _type: Any, threshold: float) -> tuple[float, bool]:
            p = label_permutation_test(ref, cur, n_permutations)[1]
            return p, p < threshold

        register_stattest(StatTest(name=name, display_name=f"permutation chi-square p_value ({n_permutations})",
                                   allowed_feature_types=[ColumnType.Categorical]), impl)
    return name


def _auc_null_sd(n_ref: int, n_cur: int) -> float:
    """Standard deviation of a held-out ROC AUC under H0: the Mann-Whitney U null variance / (n0 n1)^2.

    Replays Evidently's 50/50 ``train_test_split(random_state=42)`` to get the held-out class sizes.
    """
    from sklearn.model_selection import train_test_split

    y_test = train_test_split(np.r_[np.zeros(n_ref), np.ones(n_cur)], test_size=0.5, random_state=42)[1]
    n1 = int(y_test.sum())
    n0 = len(y_test) - n1
    return math.sqrt((n0 + n1 + 1) / (12 * max(n0, 1) * max(n1, 1)))


def load_reference(path: Path) -> "pd.DataFrame":
    """Read a model's ``reference.jsonl`` (rows ``{"text", "label", "confidence", "true_label"}``).

    Raises:
        FileNotFoundError: no such file.
    """
    import pandas as pd

    return pd.read_json(Path(path), lines=True, dtype=False)


def _prepare(frame: pd.DataFrame, what: str, cap: int, seed: int) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it needs {list(REQUIRED_COLUMNS)} (+ optional true_label)")
    if len(frame) < MIN_ROWS:
        raise ValueError(f"{what} has {len(frame)} rows; need >= {MIN_ROWS} (check DriftPolicy.min_window first)")
    if len(frame) > cap:
        frame = frame.sample(n=cap, random_state=seed)
    import pandas as pd

    return pd.DataFrame({"text": frame["text"].fillna("").astype(str).to_numpy(),
                         "label": frame["label"].astype(str).to_numpy(),
                         "confidence": frame["confidence"].astype(float).to_numpy()})


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["true_label"].notna()] if "true_label" in frame.columns else frame.iloc[:0]


def compute_signals(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig | None = None,
                    metadata: dict[str, str] | None = None) -> WindowReport:
    """Build one Evidently report of ``current`` vs ``reference`` and read the four signals from it.

    Args:
        reference: the champion's reference sample, columns ``text, label, confidence[, true_label]``
            (rows of ``reference.jsonl``); subsampled to ``config.max_reference_rows``.
        current: one traffic window (``TrafficLog.read_window``), same columns; ``true_label`` is None
            where no feedback came. Drift tests use at most ``config.max_current_rows`` rows.
        config: computation settings; defaults to ``DriftConfig()``.
        metadata: extra str -> str metadata stored on the snapshot (e.g. model tag, window seqs).

    Returns:
        WindowReport with the signals in ``ALL_SIGNALS`` order and the snapshot.

    Raises:
        ValueError: a frame lacks a column or has fewer than ``MIN_ROWS`` rows.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from scipy.stats import fisher_exact, norm
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, f1_score

    cfg = config or DriftConfig()
    started = time.time()
    ref = _prepare(reference, "reference", cfg.max_reference_rows, cfg.seed)
    cur = _prepare(current, "current window", cfg.max_current_rows, cfg.seed)
    sd = _auc_null_sd(len(ref), len(cur))
    auc_cut = 0.5 + float(norm.isf(cfg.alpha)) * sd  # H0 quantile; what the percentile method estimates
    if cfg.text_method == "abs_text_content_drift" and cfg.text_auc_threshold is not None:
        auc_cut = cfg.text_auc_threshold
    text_threshold = 1 - cfg.alpha if cfg.text_method == "perc_text_content_drift" else auc_cut
    label_method = _label_stattest_name(cfg.label_permutations)
    drifts = [ValueDrift(column="text", method=cfg.text_method, threshold=text_threshold),
              ValueDrift(column="label", method=label_method, threshold=cfg.alpha),
              ValueDrift(column="confidence", method="ks", threshold=cfg.alpha)]

    lab, ref_lab = _labelled(current), _labelled(reference)  # all labelled rows, not the capped sample
    n_labels = len(lab)
    accuracy = macro_f1 = ref_accuracy = acc_p = None
    if n_labels:
        y_true, y_pred = lab["true_label"].astype(str), lab["label"].astype(str)
        accuracy = float(accuracy_score(y_true, y_pred))
        macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    if len(ref_lab):
        ref_ok = int((ref_lab["true_label"].astype(str) == ref_lab["label"].astype(str)).sum())
        ref_accuracy = ref_ok / len(ref_lab)
        if n_labels:  # one-sided Fisher exact on correct/wrong counts: window accuracy < reference accuracy
            ok = int((y_true == y_pred).sum())
            table = [[ok, n_labels - ok], [ref_ok, len(ref_lab) - ref_ok]]
            acc_p = float(fisher_exact(table, alternative="less").pvalue)

    meta = {"n_current": str(len(current)), "n_labels": str(n_labels), "accuracy": f"{accuracy}",
            "macro_f1": f"{macro_f1}", "reference_accuracy": f"{ref_accuracy}", **(metadata or {})}
    dd = DataDefinition(text_columns=["text"], categorical_columns=["label"], numerical_columns=["confidence"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Evidently's SGD has max_iter=50
        snapshot = Report(drifts, include_tests=True, metadata=meta, tags=["tuneloop"]).run(
            Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))

    result = snapshot.dict()
    values = {m["config"]["column"]: float(m["value"]) for m in result["metrics"]}
    verdicts = {t["metric_config"]["params"]["column"]: str(t["status"]).endswith("FAIL") for t in result["tests"]}
    auc = values["text"]
    text_p = float(norm.sf((auc - 0.5) / sd))
    drop = None if accuracy is None or ref_accuracy is None else ref_accuracy - accuracy
    acc_fired = bool(drop is not None and n_labels >= cfg.min_labels and drop >= cfg.max_accuracy_drop
                     and acc_p < cfg.alpha)
    signals = [
        SignalResult(name=TEXT, method=f"domain classifier ROC AUC ({cfg.text_method})", value=auc, threshold=auc_cut,
                     fired=auc > auc_cut, p_value=text_p, evidently_fired=verdicts.get("text")),
        SignalResult(name=LABEL, method="permutation chi-square p-value", value=values["label"], threshold=cfg.alpha,
                     fired=values["label"] < cfg.alpha, p_value=values["label"], evidently_fired=verdicts.get("label")),
        SignalResult(name=CONFIDENCE, method="K-S p-value", value=values["confidence"], threshold=cfg.alpha,
                     fired=values["confidence"] < cfg.alpha, p_value=values["confidence"],
                     evidently_fired=verdicts.get("confidence")),
        SignalResult(name=ACCURACY, method="reference accuracy - feedback accuracy", value=drop,
                     threshold=cfg.max_accuracy_drop, fired=acc_fired, p_value=acc_p),
    ]
    return WindowReport(signals=signals, n_current=len(current), n_reference=len(ref), n_labels=n_labels,
                        accuracy=accuracy, macro_f1=macro_f1, reference_accuracy=ref_accuracy,
                        computed_at=started, seconds=time.time() - started, snapshot=snapshot)


def save_report(report: WindowReport, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.html`` (Evidently's self-contained HTML) and ``<stem>.json``.

    The JSON is ``{"signals": <report fields but the snapshot>, "evidently": <snapshot dict>}``.

    Raises:
        ValueError: the report carries no snapshot (e.g. it was rebuilt from JSON).
    """
    if report.snapshot is None:
        raise ValueError("report has no Evidently snapshot to save; save the WindowReport compute_signals returned")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    report.snapshot.save_html(str(html_path))
    payload = {"signals": report.model_dump(mode="json"), "evidently": json.loads(report.snapshot.json())}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(json_path)
    return html_path, json_path
