"""Serving text classification (:class:`tuneloop.serving.tasks.ServingTask`): top-3 labels per text."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneloop.serving import inference
from tuneloop.serving.tasks import ModelSwapError, PendingText
from tuneloop.state.traffic_store import PredictionRecord

SMOKE_TEXTS = ["where is my new card?", "I want a refund"]  # a new model must classify these
TOP_K = 3  # labels returned per text


class ClassificationServing:
    """A :class:`tuneloop.training.predict.Classifier` behind ``/classify`` and ``/feedback``."""

    name = "classification"

    def check(self, tag: str, predictor: Any) -> None:
        """One probability row per smoke text over the model's labels, the same through the
        service's length-grouped path as through ``Classifier.predict_proba``.

        Raises:
            ModelSwapError: (reason ``smoke``) the prediction fails or is not such rows.
        """
        try:
            proba = predictor.predict_proba(SMOKE_TEXTS)
            grouped = inference.predict_proba(predictor, SMOKE_TEXTS)
        except Exception as exc:
            raise ModelSwapError("smoke", f"model {tag} failed the smoke prediction: {type(exc).__name__}: {exc}") from exc
        if proba.shape != (len(SMOKE_TEXTS), len(predictor.labels)) or not np.allclose(proba.sum(axis=1), 1, atol=1e-3):
            raise ModelSwapError("smoke", f"model {tag} smoke prediction is not a probability row per text: {proba!r}")
        if not np.allclose(grouped, proba, atol=1e-2):
            raise ModelSwapError("smoke", f"model {tag}: the serving path disagrees with Classifier.predict_proba")

    def warm_up(self, predictor: Any) -> float:
        """:func:`tuneloop.serving.inference.warm_up`: the per-pass overhead in tokens."""
        return inference.warm_up(predictor)

    def predict(self, live: Any, items: list[PendingText], answered_at: float) -> list[PredictionRecord]:
        """Top-:data:`TOP_K` labels of each text (probabilities from length-grouped passes)."""
        proba = live.predict_proba([item.text for item in items])  # (n, n_labels)
        top_idx = np.argsort(-proba, axis=1, kind="stable")[:, :TOP_K]
        labels, records = live.classifier.labels, []
        for item, row, idx in zip(items, proba, top_idx):
            top = [(labels[j], float(row[j])) for j in idx]
            records.append(PredictionRecord(item.prediction_id, answered_at, item.text, top[0][0], top[0][1], top,
                                            live.tag, (answered_at - item.received_at) * 1000.0,
                                            item.http_request_id))
        return records

    def feedback_error(self, live: Any, value: str) -> str | None:
        """The label must be one of the live model's labels."""
        if value in live.classifier.labels:
            return None
        return (f"label {value!r} is not one of the {len(live.classifier.labels)} labels of the live model "
                f"{live.tag}; see `labels`")
