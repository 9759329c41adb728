"""Batched inference tuned for short texts: tokenise once, cut the batch into length groups,
run one forward pass per group, and measure what a forward pass costs while warming up.

Why groups: on CPU a forward pass costs about ``c0 + c1 * padded_tokens`` (``c0``: per-pass
Python and kernel-launch overhead; ``c1``: per-token compute). Padded to its longest text, a
batch of 32 random Banking77 test queries holds 2.7x its real tokens (15 tokens on average, 64 at
most; measured on the test split). Sorting the batch by length and cutting it into contiguous
groups that minimise ``sum(c0 + c1 * group_size * group_longest)`` removes most of that padding
at the price of a few more passes. The cut is exact (dynamic programming over the sorted
lengths, O(n^2) for n <= 64 texts, well under a millisecond).

``c0 / c1`` (the per-pass overhead in tokens) depends on the model and the machine, so it is
measured by :func:`warm_up` on every model before it serves; the same passes warm up the
kernels, so the first requests after a load or a swap are not slower than the rest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from tuneloop.training.predict import Classifier

DEFAULT_OVERHEAD_TOKENS = 64.0  # used when a measurement is not usable (about c0/c1 for MiniLM-L6, 1 thread)
MAX_OVERHEAD_TOKENS = 4096.0  # a model whose per-pass overhead dominates (tiny test models): one group
WARMUP_SHAPES = ((1, 8), (16, 32))  # (texts, tokens) of the timed passes: a short single, a padded batch
WARMUP_REPEATS = 3  # passes per shape; the median resists a noisy neighbour on a shared CPU


def plan_groups(sorted_lengths: Sequence[int], overhead_tokens: float) -> list[tuple[int, int]]:
    """Cut texts sorted by length into contiguous groups of minimal total cost.

    Args:
        sorted_lengths: token counts, ascending.
        overhead_tokens: the cost of one extra forward pass, in padded tokens (``c0 / c1``).

    Returns:
        ``[(start, end), ...]`` half-open index ranges covering ``0..n`` in order.
    """
    n = len(sorted_lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        for start in range(end):
            cost = best[start] + overhead_tokens + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], n
    while end > 0:
        groups.append((cut[end], end))
        end = cut[end]
    return groups[::-1]


def predict_proba(classifier: Classifier, texts: Sequence[str], overhead_tokens: float = DEFAULT_OVERHEAD_TOKENS) -> np.ndarray:
    """Class probabilities for ``texts`` in input order, shape ``(n, n_labels)``, float32.

    Same numbers as :meth:`Classifier.predict_proba` (padding is masked), computed in length
    groups (see the module docstring): the texts are tokenised once, ordered by token count and
    cut by :func:`plan_groups` (:mod:`tuneloop.training.batching` does the ordering, padding and
    scattering back).
    """
    import torch

    from tuneloop.training.batching import encode_texts, length_batches, run_batched
    from tuneloop.training.heads import forward_logits

    n_labels = len(classifier.labels)
    if not texts:
        return np.zeros((0, n_labels), dtype=np.float32)
    rows = encode_texts(classifier.tokenizer, texts, classifier.max_length)

    def run(idx: np.ndarray) -> np.ndarray:
        return forward_logits(classifier.model, **rows.batch(idx, classifier.device)).float().softmax(-1).cpu().numpy()

    groups = length_batches(rows.lengths, plan=lambda lengths: plan_groups(lengths, overhead_tokens))
    with torch.inference_mode():
        return run_batched(groups, run, np.empty((len(texts), n_labels), dtype=np.float32))


def _timed_pass(classifier: Classifier, n_texts: int, n_tokens: int) -> float:
    """Seconds for one forward pass over ``n_texts`` texts of ``n_tokens`` tokens."""
    import torch

    from tuneloop.training.heads import forward_logits

    token = min(1000, classifier.model.config.vocab_size - 1)  # any real token id
    ids = torch.full((n_texts, n_tokens), token, dtype=torch.long, device=classifier.device)
    mask = torch.ones_like(ids)
    if classifier.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        forward_logits(classifier.model, ids, mask)
    if classifier.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def warm_up(classifier: Classifier) -> float:
    """Run a few forward passes (kernel selection, allocator) and measure the per-pass overhead.

    Returns:
        ``c0 / c1`` in tokens (see the module docstring), clamped to ``[0, MAX_OVERHEAD_TOKENS]``;
        ``DEFAULT_OVERHEAD_TOKENS`` when the timings are not usable.
    """
    for shape in WARMUP_SHAPES:  # untimed: first calls pay one-off costs
        _timed_pass(classifier, *shape)
    (n1, l1), (n2, l2) = WARMUP_SHAPES
    t1 = float(np.median([_timed_pass(classifier, n1, l1) for _ in range(WARMUP_REPEATS)]))
    t2 = float(np.median([_timed_pass(classifier, n2, l2) for _ in range(WARMUP_REPEATS)]))
    per_token = (t2 - t1) / (n2 * l2 - n1 * l1)
    if per_token <= 0:  # overhead dominates at these sizes: batching everything is best
        return MAX_OVERHEAD_TOKENS
    overhead = (t1 - per_token * n1 * l1) / per_token
    return float(min(max(overhead, 0.0), MAX_OVERHEAD_TOKENS)) if np.isfinite(overhead) else DEFAULT_OVERHEAD_TOKENS
