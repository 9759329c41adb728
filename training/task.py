"""The task seam: what is specific to a kind of model, behind one protocol.

tuneloop's loop (train -> evaluate -> save -> serve -> watch -> retrain -> gate -> promote) is the
same for every kind of model; what differs is reached only through a :class:`Task`. A model
version records its task's name in its metadata (``task``), so every later stage (the service,
the monitor's retraining and gate) finds the task of the champion with :func:`task_of` instead of
branching on it. Text classification (:mod:`tuneloop.training.classification`) is the first task, reply
generation (:mod:`tuneloop.training.generation`) the second.

The contract, in the order the loop uses it:

* ``name``: the registry key, saved in each model version's metadata.
* ``primary_metric``: the one metric the gate compares (higher is better), e.g. ``macro_f1``.
* ``guard_metric`` / ``guard_higher_is_better``: the metric the challenger may not worsen beyond the
  gate's tolerance (classification: accuracy, higher is better; generation: perplexity, lower).
* :meth:`Task.load_splits`: how rows are read: train / validation / test frames for a config.
* :meth:`Task.fine_tune`: how a model is trained on them (nothing saved).
* :meth:`Task.save`: how the trained model and its artifacts become a new version in the store.
* :meth:`Task.load_predictor`: how a stored version is loaded for inference.
* :meth:`Task.evaluate`: its metrics on rows (a dict that holds ``primary_metric``).
* :meth:`Task.summary`: a training result's figures, for the terminal.
* :meth:`Task.warm_up`: the passes that make the first real request fast.

What a prediction, a feedback record and the drift signals are live in the serving and monitoring
layers, keyed by the same name (a lower layer cannot import them); see the README's layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the serving worker imports this module and never needs pandas (0.6 s)
    import pandas as pd

DEFAULT_TASK = "classification"  # the task of model versions saved before tasks were recorded
TASK_KEY = "task"  # the metadata key of a model version that names its task


class Task(Protocol):
    """What one kind of model supplies to the loop (see the module docstring for the contract)."""

    name: str
    primary_metric: str
    guard_metric: str
    guard_higher_is_better: bool

    def with_config(self, cfg: Any) -> Task:
        """The task evaluating as the ``TrainConfig`` ``cfg`` says (the gate scores as training did)."""

    def load_splits(self, cfg: Any) -> Any:
        """Read and split the data of ``cfg``; returns a ``DataSplits`` (train, validation, test frames).

        Raises:
            tuneloop.training.data.DataError: the data cannot be used (the message says why).
        """

    def fine_tune(self, cfg: Any, splits: Any, extra_train: pd.DataFrame | None = None) -> Any:
        """Train on ``splits`` (+ ``extra_train`` rows); returns a ``TrainResult``. Nothing is saved."""

    def save(self, home: Any, cfg: Any, splits: Any, result: Any, extra_meta: dict | None = None,
             reference_rows: pd.DataFrame | None = None) -> str:
        """Save ``result`` as a new model version (metadata records :data:`TASK_KEY`); returns its tag."""

    def load_predictor(self, model_dir: Path | str, device: str | None = None, precision: str | None = None) -> Any:
        """Load a stored version for inference on ``device`` in ``precision`` (None: as saved)."""

    def evaluate(self, predictor: Any, rows: pd.DataFrame) -> dict[str, float]:
        """Metrics of ``predictor`` on ``rows`` (the task's columns); includes ``primary_metric``.

        Raises:
            ValueError: ``rows`` is empty.
        """

    def summary(self, result: Any) -> str:
        """A few lines of a training result's test figures, for the terminal."""

    def warm_up(self, predictor: Any) -> Any:
        """Run the warm-up passes; returns what the serving layer needs to know of them."""


def _registry() -> dict[str, Task]:
    from tuneloop.training.classification import ClassificationTask
    from tuneloop.training.generation import GenerationTask

    return {ClassificationTask.name: ClassificationTask(), GenerationTask.name: GenerationTask()}


def get_task(name: str) -> Task:
    """The task registered as ``name``.

    Raises:
        ValueError: no such task (the message lists the known ones).
    """
    tasks = _registry()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}: use one of {sorted(tasks)}")
    return tasks[name]


def task_of(metadata: dict) -> Task:
    """The task of a stored model version, from its metadata (:data:`DEFAULT_TASK` when absent)."""
    return get_task(str(metadata.get(TASK_KEY, DEFAULT_TASK)))
