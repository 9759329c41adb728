"""Loading a champion beside the live model: load, smoke-test, and only then hand it over.

A model folder that fails to load or gives a smoke prediction that is not a probability row per
text is refused with :class:`ModelSwapError`, and the caller keeps serving the old model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.home import Home
from training.predict import Classifier
from training.store import ModelNotFoundError, get_model

SMOKE_TEXTS = ["where is my new card?", "I want a refund"]  # a new model must classify these


@dataclass(frozen=True)
class LiveModel:
    """A loaded, smoke-tested model and its store tag (``name:version``)."""

    tag: str
    classifier: Classifier  # never mutated once live: in-flight batches keep their reference


@dataclass(frozen=True)
class ReloadOutcome:
    """Result of one champion check. ``error`` says why the champion is not serving, if it is not."""

    reloaded: bool
    model_tag: str | None
    champion_tag: str | None
    error: str | None = None


class ModelSwapError(RuntimeError):
    """A champion could not be swapped in; ``reason`` is ``not_found``, ``load`` or ``smoke``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_checked(home: Home, tag: str) -> LiveModel:
    """Load model ``tag`` from the store and smoke-test it, without touching the live model.

    Raises:
        ModelSwapError: the tag is not in the store, its folder does not load, or its smoke
            prediction is not a finite probability row per text over its labels.
    """
    try:
        stored = get_model(home, tag)
    except ModelNotFoundError as exc:
        raise ModelSwapError("not_found", str(exc)) from exc
    try:
        classifier = Classifier.load(stored.path)
    except Exception as exc:  # anything wrong with an unvetted folder must leave the old model serving
        raise ModelSwapError("load", f"model {tag} failed to load: {type(exc).__name__}: {exc}") from exc
    try:
        proba = classifier.predict_proba(SMOKE_TEXTS)
    except Exception as exc:
        raise ModelSwapError("smoke", f"model {tag} failed the smoke prediction: {type(exc).__name__}: {exc}") from exc
    if proba.shape != (len(SMOKE_TEXTS), len(classifier.labels)) or not np.allclose(proba.sum(axis=1), 1, atol=1e-3):
        raise ModelSwapError("smoke", f"model {tag} smoke prediction is not a probability row per text: {proba!r}")
    return LiveModel(tag=tag, classifier=classifier)
