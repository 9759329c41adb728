"""The statistics behind the drift signals: pure functions of arrays, no Evidently, no I/O.

Every test returns a p-value so that the policy can correct for testing several signals at once:

* :func:`label_permutation_test`: predicted-label distributions, exact-permutation chi-square (valid
  for 77 sparse intents in 100-row windows, where Evidently's asymptotic chi-square is not);
* :func:`js_distance`: the Jensen-Shannon distance of the same two distributions (a readable size);
* :func:`auc_p_value`: a held-out domain-classifier ROC AUC against the Mann-Whitney null (text drift
  and the ``model`` embedding method);
* :func:`embedding_test`: reference vs current sentence embeddings by Evidently's three methods
  (``model``, ``mmd``, ``distance``), each given a p-value (permutation null, or the AUC null);
* :func:`text_domain_auc`: Evidently's text drift value (its domain classifier's held-out ROC AUC),
  computed without a Report;
* :func:`text_descriptors`: per-text length, out-of-vocabulary share and non-letter share.

The domain classifiers replay Evidently's unpublished settings (split, classifiers), which live in
:mod:`tuneloop.monitoring.evidently_bridge` with a test that checks them against the installed Evidently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from tuneloop.monitoring.evidently_bridge import (
    DOMAIN_SPLIT,
    EMBEDDING_CLASSIFIER,
    TEXT_CLASSIFIER,
    TEXT_RANDOM_CLASSIFIERS,
    TEXT_VECTORIZER,
)

EmbeddingMethod = Literal["model", "mmd", "distance"]
_WORD = re.compile(r"[a-z]+")


def label_permutation_test(reference: Sequence, current: Sequence, n_permutations: int = 2000,
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
    ref, cur = [str(v) for v in reference], [str(v) for v in current]
    uniques, codes = np.unique(np.asarray(ref + cur, dtype=object).astype(str), return_inverse=True)
    n_ref, n_cur = len(ref), len(cur)
    total = np.bincount(codes, minlength=len(uniques))
    expected = n_cur * total / (n_ref + n_cur)
    scale = (n_ref + n_cur) ** 2 / (n_ref * n_cur)  # sum_k (c_k - e_k)^2 / t_k * scale == 2xK Pearson X^2

    def stat(counts: np.ndarray) -> np.ndarray:
        return scale * (((counts - expected) ** 2) / total).sum(axis=-1)

    observed = float(stat(np.bincount(codes[n_ref:], minlength=len(uniques))))
    null = stat(np.random.default_rng(seed).multivariate_hypergeometric(total, n_cur, size=n_permutations))
    p_value = (1 + int((null >= observed - 1e-9).sum())) / (n_permutations + 1)
    return observed, p_value


def js_distance(reference: Iterable, current: Iterable) -> float:
    """Jensen-Shannon distance (base 2, 0..1) between two samples' category frequencies."""
    from scipy.spatial.distance import jensenshannon

    ref, cur = [str(v) for v in reference], [str(v) for v in current]
    cats = sorted(set(ref) | set(cur))
    index = {c: i for i, c in enumerate(cats)}
    p = np.bincount([index[v] for v in ref], minlength=len(cats)).astype(float)
    q = np.bincount([index[v] for v in cur], minlength=len(cats)).astype(float)
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2))


def auc_null_sd(n_ref: int, n_cur: int) -> float:
    """Standard deviation of a held-out ROC AUC under H0: the Mann-Whitney U null variance / (n0 n1)^2.

    The held-out class sizes are those of Evidently's domain-classifier split
    (``evidently_bridge.DOMAIN_SPLIT``; text drift and the ``model`` embedding method both use it).
    """
    from sklearn.model_selection import train_test_split

    y_test = train_test_split(np.r_[np.zeros(n_ref), np.ones(n_cur)], **DOMAIN_SPLIT)[1]
    n1 = int(y_test.sum())
    n0 = len(y_test) - n1
    return math.sqrt((n0 + n1 + 1) / (12 * max(n0, 1) * max(n1, 1)))


def auc_p_value(auc: float, n_ref: int, n_cur: int) -> float:
    """One-sided p-value of a held-out domain-classifier ROC AUC (normal approximation of its null)."""
    from scipy.stats import norm

    return float(norm.sf((auc - 0.5) / auc_null_sd(n_ref, n_cur)))


def auc_threshold(alpha: float, n_ref: int, n_cur: int) -> float:
    """The (1 - alpha) quantile of the AUC's null: the cutoff a test at level ``alpha`` uses."""
    from scipy.stats import norm

    return 0.5 + float(norm.isf(alpha)) * auc_null_sd(n_ref, n_cur)


def _permutation_masks(n_total: int, n_cur: int, n_permutations: int, seed: int) -> np.ndarray:
    """0/1 matrix (n_permutations, n_total): which pooled rows play "current" in each null draw."""
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_permutations, n_total)), axis=1)[:, :n_cur]
    masks = np.zeros((n_permutations, n_total), dtype=np.float32)
    np.put_along_axis(masks, order, 1.0, axis=1)
    return masks


def _mean_distance_null(pooled: np.ndarray, n_cur: int, masks: np.ndarray) -> np.ndarray:
    n_ref = len(pooled) - n_cur
    cur_sum = masks @ pooled
    diff = cur_sum / n_cur - (pooled.sum(axis=0) - cur_sum) / n_ref
    return np.linalg.norm(diff, axis=1)


def _mmd2u(kernel: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each 0/1 row of ``z`` marking the "current" rows of the pooled kernel."""
    n_cur = z.sum(axis=1)
    n_ref = kernel.shape[0] - n_cur
    diag = np.diag(kernel)
    kz = z @ kernel
    s_cc = (kz * z).sum(axis=1) - z @ diag
    total = kernel.sum()
    s_cr = (kz * (1 - z)).sum(axis=1)
    s_rr = total - 2 * s_cr - (kz * z).sum(axis=1) - (1 - z) @ diag
    return s_rr / (n_ref * (n_ref - 1)) + s_cc / (n_cur * (n_cur - 1)) - 2 * s_cr / (n_ref * n_cur)


def _embedding_arrays(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = np.asarray(reference, dtype=np.float32), np.asarray(current, dtype=np.float32)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"embeddings must be 2-D with equal widths, got {ref.shape} and {cur.shape}")
    return ref, cur


def _model_auc(ref: np.ndarray, cur: np.ndarray) -> float:
    """Held-out ROC AUC of Evidently's SGD domain classifier (reference labelled 1) on its 50/50 split."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    y = np.r_[np.ones(len(ref)), np.zeros(len(cur))]
    x_tr, x_te, y_tr, y_te = train_test_split(np.vstack([ref, cur]), y, **DOMAIN_SPLIT)
    clf = SGDClassifier(**EMBEDDING_CLASSIFIER).fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1]))


def _rbf_kernel(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """RBF kernel of the pooled rows (reference first), median-distance bandwidth as in Evidently."""
    from sklearn.metrics import pairwise_distances, pairwise_kernels

    sigma2 = float(np.median(pairwise_distances(ref[:1000], cur[:1000]))) ** 2
    return pairwise_kernels(np.vstack([ref, cur]), metric="rbf", gamma=1.0 / max(sigma2, 1e-12))


def _observed_mmd2u(kernel: np.ndarray, n_ref: int, n_cur: int) -> float:
    return float(_mmd2u(kernel, np.r_[np.zeros(n_ref), np.ones(n_cur)][None, :])[0])


def embedding_statistic(reference: np.ndarray, current: np.ndarray, method: EmbeddingMethod = "distance") -> float:
    """The statistic of :func:`embedding_test` alone (no null): what the report's embedding section shows.

    Args:
        reference: reference embeddings, shape (n_ref, d).
        current: window embeddings, shape (n_cur, d).
        method: ``distance``, ``mmd`` or ``model`` (see :func:`embedding_test`).

    Returns:
        The number Evidently's method reports (the unbiased MMD^2 clipped at 0 for ``mmd``).

    Raises:
        ValueError: unknown method or mismatched dimensions.
    """
    ref, cur = _embedding_arrays(reference, current)
    if method == "model":
        return _model_auc(ref, cur)
    if method == "distance":
        return float(np.linalg.norm(cur.mean(axis=0) - ref.mean(axis=0)))
    if method == "mmd":
        return max(_observed_mmd2u(_rbf_kernel(ref, cur), len(ref), len(cur)), 0.0)
    raise ValueError(f"unknown embedding method {method!r}; use model, mmd or distance")


def embedding_test(reference: np.ndarray, current: np.ndarray, method: EmbeddingMethod = "distance",
                   n_permutations: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """Embedding drift by one of Evidently's methods, with a p-value.

    Args:
        reference: reference embeddings, shape (n_ref, d).
        current: window embeddings, shape (n_cur, d).
        method: ``distance`` (Euclidean distance between the mean embeddings; permutation null),
            ``mmd`` (unbiased MMD^2 with an RBF kernel, median-distance bandwidth as in Evidently;
            permutation null) or ``model`` (Evidently's SGD domain classifier on a 50/50 split,
            held-out ROC AUC; Mann-Whitney normal null).
        n_permutations: null draws of the permutation methods (p resolution 1/(n+1)).
        seed: seed of the null draws.
        alpha: level of the returned cutoff.

    Returns:
        (statistic, p-value, cutoff): the statistic is the number Evidently's method reports
        (:func:`embedding_statistic`); the cutoff is the null's (1 - alpha) quantile.

    Raises:
        ValueError: unknown method or mismatched dimensions.
    """
    ref, cur = _embedding_arrays(reference, current)
    pooled, n_cur = np.vstack([ref, cur]), len(cur)
    if method == "model":
        auc = _model_auc(ref, cur)
        return auc, auc_p_value(auc, len(ref), n_cur), auc_threshold(alpha, len(ref), n_cur)
    if method not in ("distance", "mmd"):
        raise ValueError(f"unknown embedding method {method!r}; use model, mmd or distance")
    masks = _permutation_masks(len(pooled), n_cur, n_permutations, seed)
    if method == "distance":
        observed = embedding_statistic(ref, cur, "distance")
        null = _mean_distance_null(pooled, n_cur, masks)
    else:
        kernel = _rbf_kernel(ref, cur)
        observed = _observed_mmd2u(kernel, len(ref), n_cur)
        null = _mmd2u(kernel, masks.astype(np.float64))
    p_value = (1 + int((null >= observed - 1e-12).sum())) / (n_permutations + 1)
    cut = float(np.quantile(null, 1 - alpha))
    if method == "mmd":  # Evidently reports the unbiased MMD^2 clipped at 0
        observed, cut = max(observed, 0.0), max(cut, 0.0)
    return observed, p_value, cut


def text_domain_auc(reference: Sequence[str], current: Sequence[str]) -> tuple[float, np.ndarray]:
    """Evidently's text drift value without a Report: its TF-IDF + SGD domain classifier's held-out ROC AUC.

    Args:
        reference, current: texts, shapes (n_ref,), (n_cur,).

    Returns:
        (ROC AUC, held-out labels (1 = current row), shape (~(n_ref + n_cur) / 2,)).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    texts = np.asarray([*reference, *current], dtype=object)
    y = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    x_tr, x_te, y_tr, y_te = train_test_split(texts, y, **DOMAIN_SPLIT)
    clf = Pipeline([("vectorization", TfidfVectorizer(**TEXT_VECTORIZER)),
                    ("classification", SGDClassifier(**TEXT_CLASSIFIER))]).fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1])), y_te


def random_classifier_auc_quantile(y_test: np.ndarray, p_value: float) -> float:
    """The (1 - p_value) percentile of random classifiers' ROC AUCs on ``y_test``: the cutoff of Evidently's
    ``perc_text_content_drift`` (its seeds, its 1000 classifiers; global NumPy state untouched)."""
    from sklearn.metrics import roc_auc_score

    n, seed = TEXT_RANDOM_CLASSIFIERS["n"], TEXT_RANDOM_CLASSIFIERS["seed"]
    seeds = np.random.RandomState(seed).randint(0, n * 10, size=n)
    aucs = [roc_auc_score(y_test, np.random.RandomState(s).rand(len(y_test))) for s in seeds]
    return float(np.percentile(aucs, 100 * (1 - p_value)))


def oov_share(texts: Iterable[str], vocab: set[str]) -> np.ndarray:
    """Per text: percent of its lower-cased words (runs of a-z) that are not whole tokens of ``vocab``.

    A word the tokenizer must split into word pieces (a typo, a rare word) counts as out of
    vocabulary. Texts without words get 0. Shape (n,), values 0..100.
    """
    out = []
    for text in texts:
        words = _WORD.findall(str(text).lower())
        out.append(100.0 * sum(w not in vocab for w in words) / len(words) if words else 0.0)
    return np.asarray(out, dtype=float)


def text_descriptors(texts: Sequence[str], vocab: set[str]) -> dict[str, np.ndarray]:
    """The three text descriptors, each shape (n,): ``text_length`` (characters), ``oov_share`` (percent
    of words out of the tokenizer's vocabulary) and ``non_letter_share`` (percent of characters that are
    not letters or spaces, as Evidently's NonLetterCharacterPercentage counts them)."""
    texts = [str(t) for t in texts]
    length = np.asarray([len(t) for t in texts], dtype=float)
    non_letter = np.asarray([100.0 * sum(not (c.isalpha() or c == " ") for c in t) / len(t) if t else 0.0
                             for t in texts])
    return {"text_length": length, "oov_share": oov_share(texts, vocab), "non_letter_share": non_letter}
