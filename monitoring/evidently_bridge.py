"""What tuneloop needs from Evidently 0.7 that Evidently does not publish: the one module to update
when an Evidently release changes it.

The rest of ``monitoring/`` uses Evidently's public API only (``Report``, ``Dataset``,
``DataDefinition``, ``evidently.metrics``, ``evidently.descriptors``, ``evidently.tests``, a custom
``SingleValueMetric`` for the embedding section). Two things have no public way in 0.7.23:

1. **Naming our own drift test.** ``ValueDrift(method=...)`` accepts only the *name* of a stattest,
   and the only way to add a name is Evidently's stattest registry, which lives in ``evidently.legacy``
   (no public re-export; a callable is refused by ``ValueDrift``'s ``method: str``). The label test
   (our permutation chi-square) is registered there, so its report section (the label distributions),
   its verdict and its workspace series stay Evidently's ``ValueDrift``: :func:`label_stattest`.
2. **The settings of Evidently's domain classifiers, which we replay.** The text drift method
   (TF-IDF + SGD classifier told reference from window rows on a 50/50 split; value: held-out ROC AUC;
   ``perc_text_content_drift`` compares it with the percentile of 1000 random classifiers' AUCs) and
   the ``model`` embedding method (SGD on the same split). Evidently exposes neither the split nor the
   classifiers, but we need the split's held-out class sizes for the AUC's null (p-values, cutoffs) and
   the same AUC without running a Report (``drift_report.evidently_values``): the constants below,
   used by :mod:`tuneloop.monitoring.drift_stats`.

``tests/test_evidently_bridge.py`` checks both against the installed Evidently (the replays through
its public ``Report``) and fails with a message naming the installed version.
"""

from __future__ import annotations

from typing import Any

# Evidently's domain-classifier split: ``train_test_split(..., test_size=0.5, random_state=42, shuffle=True)``
# over [reference rows; current rows] (evidently/legacy/utils/data_drift_utils.py, embedding_drift_methods.py).
DOMAIN_SPLIT: dict[str, Any] = {"test_size": 0.5, "random_state": 42, "shuffle": True}
# Text drift: ``Pipeline([TfidfVectorizer(**TEXT_VECTORIZER), SGDClassifier(**TEXT_CLASSIFIER)])``,
# reference rows labelled 0, current rows 1.
TEXT_VECTORIZER: dict[str, Any] = {"sublinear_tf": True, "max_df": 0.5, "stop_words": "english"}
TEXT_CLASSIFIER: dict[str, Any] = {"alpha": 0.0001, "max_iter": 50, "penalty": "l1", "loss": "modified_huber",
                                   "random_state": 42}
# perc_text_content_drift: seeds = RandomState(seed).randint(0, 10 n, n); one uniform random classifier each.
TEXT_RANDOM_CLASSIFIERS: dict[str, int] = {"n": 1000, "seed": 42}
# The ``model`` embedding method: ``SGDClassifier(**EMBEDDING_CLASSIFIER)``, reference rows labelled 1.
EMBEDDING_CLASSIFIER: dict[str, Any] = {"loss": "log_loss", "random_state": 42}


def label_stattest(n_permutations: int) -> str:
    """Register (once per process) the permutation label test as an Evidently stattest.

    Args:
        n_permutations: null draws of :func:`tuneloop.monitoring.drift_stats.label_permutation_test`.

    Returns:
        The stattest name to pass as ``ValueDrift(column=..., method=name, threshold=alpha)``; its
        drift score is the permutation p-value, and it reports drift when the p-value < threshold.
    """
    from evidently import ColumnType
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        StatTestNotFoundError,
        get_registered_stattest,
        register_stattest,
    )

    from tuneloop.monitoring.drift_stats import label_permutation_test

    name = f"perm_chisquare_{n_permutations}"
    try:
        get_registered_stattest(name, ColumnType.Categorical)
    except StatTestNotFoundError:
        def impl(reference, current, feature_type: Any, threshold: float) -> tuple[float, bool]:
            p = label_permutation_test(reference, current, n_permutations)[1]
            return p, p < threshold

        register_stattest(StatTest(name=name, display_name=f"permutation chi-square p_value ({n_permutations})",
                                   allowed_feature_types=[ColumnType.Categorical]), impl)
    return name
