"""Versioned models in the BentoML model store, and the champion pointer.

Every trained model is a new version (tag ``<name>:<version>``) in the home's BentoML store,
holding ``model.safetensors`` + ``config.json`` + the tokenizer files + ``reference.jsonl`` (the
drift reference sample) and, in its BentoML metadata, the label list, metrics, base model,
training config and the SHA-256 of the training data.

Which version serves is the *champion pointer*, ``<home>/champion.json``. BentoML's ``:latest``
means "most recently created", which would serve an unvetted challenger the moment it is saved,
so the pointer is our own: it moves only through :func:`promote` (and :func:`rollback`, which promotes
an earlier champion back), which writes a temporary file, fsyncs it and ``os.replace``-s it over the
old one (atomic on POSIX), so a reader sees the old pointer or the new one, never a torn file, and
the pointer survives restarts. Every move is recorded in the home's event log
(:mod:`tuneloop.state.events`), which is also where the champion history comes from.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneloop.state import bentoml_model_store
from tuneloop.state.events import BLOCKED, PROMOTED, ROLLED_BACK, EventLog
from tuneloop.state.home import Home

DEFAULT_MODEL_NAME = "tuneloop-classifier"
# Files of a model version folder that other stages read by name:
REFERENCE_FILE = "reference.jsonl"  # the drift reference sample (texts, predictions, confidences)
CALIBRATION_FILE = "calibration.jsonl"  # validation-split outputs, for label-free accuracy estimates


class ModelNotFoundError(LookupError):
    """No model with that tag in the home's store, or no champion chosen yet."""


def save_model(
    home: Home,
    write: Callable[[Path], None],
    *,
    name: str = DEFAULT_MODEL_NAME,
    metadata: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> str:
    """Create a new model version in the store.

    Args:
        home: the tuneloop home.
        write: called with the new version's folder; writes the model files into it. If it
            raises, nothing is saved.
        name: model name in the store (the tag's left part).
        metadata: JSON-able metadata stored in the version's ``model.yaml``.
        labels: BentoML labels (str to str), for filtering in ``bentoml models list``.

    Returns:
        The new tag, ``"<name>:<version>"``.
    """
    with bentoml_model_store.create_model(home.models_dir, name, labels=labels or {},
                                          metadata=_drop_none(metadata)) as ref:
        write(Path(ref.path))
    return str(ref.tag)


def _drop_none(value: Any) -> Any:
    """BentoML metadata refuses None: drop None entries (a missing key reads back as the default)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value if v is not None]
    return value


def get_model(home: Home, tag: str):
    """The stored model ``tag`` (a ``bentoml.Model``: ``.tag``, ``.path``, ``.info.metadata``).

    Raises:
        ModelNotFoundError: no such tag in this home's store.
    """
    from bentoml.exceptions import NotFound

    try:
        return bentoml_model_store.get_model(home.models_dir, tag)
    except NotFound as exc:
        raise ModelNotFoundError(f"model {tag!r} is not in the store at {home.models_dir}") from exc


def list_models(home: Home, name: str = DEFAULT_MODEL_NAME) -> list:
    """All stored versions of ``name``, oldest first (empty list when there are none)."""
    from bentoml.exceptions import NotFound

    try:
        models = bentoml_model_store.list_models(home.models_dir, name)
    except NotFound:
        return []
    return sorted(models, key=lambda m: m.info.creation_time)


@dataclass(frozen=True)
class ChampionPointer:
    """The content of ``champion.json``.

    Attributes:
        tag: the serving model's tag.
        promoted_at: Unix time (seconds) of the promotion.
        reason: why it was promoted (``"first model"``, the gate's verdict, ``"manual"``).
        previous: the tag it replaced, or None.
    """

    tag: str
    promoted_at: float
    reason: str
    previous: str | None = None


def read_champion(home: Home) -> ChampionPointer | None:
    """The current champion pointer, or None when no model was ever promoted."""
    try:
        data = json.loads(home.champion_path.read_text())
    except FileNotFoundError:
        return None
    return ChampionPointer(**data)


def require_champion(home: Home) -> ChampionPointer:
    """Like :func:`read_champion`, but raises ModelNotFoundError with a hint when there is none."""
    pointer = read_champion(home)
    if pointer is None:
        raise ModelNotFoundError(
            f"no champion model in {home.root}: run `tuneloop train --home {home.root} ...` first"
        )
    return pointer


@contextmanager
def _event_log(home: Home, events: EventLog | None) -> Iterator[EventLog]:
    """``events`` as given, or the home's event log opened for this call and its engine disposed after
    (a PostgreSQL engine keeps pooled connections open until disposed)."""
    if events is not None:
        yield events
        return
    own = EventLog(home.store_url)
    try:
        yield own
    finally:
        own.engine.dispose()


def promote(home: Home, tag: str, reason: str, *, actor: str | None = None, kind: str = PROMOTED,
            detail: dict[str, Any] | None = None, events: EventLog | None = None) -> ChampionPointer:
    """Make ``tag`` the champion, atomically (tmp file + fsync + ``os.replace`` + dir fsync), and
    append a ``kind`` event (default ``promoted``; :func:`rollback` writes ``rolled_back``) to the
    home's event log (:mod:`tuneloop.state.events`) with ``reason``, ``actor`` and ``detail`` plus
    ``previous`` (the tag it replaced).

    Raises:
        ModelNotFoundError: ``tag`` is not in the store (the pointer is left as it was).
        sqlalchemy.exc.OperationalError: the event log's store cannot be reached (the pointer has moved).

    ``events``: an open event log to record in (default: the home's, opened for this call).
    """
    get_model(home, tag)
    old = read_champion(home)
    pointer = ChampionPointer(tag=tag, promoted_at=time.time(), reason=reason, previous=old.tag if old else None)
    home.root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".champion.", dir=home.root)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(pointer), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, home.champion_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(home.root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    event_tag = pointer.previous if kind == ROLLED_BACK else tag  # a rollback is about the model reverted
    with _event_log(home, events) as log:
        log.record(kind, reason, tag=event_tag, actor=actor,
                   detail={**(detail or {}), "champion": tag, "previous": pointer.previous})
    return pointer


def champion_history(home: Home, events: EventLog | None = None) -> list[str]:
    """Tags that were champion, oldest first, from the event log's ``promoted`` and ``rolled_back``
    events (each event's ``detail.champion``): the chain :func:`rollback` walks back."""
    chain: list[str] = []
    with _event_log(home, events) as log:
        history = log.events()
    for event in history:
        if event.kind in (PROMOTED, ROLLED_BACK) and event.detail.get("champion"):
            chain.append(event.detail["champion"])
    return chain


def rollback_target(home: Home, events: EventLog | None = None) -> str:
    """The tag :func:`rollback` would serve: the newest earlier champion that is neither the current
    champion nor blocked (:meth:`EventLog.is_blocked`).

    Raises:
        ModelNotFoundError: no champion, or no earlier unblocked champion to go back to.
    """
    current = require_champion(home).tag
    with _event_log(home, events) as log:
        history = champion_history(home, log) or [t for t in (read_champion(home).previous,) if t]
        for tag in reversed(history):
            if tag != current and not log.is_blocked(tag):
                return tag
    raise ModelNotFoundError(f"{current} has no earlier champion to roll back to in {home.root}")


def rollback(home: Home, reason: str, *, actor: str | None = None, block: bool = True,
             detail: dict[str, Any] | None = None) -> ChampionPointer:
    """Revert the champion pointer to :func:`rollback_target` (atomic, as :func:`promote`), record a
    ``rolled_back`` event about the reverted tag and, when ``block``, a ``blocked`` event so the gate
    never promotes it again (``tuneloop models promote --force`` lifts it).

    Raises:
        ModelNotFoundError: nothing to roll back to.
    """
    bad = require_champion(home).tag
    with _event_log(home, None) as log:  # one engine for the lookup and both records
        pointer = promote(home, rollback_target(home, log), reason, actor=actor, kind=ROLLED_BACK, detail=detail,
                          events=log)
        if block:
            log.record(BLOCKED, f"rolled back: {reason}", tag=bad, actor=actor)
    return pointer


def promote_if_first(home: Home, tag: str) -> bool:
    """Promote ``tag`` when there is no champion yet (the first model saved). Returns True if it did."""
    if read_champion(home) is not None:
        return False
    promote(home, tag, reason="first model")
    return True
