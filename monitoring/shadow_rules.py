"""The shadow stage's pure parts (:mod:`tuneloop.monitoring.shadow` runs them): which requests are
shadowed, how a challenger answers them, how far an answer agrees with a reviewer's feedback, and
the verdict's rule (promote when challenger agreement >= champion agreement - tolerance).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneloop.monitoring.gate import ShadowConfig

log = logging.getLogger(__name__)

GENERATION_BATCH = 8  # replies per generate() call (the gate's batch size, training.generation)
# per task: the window column of the champion's logged answer, and the feedback column of the reviewer's
ANSWER_COLUMN = {"classification": "label", "generation": "reply"}
TRUTH_COLUMN = {"classification": "true_label", "generation": "true_reply"}
AGREEMENT_METRIC = {"classification": "accuracy", "generation": "rougeL"}  # what agreement_scores averages to


@dataclass(frozen=True)
class ShadowVerdict:
    """The comparison of both models on the shadowed requests with feedback.

    Attributes:
        promote: challenger_agreement >= champion_agreement - tolerance (and ``rows`` >= ``min_rows``).
        challenger_agreement: mean agreement of the challenger's shadow answers with the feedback (0..1).
        champion_agreement: the same for the champion's logged answers on the same requests (0..1).
        rows: paired requests compared.
        tolerance: how much worse the challenger may be.
        metric: ``accuracy`` or ``rougeL``.
        reason: the figures and the rule, in words.
    """

    promote: bool
    challenger_agreement: float
    champion_agreement: float
    rows: int
    tolerance: float
    metric: str
    reason: str


def in_sample(request_ids: Sequence[str], share: float, seed: int = 0) -> np.ndarray:
    """Which requests the seeded shadow sample holds: SHA-256 of ``"<seed>:<request id>"``, its first
    32 bits as a fraction of 2**32, below ``share``. Deterministic per request (the same request is in
    or out in any window and any process), about ``share`` of them in.

    Returns:
        bool array, shape (len(request_ids),).
    """
    buckets = [int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:8], 16) / 2**32 for rid in request_ids]
    return np.asarray(buckets, dtype=float).reshape(-1) < share


def agreement_scores(task: str, answers: Sequence[str], truths: Sequence[str]) -> np.ndarray:
    """Per request, how far an answer agrees with the reviewer's feedback, in 0..1.

    Args:
        task: ``classification`` (1.0 when the answer equals the reviewer's label, else 0.0) or
            ``generation`` (ROUGE-L F-measure of the reply against the reviewer's corrected reply,
            :func:`tuneloop.training.gen_metrics.rouge_l_each`).
        answers, truths: n answers and n feedback values, paired.

    Returns:
        float array, shape (n,).

    Raises:
        ValueError: unknown task, or lists of different lengths.
    """
    if len(answers) != len(truths):
        raise ValueError(f"{len(answers)} answers vs {len(truths)} feedback values")
    if task == "classification":
        return np.asarray([float(str(a) == str(t)) for a, t in zip(answers, truths)], dtype=float)
    if task == "generation":
        from tuneloop.training.gen_metrics import rouge_l_each

        return np.asarray(rouge_l_each(list(map(str, answers)), list(map(str, truths))) if answers else [], dtype=float)
    raise ValueError(f"the shadow stage knows tasks {sorted(ANSWER_COLUMN)}, not {task!r}")


def judge_shadow(challenger_scores: np.ndarray, champion_scores: np.ndarray, cfg: ShadowConfig,
                 metric: str) -> ShadowVerdict:
    """The shadow verdict: promote when the challenger's mean agreement is at least the champion's
    minus ``cfg.tolerance``, on the same requests, with at least ``cfg.min_rows`` of them.

    Args:
        challenger_scores, champion_scores: per-request agreement (:func:`agreement_scores`), paired, shape (n,).
        cfg: ``tolerance`` and ``min_rows``.
        metric: the agreement's name, for the reason (``accuracy``, ``rougeL``).

    Raises:
        ValueError: the arrays differ in length or hold fewer than ``cfg.min_rows`` requests.
    """
    n = len(challenger_scores)
    if n != len(champion_scores):
        raise ValueError(f"{n} challenger scores vs {len(champion_scores)} champion scores")
    if n < cfg.min_rows:
        raise ValueError(f"{n} shadowed requests with feedback; the verdict needs >= {cfg.min_rows} (min_rows)")
    challenger, champion = float(np.mean(challenger_scores)), float(np.mean(champion_scores))
    ok = challenger >= champion - cfg.tolerance
    reason = (f"shadow {metric} on {n} live requests with reviewer feedback: challenger {challenger:.4f} vs "
              f"champion {champion:.4f} (rule: challenger >= champion - {cfg.tolerance:.4f}) -> "
              f"{'promote' if ok else 'drop the challenger'}")
    return ShadowVerdict(ok, challenger, champion, n, cfg.tolerance, metric, reason)


Answerer = Callable[[str, Any, list[str], ShadowConfig], list[str]]


def answer_texts(task: str, predictor: Any, texts: list[str], cfg: ShadowConfig) -> list[str]:
    """The challenger's answers to ``texts``: a classifier's top-1 labels, or a generator's greedy
    replies of at most ``cfg.max_new_tokens`` tokens (batches of :data:`GENERATION_BATCH`; a batch that
    fails, e.g. a prompt too long, answers None for its rows, and those rows are not kept).

    Returns:
        n answers (str, or None where no answer came).
    """
    if not texts:
        return []
    if task == "classification":
        labels, _ = predictor.predict(texts)
        return [str(x) for x in labels]
    answers: list[str | None] = []
    for start in range(0, len(texts), GENERATION_BATCH):
        batch = texts[start:start + GENERATION_BATCH]
        try:
            answers += [c.text for c in predictor.generate(batch, max_new_tokens=cfg.max_new_tokens)]
        except ValueError as exc:  # PromptTooLongError is a ValueError: the service refused it too
            log.warning("shadow: %d prompts not answered: %s", len(batch), exc)
            answers += [None] * len(batch)
    return answers
