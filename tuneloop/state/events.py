"""The event log: the model lifecycle and every audited action, in the traffic store's ``events`` table.

One mechanism for everything that must be inspectable and reversible by hand later: a gate's
verdict on a challenger (``gated``), a promotion (``promoted``, automatic or by ``tuneloop models
promote``), a rollback (``rolled_back``: by the post-swap watch or ``tuneloop models rollback``), a
challenger barred from promotion (``blocked``), a feedback that replaced an earlier one
(``feedback_replaced``). ``tuneloop models show`` reads a model's events as its lineage.

Rows are appended, never changed. ``actor`` says who acted (``monitor``, ``retrain``, ``cli``, a
reviewer's name); ``detail`` is JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from tuneloop.state.migrate import upgrade
from tuneloop.state.schema import Event as EventRow
from tuneloop.state.store_engine import make_engine

# The kinds tuneloop writes (a free string in the table; these are the ones readers look for).
GATED = "gated"  # a challenger's gate verdict (detail: both metric dicts, promoted, holdout_rows)
PROMOTED = "promoted"  # the champion pointer moved to ``tag`` (detail: previous)
ROLLED_BACK = "rolled_back"  # ``tag`` was reverted to the previous champion (detail: to, the watch's test)
BLOCKED = "blocked"  # ``tag`` may not be promoted again (unless ``tuneloop models promote --force``)
UNBLOCKED = "unblocked"  # a forced promotion lifted a block
FEEDBACK_REPLACED = "feedback_replaced"  # a second feedback for one request replaced the first (detail: both)
WATCHED = "watched"  # the post-swap watch of ``tag`` ended (detail: verdict "kept" | "rolled_back", requests, tests)
SHADOWED = "shadowed"  # the shadow stage's verdict on challenger ``tag`` (detail: agreements, rows)
KINDS = (GATED, PROMOTED, ROLLED_BACK, BLOCKED, UNBLOCKED, FEEDBACK_REPLACED, WATCHED, SHADOWED)


@dataclass(frozen=True)
class Event:
    """One row of the event log.

    Attributes:
        id: its order (autoincrement).
        created_at: Unix time (s).
        kind: one of :data:`KINDS` (or another string a newer tuneloop wrote).
        tag: the model tag it is about, or None.
        actor: who acted, or None.
        reason: why, in words.
        detail: decoded JSON detail ({} when none).
    """

    id: int
    created_at: float
    kind: str
    tag: str | None
    actor: str | None
    reason: str
    detail: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "created_at": self.created_at, "kind": self.kind, "tag": self.tag,
                "actor": self.actor, "reason": self.reason, "detail": self.detail}


class EventLog:
    """Append and read events in the home's traffic store.

    Args:
        store: the store's SQLAlchemy URL or SQLite path (``Home.store_url``); migrated on open.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """

    def __init__(self, store: str | Path | URL) -> None:
        self.engine = make_engine(store)
        upgrade(self.engine)

    def record(self, kind: str, reason: str, *, tag: str | None = None, actor: str | None = None,
               detail: dict[str, Any] | None = None) -> int:
        """Append one event; returns its id. ``detail`` must be JSON-able (floats of numpy are)."""
        row = EventRow(created_at=time.time(), kind=kind, tag=tag, actor=actor, reason=reason,
                       detail=json.dumps(detail, default=float) if detail is not None else None)
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def events(self, *, tag: str | None = None, kind: str | None = None, limit: int | None = None) -> list[Event]:
        """Events oldest first, optionally only those about ``tag`` and/or of ``kind``; ``limit``: the newest N."""
        stmt = select(EventRow)
        if tag is not None:
            stmt = stmt.where(EventRow.tag == tag)
        if kind is not None:
            stmt = stmt.where(EventRow.kind == kind)
        stmt = stmt.order_by(EventRow.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with Session(self.engine) as session:
            rows = list(session.scalars(stmt))
        return [Event(id=r.id, created_at=r.created_at, kind=r.kind, tag=r.tag, actor=r.actor, reason=r.reason,
                      detail=json.loads(r.detail) if r.detail else {}) for r in reversed(rows)]

    def is_blocked(self, tag: str) -> bool:
        """True when ``tag``'s newest block/unblock event is a block."""
        marks = [e for e in self.events(tag=tag) if e.kind in (BLOCKED, UNBLOCKED)]
        return bool(marks) and marks[-1].kind == BLOCKED
