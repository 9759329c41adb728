"""Scores of generated replies against reference replies: ROUGE (Lin, 2004) through Google's
``rouge-score``, BLEU (Papineni et al., 2002) and chrF (Popović, 2015) through ``sacrebleu``, plus
the descriptors a customer-support reply is judged on: stop rate, ``{{placeholder}}`` fidelity
and length ratio. Every function is pure; inputs are equal-length lists of strings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")  # Bitext's slots, e.g. {{Order Number}}


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0..1) over the pairs: ``{"rouge1", "rouge2", "rougeL"}``.

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    _check(predictions, references)
    scores = [_scorer().score(ref, pred) for pred, ref in zip(predictions, references)]
    return {key: sum(s[key].fmeasure for s in scores) / len(scores) for key in ("rouge1", "rouge2", "rougeL")}


def rouge_l_each(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure (0..1) of each pair (live ROUGE-L of replies against reviewers' replies)."""
    _check(predictions, references)
    return [_scorer().score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def bleu_chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF on sacrebleu's 0..100 scale (one reference per reply), with its defaults
    (13a tokenisation, BLEU-4, chrF character 6-grams, beta 2).

    Raises:
        ValueError: the lists differ in length or are empty.
    """
    import sacrebleu

    _check(predictions, references)
    preds, refs = list(predictions), [list(references)]
    return {"bleu": float(sacrebleu.corpus_bleu(preds, refs).score), "chrf": float(sacrebleu.corpus_chrf(preds, refs).score)}


def placeholders(text: str) -> set[str]:
    """The ``{{placeholder}}`` names in ``text``, lowercased."""
    return {m.lower() for m in PLACEHOLDER.findall(text)}


def placeholder_fidelity(predictions: Sequence[str], references: Sequence[str]) -> float | None:
    """Mean share of each reference's placeholders that its reply also holds, over the pairs whose
    reference has any (None when none has)."""
    _check(predictions, references)
    shares = [len(placeholders(p) & placeholders(r)) / len(placeholders(r))
              for p, r in zip(predictions, references) if placeholders(r)]
    return sum(shares) / len(shares) if shares else None


def placeholder_rate(texts: Sequence[str]) -> float:
    """Share of texts holding at least one ``{{placeholder}}`` (0 for no texts)."""
    return sum(1 for t in texts if PLACEHOLDER.search(t)) / len(texts) if len(texts) else 0.0


def length_ratio(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Total words of the replies over total words of the references (1 is the same length)."""
    _check(predictions, references)
    ref_words = sum(len(r.split()) for r in references)
    return sum(len(p.split()) for p in predictions) / max(ref_words, 1)


def stop_rate(finish_reasons: Sequence[str]) -> float:
    """Share of replies that ended on their own (finish reason ``stop``) before their token budget."""
    return sum(1 for r in finish_reasons if r == "stop") / len(finish_reasons) if len(finish_reasons) else 0.0


def reply_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """ROUGE-1/2/L, BLEU, chrF, placeholder fidelity and length ratio of replies vs references."""
    return {**rouge(predictions, references), **bleu_chrf(predictions, references),
            "placeholder_fidelity": placeholder_fidelity(predictions, references),
            "length_ratio": length_ratio(predictions, references)}


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not len(predictions):
        raise ValueError(f"need equal, non-zero numbers of replies and references (got {len(predictions)} and "
                         f"{len(references)})")
