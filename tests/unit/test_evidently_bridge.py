"""What tuneloop relies on in Evidently without a public API (monitoring/evidently_bridge.py), checked
against the installed Evidently through its public Report. A failure names the installed version:
update the bridge (and the replays in monitoring/drift_stats.py that use its settings)."""

from __future__ import annotations

import evidently
import numpy as np
import pandas as pd
import pytest
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift

from tuneloop.monitoring.drift_stats import (
    embedding_statistic,
    label_permutation_test,
    random_classifier_auc_quantile,
    text_domain_auc,
)
from tuneloop.monitoring.evidently_bridge import label_stattest

WORDS = ("card arrived top up transfer refund cash pin atm fee exchange rate declined pending balance account "
         "verify identity phone lost stolen blocked limit salary crypto virtual disposable").split()


def _changed(what: str) -> str:
    return f"evidently {evidently.__version__} changed {what}: update monitoring/evidently_bridge.py"


def _run(metrics: list, reference: pd.DataFrame, current: pd.DataFrame, dd: DataDefinition):
    ref_ds, cur_ds = (Dataset.from_pandas(f, data_definition=dd) for f in (reference, current))
    return Report(metrics, include_tests=True).run(cur_ds, ref_ds)


def _verdicts(snapshot, metric) -> list[bool]:
    """Evidently's drift verdicts of one metric (True: drift)."""
    return [t.status.value == "FAIL" for t in snapshot.tests_results if t.metric_config.metric_id == metric.metric_id]


def test_label_stattest_runs_as_evidentlys_value_drift():
    rng = np.random.default_rng(0)
    cats = [f"c{i:02d}" for i in range(20)]
    ref = pd.DataFrame({"label": rng.choice(cats, 300)})
    windows = {"same": pd.DataFrame({"label": rng.choice(cats, 80)}),
               "shifted": pd.DataFrame({"label": rng.choice(cats[:5], 80)})}
    for kind, cur in windows.items():
        try:
            name = label_stattest(300)
            assert label_stattest(300) == name  # registered once per process
            metric = ValueDrift(column="label", method=name, threshold=0.05)
            snapshot = _run([metric], ref, cur, DataDefinition(categorical_columns=["label"]))
            value = snapshot.metric_results[metric.metric_id].value
        except Exception as exc:  # noqa: BLE001 -- any failure here means the stattest registry moved
            pytest.fail(f"{_changed('its stattest registry (register_stattest / ValueDrift method names)')}: {exc!r}")
        p = label_permutation_test(ref["label"], cur["label"], 300)[1]
        assert (p < 0.05) == (kind == "shifted"), (kind, p)
        assert value == pytest.approx(p, rel=1e-12), _changed("how ValueDrift scores a registered stattest")
        assert _verdicts(snapshot, metric) == [p < 0.05], _changed("how ValueDrift judges a registered stattest")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # Evidently's SGD: max_iter=50
@pytest.mark.parametrize("shift", [False, True])
def test_text_drift_replay_gives_evidentlys_auc_and_verdict(shift):
    """DOMAIN_SPLIT, TEXT_VECTORIZER and TEXT_CLASSIFIER give Evidently's text drift AUC;
    TEXT_RANDOM_CLASSIFIERS its ``perc_text_content_drift`` verdict."""
    rng = np.random.default_rng(1)

    def texts(n, words):
        return [" ".join(rng.choice(words, int(rng.integers(3, 9)))) for _ in range(n)]

    ref = pd.DataFrame({"text": texts(240, WORDS)})
    cur = pd.DataFrame({"text": texts(90, WORDS[:12] if shift else WORDS)})
    abs_metric = ValueDrift(column="text", method="abs_text_content_drift", threshold=0.55)
    perc_metric = ValueDrift(column="text", method="perc_text_content_drift", threshold=0.95)
    snapshot = _run([abs_metric, perc_metric], ref, cur, DataDefinition(text_columns=["text"]))
    auc, y_test = text_domain_auc(ref["text"].tolist(), cur["text"].tolist())
    assert len(y_test) == 165 and 0 < y_test.sum() < 165
    for metric in (abs_metric, perc_metric):
        assert snapshot.metric_results[metric.metric_id].value == pytest.approx(auc, rel=1e-12), _changed(
            "its text drift domain classifier (DOMAIN_SPLIT, TEXT_VECTORIZER, TEXT_CLASSIFIER)")
    assert _verdicts(snapshot, abs_metric) == [auc > 0.55]
    cutoff = random_classifier_auc_quantile(y_test, 1 - 0.95)
    assert (auc > cutoff) == shift, (auc, cutoff)
    assert _verdicts(snapshot, perc_metric) == [auc > cutoff], _changed(
        "perc_text_content_drift's random classifiers (TEXT_RANDOM_CLASSIFIERS)")


def test_embedding_statistics_equal_evidentlys_methods():
    """``model`` replays DOMAIN_SPLIT and EMBEDDING_CLASSIFIER; ``distance`` and ``mmd`` Evidently's formulas."""
    from evidently.metrics.embeddings import DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod

    rng = np.random.default_rng(1)
    ref, cur = rng.normal(0, 1, (200, 16)).astype(np.float32), rng.normal(0, 1, (80, 16)).astype(np.float32)
    cur[:, 0] += 0.3
    for name, method in (("distance", DistanceDriftMethod()), ("mmd", MMDDriftMethod()), ("model", ModelDriftMethod())):
        ours = embedding_statistic(ref, cur, name)
        theirs = method(pd.DataFrame(cur), pd.DataFrame(ref))[0]
        expected = max(theirs, 0) if name == "mmd" else theirs
        assert ours == pytest.approx(expected, rel=1e-4, abs=1e-6), _changed(f"its {name!r} embedding drift method")
