"""Bridge: a BentoML model store at a folder of our choosing (one per tuneloop home).

Why a bridge: BentoML 1.4 has one public model store per process, ``$BENTOML_HOME/models``, fixed
the first time BentoML reads its configuration. A tuneloop process (a test run, the demo, a
notebook) works with several homes, each with its own store, so the store must be chosen per call.
BentoML's own functions accept it only as the private keyword ``_model_store`` with a store object
from ``bentoml._internal.models``; there is no public equivalent (checked in bentoml 1.4.39 and
1.4.40). This module is the only place that touches those names; ``tests/unit/test_bentoml_model_store.py``
fails with the installed BentoML version in its message when they change.

Serving reads its models through this bridge too: each served replica has a local ``BENTOML_HOME`` of
its own (BentoML empties the Prometheus folder under it at every start, so replicas must not share
one), while the models stay in the tuneloop home's store (``TUNELOOP_HOME``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def open_store(models_dir: Path):
    """BentoML's model store object for ``models_dir`` (created if missing)."""
    from bentoml._internal.models import ModelStore

    Path(models_dir).mkdir(parents=True, exist_ok=True)
    return ModelStore(str(models_dir))


@contextmanager
def create_model(models_dir: Path, name: str, *, labels: dict[str, str], metadata: dict[str, Any]) -> Iterator[Any]:
    """``bentoml.models.create`` in ``models_dir``: yields the new model (``.path``, ``.tag``); it is
    moved into the store when the block exits without an exception, and discarded otherwise."""
    import bentoml

    with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=open_store(models_dir)) as ref:
        yield ref


def get_model(models_dir: Path, tag: str):
    """``bentoml.models.get(tag)`` in ``models_dir``.

    Raises:
        bentoml.exceptions.NotFound: no such tag there.
    """
    import bentoml

    return bentoml.models.get(tag, _model_store=open_store(models_dir))


def list_models(models_dir: Path, name: str) -> list:
    """``bentoml.models.list(name)`` in ``models_dir``.

    Raises:
        bentoml.exceptions.NotFound: no model of that name there.
    """
    import bentoml

    return bentoml.models.list(name, _model_store=open_store(models_dir))
