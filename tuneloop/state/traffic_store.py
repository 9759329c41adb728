"""The traffic store: every prediction and every feedback, durably, through SQLAlchemy.

One SQLite file, ``<home>/traffic.db``, in WAL mode so the service writes while the monitor reads.
Its tables (:mod:`tuneloop.state.schema`) are created and kept current by Alembic migrations
(:mod:`tuneloop.state.migrate`) when a handle opens it. The service commits a request's
predictions before it sends the answer (group commit, see :mod:`tuneloop.serving.log_writer`): an
acknowledged request is in the log. With ``synchronous=NORMAL`` (the default) a commit survives a
killed process (``kill -9``: the WAL is in the OS page cache); only an OS crash or power loss can
drop the last commits. ``synchronous=FULL`` (``TUNELOOP_LOG_SYNC=full``) closes that gap with an
fsync per commit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tuneloop.state.migrate import upgrade
from tuneloop.state.schema import Feedback, Prediction

if TYPE_CHECKING:
    import pandas as pd  # imported where used: the serving worker never needs it (0.4 s of start-up)


class UnknownRequestError(KeyError):
    """Feedback names a request id that is not in the log."""


@dataclass(frozen=True)
class PredictionRecord:
    """One logged prediction. ``top3`` is ``[(label, probability), ...]``, best first."""

    request_id: str
    created_at: float
    text: str
    label: str
    confidence: float
    top3: list[tuple[str, float]]
    model_tag: str
    latency_ms: float
    http_request_id: str | None = None


_INSERT_PREDICTIONS = (
    "INSERT INTO predictions (request_id, created_at, text, label, confidence, top3, model_tag, latency_ms, "
    "http_request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def make_engine(db_path: Path, synchronous: str = "NORMAL"):
    """A SQLAlchemy engine on ``db_path`` with WAL, the given ``synchronous`` level
    (``NORMAL`` or ``FULL``) and a 30 s busy timeout."""
    if synchronous.upper() not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous={synchronous!r}: use NORMAL or FULL")
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # every pooled connection
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


class TrafficLog:
    """Read and write the traffic database. Thread-safe (one short session per call).

    Args:
        db_path: the SQLite file; created when missing, migrated to the newest schema on open.
        synchronous: SQLite ``synchronous`` level of this handle's commits (``NORMAL``, ``FULL``).
    """

    def __init__(self, db_path: Path, synchronous: str = "NORMAL") -> None:
        self.db_path = Path(db_path)
        self.engine = make_engine(self.db_path, synchronous)
        upgrade(self.engine, self.db_path)

    def log_predictions(self, records: list[PredictionRecord]) -> None:
        """Insert a batch of predictions in one committed transaction.

        Straight through the DB-API connection (one ``executemany``, one commit): the service's
        log writer runs this next to the inference threads, and every step in Python is a wait
        for the GIL; SQLAlchemy's statement machinery took twice the CPU (measured).
        """
        if not records:
            return
        rows = [
            (r.request_id, r.created_at, r.text, r.label, float(r.confidence),
             json.dumps([[lab, float(p)] for lab, p in r.top3]), r.model_tag, float(r.latency_ms), r.http_request_id)
            for r in records
        ]
        conn = self.engine.raw_connection()
        try:
            conn.cursor().executemany(_INSERT_PREDICTIONS, rows)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()  # back to the pool

    def add_feedback(self, request_id: str, true_label: str) -> None:
        """Record the true label of a logged request (a later call for the same id replaces it).

        Raises:
            UnknownRequestError: ``request_id`` was never logged.
        """
        with Session(self.engine) as session, session.begin():
            known = session.scalar(select(Prediction.seq).where(Prediction.request_id == request_id))
            if known is None:
                raise UnknownRequestError(request_id)
            stmt = sqlite_insert(Feedback).values(request_id=request_id, true_label=true_label, created_at=time.time())
            stmt = stmt.on_conflict_do_update(
                index_elements=[Feedback.request_id],
                set_={"true_label": stmt.excluded.true_label, "created_at": stmt.excluded.created_at},
            )
            session.execute(stmt)

    def max_seq(self) -> int:
        """The newest prediction's ``seq`` (0 when the log is empty)."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.max(Prediction.seq))) or 0)

    def count_predictions(self) -> int:
        """How many predictions the log holds."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(Prediction)) or 0)

    def read_window(self, after_seq: int = 0, until_seq: int | None = None) -> pd.DataFrame:
        """Predictions with ``after_seq < seq <= until_seq``, joined with their feedback.

        Returns:
            DataFrame, one row per prediction in ``seq`` order, columns ``seq, request_id,
            created_at, text, label, confidence, top3 (JSON str), model_tag, latency_ms,
            true_label`` (None where no feedback came).
        """
        stmt = (
            select(Prediction, Feedback.true_label)
            .outerjoin(Feedback, Feedback.request_id == Prediction.request_id)
            .where(Prediction.seq > after_seq)
            .order_by(Prediction.seq)
        )
        if until_seq is not None:
            stmt = stmt.where(Prediction.seq <= until_seq)
        cols = ["seq", "request_id", "created_at", "text", "label", "confidence", "top3", "model_tag", "latency_ms"]
        with Session(self.engine) as session:
            rows = [
                [getattr(p, c) for c in cols] + [true_label]
                for p, true_label in session.execute(stmt).all()
            ]
        import pandas as pd

        return pd.DataFrame(rows, columns=cols + ["true_label"])

    def labelled(self, after_feedback_seq: int = 0) -> pd.DataFrame:
        """Every prediction that has feedback with ``feedback.seq > after_feedback_seq``.

        Returns:
            DataFrame with columns ``feedback_seq, request_id, text, label, true_label,
            confidence, seq`` in feedback order.
        """
        stmt = (
            select(Feedback.seq, Prediction.request_id, Prediction.text, Prediction.label,
                   Feedback.true_label, Prediction.confidence, Prediction.seq)
            .join(Prediction, Prediction.request_id == Feedback.request_id)
            .where(Feedback.seq > after_feedback_seq)
            .order_by(Feedback.seq)
        )
        with Session(self.engine) as session:
            rows = [tuple(r) for r in session.execute(stmt).all()]
        import pandas as pd

        return pd.DataFrame(rows, columns=["feedback_seq", "request_id", "text", "label", "true_label", "confidence", "seq"])
