"""One feedback write, with the rule for a second feedback on the same request.

The rule: **the latest feedback wins, and a replacement is audited.** A feedback row per request id
(the ``feedback`` table's unique key); a later feedback for the same id overwrites the earlier one as
a whole (label, or reply and rating, and the reviewer), keeps its place in feedback order (its
``seq``: a correction is not a new label, so it does not count towards ``min_new_labels``) and, in
the same transaction, appends a ``feedback_replaced`` event (:mod:`tuneloop.state.events`) whose
actor is the new reviewer and whose detail holds both versions with both reviewers. The very same
feedback sent again by the same reviewer (a client's retry) changes nothing and records nothing.

Concurrency: on PostgreSQL the feedback writers' advisory lock serialises the read of the earlier row
and the write; on SQLite the read sees the newest committed row and the write waits for the database
lock, so two writes for one id within the same few milliseconds could leave one replacement
unaudited (the stored row is still the later write).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneloop.state.events import FEEDBACK_REPLACED
from tuneloop.state.schema import Event, Feedback
from tuneloop.state.store_engine import FEEDBACK_APPEND_LOCK_KEY, advisory_xact_lock, upsert, without_nul

# The columns a feedback write sets (besides request_id and created_at); a replacement compares them.
FEEDBACK_VALUES = ("true_label", "reply", "rating", "reviewer")


@dataclass(frozen=True)
class FeedbackWrite:
    """What one feedback write did.

    Attributes:
        request_id: the request the feedback is about.
        reviewer: who sent it (None: a service without reviewer tokens).
        replaced: the earlier feedback it replaced (``true_label, reply, rating, reviewer, created_at``),
            or None when there was none (or nothing changed).
        unchanged: the same feedback from the same reviewer was stored already: nothing was written.
    """

    request_id: str
    reviewer: str | None
    replaced: dict[str, Any] | None = None
    unchanged: bool = False


def write_feedback(session: Session, request_id: str, values: dict[str, Any], reviewer: str | None,
                   postgres: bool) -> FeedbackWrite:
    """Insert or replace the feedback of ``request_id`` inside the caller's transaction (see the module
    docstring for the rule), under the feedback writers' advisory lock.

    Args:
        session: a session in a transaction on the store (the caller checked that the request exists).
        request_id: the request's id.
        values: ``true_label``, ``reply`` and ``rating`` (None where not given).
        reviewer: the reviewer's name, or None.
        postgres: the store is PostgreSQL (NUL characters become U+FFFD: its text cannot hold NUL).

    Returns:
        The :class:`FeedbackWrite`.
    """
    new = {"true_label": values.get("true_label"), "reply": values.get("reply"), "rating": values.get("rating"),
           "reviewer": reviewer}
    if postgres:
        new = dict(zip(new, without_nul(tuple(new.values())), strict=True))
    advisory_xact_lock(session, FEEDBACK_APPEND_LOCK_KEY)
    earlier = session.execute(
        select(Feedback.true_label, Feedback.reply, Feedback.rating, Feedback.reviewer, Feedback.created_at)
        .where(Feedback.request_id == request_id)).first()
    before = dict(earlier._mapping) if earlier is not None else None
    if before is not None and all(before[k] == new[k] for k in FEEDBACK_VALUES):
        return FeedbackWrite(request_id, reviewer, unchanged=True)
    now = time.time()
    session.execute(upsert(session.get_bind(), Feedback, {"request_id": request_id, **new, "created_at": now},
                           ["request_id"], [*FEEDBACK_VALUES, "created_at"]))
    if before is not None:
        session.add(Event(
            created_at=now, kind=FEEDBACK_REPLACED, tag=None, actor=reviewer,
            reason=f"a second feedback for request {request_id} replaced the first (latest wins): "
                   f"{before['reviewer'] or 'an unnamed reviewer'} -> {reviewer or 'an unnamed reviewer'}",
            detail=json.dumps({"request_id": request_id, "before": before, "after": {**new, "created_at": now}})))
    return FeedbackWrite(request_id, reviewer, replaced=before)
