"""Drift signals of one traffic window against the champion's reference sample, in ONE Evidently report.

Six signals, each a section of the report and each with a p-value, so that the policy can correct
for testing them together (statistics in :mod:`tuneloop.monitoring.drift_stats`):

* ``text_drift``: Evidently's text drift (``ValueDrift`` on the text column): a TF-IDF + SGD domain
  classifier separating reference rows from window rows; value = its held-out ROC AUC, p-value from
  the AUC's Mann-Whitney null (what Evidently's bootstrap percentile estimates, 95 % of its cost).
* ``descriptor_drift``: Evidently text descriptors -- ``TextLength``, ``NonLetterCharacterPercentage``
  and the share of words out of the tokenizer's vocabulary (``CustomColumnDescriptor``; Evidently's own
  OOV descriptor needs an NLTK download) -- each K-S tested; value = min p-value x 3 (Bonferroni).
* ``embedding_drift``: one of Evidently's embedding drift methods on the champion's own sentence
  embeddings (method chosen by measurement, ``DriftConfig.embedding_method``; its report section is our
  ``EmbeddingsDriftScore`` metric, without Evidently's t-SNE map); p-value by permutation (or the AUC
  null for ``model``).
* ``label_drift``: predicted-label distribution, a permutation chi-square registered as an Evidently
  stattest (Evidently's default chi-square fires on 36-55 % of same-distribution 100-200 row windows
  over 77 intents); the Jensen-Shannon distance goes into ``details``.
* ``confidence_drift``: two-sample K-S on the top-1 confidence (Rabanser et al. 2019, "Failing Loudly":
  tests on the softmax outputs detected shift best).
* ``accuracy_drop``: reference accuracy minus feedback accuracy; one-sided Fisher exact test.

Plus numbers that are not tests: the feedback accuracy (``MeanValue`` of a 0/1 ``correct`` column) and
the label-free accuracy estimates, CBPE (``MeanValue`` of the calibrated confidence) and ATC
(``MeanValue`` of the 0/1 "confidence above the ATC threshold"), see :mod:`tuneloop.monitoring.performance`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuneloop.monitoring.drift_report import build_snapshot, evidently_values, save_report  # noqa: F401 (re-exported)
from tuneloop.monitoring.drift_stats import (
    auc_p_value,
    auc_threshold,
    embedding_test,
    js_distance,
    label_permutation_test,  # noqa: F401  (label_permutation_test re-exported)
)
from tuneloop.monitoring.performance import Calibration, estimate_accuracy, feedback_performance
from tuneloop.monitoring.signals import (  # noqa: F401
    ACCURACY,
    ALL_SIGNALS,
    CONFIDENCE,
    DESCRIPTOR_NAMES,
    DESCRIPTORS,
    EMBEDDING,
    LABEL,
    MIN_ROWS,
    TEXT,
    DriftConfig,
    SignalResult,
    WindowReport,
)

if TYPE_CHECKING:  # pandas is imported inside the functions: importing this module (or policy) stays cheap
    import pandas as pd

REQUIRED_COLUMNS = ("text", "label", "confidence")


def load_reference(path: Path) -> pd.DataFrame:
    """Read a model's ``reference.jsonl`` (rows ``{"text", "label", "confidence", "true_label"}``).

    Raises:
        FileNotFoundError: no such file.
    """
    import pandas as pd

    return pd.read_json(Path(path), lines=True, dtype=False)


def _prepare(frame: pd.DataFrame, what: str, cap: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Check columns and size, cap to ``cap`` rows (seeded); returns the frame and the kept positions."""
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
    return pd.DataFrame({"text": kept["text"].fillna("").astype(str).to_numpy(),
                         "label": kept["label"].astype(str).to_numpy(),
                         "confidence": kept["confidence"].astype(float).to_numpy()}), pos


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["true_label"].notna()] if "true_label" in frame.columns else frame.iloc[:0]


def _correct(frame: pd.DataFrame) -> np.ndarray:
    """1.0 / 0.0 where a true label is known, NaN elsewhere."""
    if "true_label" not in frame.columns:
        return np.full(len(frame), np.nan)
    truth = frame["true_label"]
    return np.where(truth.notna(), (truth.astype(str) == frame["label"].astype(str)).astype(float), np.nan)


def _accuracy_signal(current: pd.DataFrame, reference: pd.DataFrame, cfg: DriftConfig):
    """(accuracy_drop SignalResult, reference accuracy, feedback performance)."""
    from scipy.stats import fisher_exact

    perf = feedback_performance(current, reference, cfg.top_intents)
    ref_lab = _labelled(reference)
    ref_acc = p = drop = None
    if len(ref_lab):
        ref_ok = int((ref_lab["true_label"].astype(str) == ref_lab["label"].astype(str)).sum())
        ref_acc = ref_ok / len(ref_lab)
        if perf.n_labels:  # one-sided Fisher exact on correct/wrong counts: window accuracy < reference accuracy
            ok = round(perf.accuracy * perf.n_labels)
            table = [[ok, perf.n_labels - ok], [ref_ok, len(ref_lab) - ref_ok]]
            p = float(fisher_exact(table, alternative="less").pvalue)
            drop = ref_acc - perf.accuracy
    fired = bool(drop is not None and perf.n_labels >= cfg.min_labels and drop >= cfg.max_accuracy_drop
                 and p < cfg.alpha)
    details = {"n_labels": perf.n_labels, "accuracy": perf.accuracy, "reference_accuracy": ref_acc,
               "accuracy_ci": perf.accuracy_ci, "min_labels": cfg.min_labels}
    sig = SignalResult(name=ACCURACY, method="reference accuracy - feedback accuracy (Fisher exact)", value=drop,
                       threshold=cfg.max_accuracy_drop, fired=fired, p_value=p, details=details)
    return sig, ref_acc, perf


def compute_signals(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig | None = None,
                    metadata: dict[str, str] | None = None, *, reference_embeddings: np.ndarray | None = None,
                    current_embeddings: np.ndarray | Callable[[list[str]], np.ndarray] | None = None,
                    calibration: Calibration | None = None,
                    vocab: set[str] | None = None, with_report: bool = True) -> WindowReport:
    """Build one Evidently report of ``current`` vs ``reference`` and read the six signals from it.

    Args:
        reference: the champion's reference sample, columns ``text, label, confidence[, true_label]``
            (rows of ``reference.jsonl``); subsampled to ``config.max_reference_rows``.
        current: one traffic window (``TrafficLog.read_window``), same columns; ``true_label`` is None
            where no feedback came. Drift tests use at most ``config.max_current_rows`` rows.
        config: computation settings; defaults to ``DriftConfig()``.
        metadata: extra str -> str metadata stored on the snapshot (e.g. model tag, window seqs).
        reference_embeddings: the champion's embeddings of the rows of ``reference``, shape (n_ref, d).
        current_embeddings: the same for ``current``, shape (n_cur, d), or a function that embeds a list
            of texts (called only on the rows the tests use, so at most ``max_current_rows``).
            Without both, ``embedding_drift`` is reported as not computed (p-value None).
        calibration: the champion's confidence calibration; without it no estimated accuracy.
        vocab: the tokenizer's vocabulary for the OOV descriptor; default: the shipped MiniLM's.
        with_report: False skips Evidently's Report (no snapshot) and computes the same numbers
            directly (``drift_report.evidently_values``; benchmarks judging thousands of windows).

    Returns:
        WindowReport with the signals in ``ALL_SIGNALS`` order and the snapshot.

    Raises:
        ValueError: a frame lacks a column, has fewer than ``MIN_ROWS`` rows, or embeddings do not
            match their frame's length.
    """
    from sklearn.exceptions import ConvergenceWarning

    cfg = config or DriftConfig()
    started = time.time()
    ref, ref_pos = _prepare(reference, "reference", cfg.max_reference_rows, cfg.seed)
    cur, cur_pos = _prepare(current, "current window", cfg.max_current_rows, cfg.seed)
    have_emb = reference_embeddings is not None and current_embeddings is not None
    cur_emb = None
    if have_emb:
        cur_emb = (np.asarray(current_embeddings(cur["text"].tolist())) if callable(current_embeddings)
                   else np.asarray(current_embeddings)[cur_pos] if len(current_embeddings) == len(current) else None)
        if len(reference_embeddings) != len(reference) or cur_emb is None or len(cur_emb) != len(cur):
            raise ValueError(f"embeddings do not match their rows: reference {len(reference_embeddings)} vs "
                             f"{len(reference)}, current {len(current_embeddings)} vs {len(current)}")
    ref["correct"], cur["correct"] = _correct(reference.iloc[ref_pos]), _correct(current.iloc[cur_pos])
    if calibration is not None:
        for frame in (ref, cur):
            frame["calibrated_confidence"] = calibration(frame["confidence"].to_numpy())  # CBPE
            frame["above_atc_threshold"] = calibration.above_threshold(frame["confidence"].to_numpy())  # ATC
    emb = None
    if have_emb:
        emb = (np.asarray(reference_embeddings)[ref_pos], cur_emb)
        emb_stat, emb_p, emb_cut = embedding_test(*emb, method=cfg.embedding_method, alpha=cfg.alpha,
                                                  n_permutations=cfg.embedding_permutations)
    text_cut = auc_threshold(cfg.alpha, len(ref), len(cur))
    if cfg.text_method == "abs_text_content_drift" and cfg.text_auc_threshold is not None:
        text_cut = cfg.text_auc_threshold
    acc_sig, ref_acc, perf = _accuracy_signal(current, reference, cfg)
    est = est_sd = ref_est = None
    estimates: dict[str, float] = {}
    if calibration is not None:
        conf, ref_conf = (f["confidence"].astype(float).to_numpy() for f in (current, reference))
        estimates = {m: estimate_accuracy(calibration, conf, m)[0] for m in ("atc", "cbpe")}
        est, est_sd = estimate_accuracy(calibration, conf, cfg.estimator)
        ref_est = estimate_accuracy(calibration, ref_conf, cfg.estimator)[0]
    meta = {"n_current": str(len(current)), "n_labels": str(perf.n_labels), "accuracy": f"{perf.accuracy}",
            "accuracy_ci": f"{perf.accuracy_ci}", "macro_f1": f"{perf.macro_f1}", "reference_accuracy": f"{ref_acc}",
            "estimated_accuracy": f"{est}", **(metadata or {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Evidently's SGD has max_iter=50
        if with_report:
            snapshot, out = build_snapshot(ref, cur, cfg, text_cut, (*emb, emb_cut) if have_emb else None, vocab, meta)
        else:
            snapshot, out = None, evidently_values(ref, cur, cfg, text_cut, vocab)

    auc = out["text"]
    desc_p = {d: out[d] for d in DESCRIPTOR_NAMES}
    desc_min = min(1.0, len(DESCRIPTOR_NAMES) * min(desc_p.values()))
    desc_details = {d: {"p_value": desc_p[d], "reference_mean": out["means"][d][0], "current_mean": out["means"][d][1]}
                    for d in DESCRIPTOR_NAMES}
    signals = [
        SignalResult(name=TEXT, method=f"domain classifier ROC AUC ({cfg.text_method})", value=auc, threshold=text_cut,
                     fired=auc > text_cut, p_value=auc_p_value(auc, len(ref), len(cur)),
                     evidently_fired=out["verdicts"].get("text")),
        SignalResult(name=DESCRIPTORS, method="K-S on length, OOV share, non-letter share (min p x 3)", value=desc_min,
                     threshold=cfg.alpha, fired=desc_min < cfg.alpha, p_value=desc_min, details=desc_details),
        SignalResult(name=EMBEDDING, method=f"embeddings {cfg.embedding_method}" + (" (not computed: no embeddings)"
                                                                                    if not have_emb else ""),
                     value=emb_stat if have_emb else None, threshold=emb_cut if have_emb else float("nan"),
                     fired=bool(have_emb and emb_p < cfg.alpha), p_value=emb_p if have_emb else None,
                     details={"evidently_score": out["embedding"]} if "embedding" in out else {}),
        SignalResult(name=LABEL, method="permutation chi-square p-value", value=out["label"], threshold=cfg.alpha,
                     fired=out["label"] < cfg.alpha, p_value=out["label"], evidently_fired=out["verdicts"].get("label"),
                     details={"js_distance": js_distance(ref["label"], cur["label"])}),
        SignalResult(name=CONFIDENCE, method="K-S p-value", value=out["confidence"], threshold=cfg.alpha,
                     fired=out["confidence"] < cfg.alpha, p_value=out["confidence"],
                     evidently_fired=out["verdicts"].get("confidence"),
                     details={"reference_mean": float(ref["confidence"].mean()),
                              "current_mean": float(cur["confidence"].mean())}),
        acc_sig,
    ]
    return WindowReport(signals=signals, n_current=len(current), n_reference=len(ref), n_labels=perf.n_labels,
                        accuracy=perf.accuracy, macro_f1=perf.macro_f1, reference_accuracy=ref_acc,
                        accuracy_ci=perf.accuracy_ci, estimated_accuracy=est, estimated_accuracy_sd=est_sd,
                        reference_estimated_accuracy=ref_est, estimates=estimates, intents=perf.intents,
                        computed_at=started, seconds=time.time() - started, snapshot=snapshot, current_positions=cur_pos,
                        current_embeddings=cur_emb, reference_embeddings=emb[0] if emb else None)
