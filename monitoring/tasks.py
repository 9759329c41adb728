"""The monitoring side of the task seam: what a task's drift signals are, and what of its champion
the monitor loads to compute them.

The monitor finds the champion's task in its metadata (:func:`tuneloop.training.task.task_of`) and
the matching :class:`MonitoringTask` with :func:`monitoring_task`:

* :meth:`MonitoringTask.champion_view`: what it loads of a champion once (a model for embeddings,
  reference embeddings, calibration, tokenizer vocabulary);
* :meth:`MonitoringTask.window_report`: the drift signals of a traffic window against the
  champion's reference sample, as a :class:`tuneloop.monitoring.signals.WindowReport` whose signal
  names are the task's :attr:`MonitoringTask.signals` (what the policy and the metrics read);
* :attr:`MonitoringTask.sufficient_signals`: which of them alarm a window alone; :func:`task_policy`
  fits the configured policy to the task's signals (Bonferroni over their number).

Retraining and the gate go through the training side (:class:`tuneloop.training.task.Task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tuneloop.monitoring.drift import DriftConfig
from tuneloop.monitoring.performance import Calibration
from tuneloop.monitoring.policy import DriftPolicy
from tuneloop.monitoring.signals import WindowReport

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@dataclass(frozen=True, eq=False)
class ChampionView:
    """What the monitor needs of the champion besides its reference sample (None where switched off).

    Attributes:
        task: the champion's task name.
        classifier: the loaded predictor used for embeddings; None without embeddings.
        reference_embeddings: its embeddings of the reference texts, shape (n_ref, hidden); None without.
        calibration: its confidence calibration; None when it has none.
        vocab: its tokenizer's vocabulary (the OOV descriptor); None without a classifier.
    """

    task: str
    classifier: object | None
    reference_embeddings: np.ndarray | None
    calibration: Calibration | None
    vocab: set[str] | None


class MonitoringTask(Protocol):
    """What one kind of model supplies to the monitor (see the module docstring)."""

    name: str
    signals: tuple[str, ...]
    sufficient_signals: tuple[str, ...]  # those of ``signals`` that alarm a window on their own (feedback)

    def champion_view(self, model_dir: Path, reference: pd.DataFrame, embeddings: bool,
                      embed_threads: int | None) -> ChampionView:
        """Load what the signals need of the champion in ``model_dir`` (seconds: a model load and
        the reference sample's embeddings when ``embeddings``)."""

    def window_report(self, reference: pd.DataFrame, window: pd.DataFrame, config: DriftConfig,
                      view: ChampionView, embed_threads: int | None, metadata: dict[str, str]) -> WindowReport:
        """The drift signals of ``window`` (``TrafficLog.read_window`` rows) against ``reference``.

        Raises:
            ValueError: the window is too small to judge (fewer than ``signals.MIN_ROWS`` rows).
        """


def monitoring_task(name: str) -> MonitoringTask:
    """The monitoring side of task ``name``.

    Raises:
        ValueError: the monitor has no signals for that task (the message lists the known ones).
    """
    from tuneloop.monitoring.classification import ClassificationMonitoring
    from tuneloop.monitoring.generation import GenerationMonitoring

    tasks = {ClassificationMonitoring.name: ClassificationMonitoring(), GenerationMonitoring.name: GenerationMonitoring()}
    if name not in tasks:
        raise ValueError(f"the monitor cannot watch task {name!r}: it watches {sorted(tasks)}")
    return tasks[name]


def task_policy(policy: DriftPolicy, name: str) -> DriftPolicy:
    """``policy`` applied to the signals of task ``name`` (:meth:`DriftPolicy.for_signals`): what the
    decision and the exported policy level of a window of that task's champion use.

    Raises:
        ValueError: unknown task (see :func:`monitoring_task`).
    """
    task = monitoring_task(name)
    return policy.for_signals(task.signals, task.sufficient_signals)
