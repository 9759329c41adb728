"""Monitoring text classification (:class:`tuneloop.monitoring.tasks.MonitoringTask`): the six drift
signals of :mod:`tuneloop.monitoring.drift` over the champion's own sentence embeddings."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd

from tuneloop.monitoring.drift import DriftConfig, compute_signals
from tuneloop.monitoring.embeddings import embed_texts
from tuneloop.monitoring.performance import load_calibration
from tuneloop.monitoring.signals import ACCURACY, ALL_SIGNALS, WindowReport
from tuneloop.monitoring.tasks import ChampionView


class ClassificationMonitoring:
    """Text, descriptor, embedding, label and confidence drift, and the feedback accuracy drop."""

    name = "classification"
    signals = ALL_SIGNALS
    sufficient_signals = (ACCURACY,)  # a significant accuracy drop on enough feedback alarms a window alone

    def champion_view(self, model_dir: Path, reference: pd.DataFrame, embeddings: bool,
                      embed_threads: int | None) -> ChampionView:
        """The classifier (its mean-pooled states are the embeddings), the reference embeddings,
        the confidence calibration and the tokenizer vocabulary."""
        from tuneloop.training.predict import Classifier

        clf = Classifier.load(model_dir) if embeddings else None
        ref_emb = (embed_texts(clf, reference["text"].astype(str).tolist(), threads=embed_threads)
                   if clf is not None else None)
        vocab = set(clf.tokenizer.get_vocab()) if clf is not None else None
        return ChampionView(self.name, clf, ref_emb, load_calibration(model_dir, reference), vocab)

    def window_report(self, reference: pd.DataFrame, window: pd.DataFrame, config: DriftConfig,
                      view: ChampionView, embed_threads: int | None, metadata: dict[str, str]) -> WindowReport:
        """:func:`tuneloop.monitoring.drift.compute_signals` with the champion's view."""
        embed = partial(embed_texts, view.classifier, threads=embed_threads) if view.classifier is not None else None
        return compute_signals(reference, window, config, metadata=metadata,
                               reference_embeddings=view.reference_embeddings, current_embeddings=embed,
                               calibration=view.calibration, vocab=view.vocab)
