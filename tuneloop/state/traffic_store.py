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
from tuneloop.state.schema import Feedback, Generation, Prediction

if TYPE_CHECKING:
    import pandas as pd  # imported where used: the serving worker never needs it (0.4 s of start-up)


class UnknownRequestError(KeyError):
    """Feedback names a request id that is not in the log."""


RATINGS = {"good": 1, "bad": -1}  # feedback.rating values


@dataclass(frozen=True)
class GenerationRecord:
    """What a generation answered (its ``generations`` row).

    Attributes:
        reply: the generated reply.
        finish_reason: ``"stop"`` or ``"length"``.
        prompt_tokens: tokens of the prompt after the chat template (>= 0).
        completion_tokens: tokens generated (>= 0).
        mean_logprob: mean natural-log probability of the generated tokens (<= 0; 0 when none).
        first_token_ms: request arrival to its first generated token, ms (None: no token).
    """

    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float
    first_token_ms: float | None = None


@dataclass(frozen=True)
class PredictionRecord:
    """One logged prediction. ``top3`` is ``[(label, probability), ...]``, best first.

    A generation is a prediction too: ``text`` is its prompt (the last user message of a chat),
    ``label`` its finish reason, ``confidence`` ``exp(mean_logprob)``, ``top3`` empty, and
    ``generation`` holds the reply (written to ``generations`` in the same transaction).
    ``replica`` names the service replica that answered (e.g. ``host:port`` or a pod name) and
    ``worker`` its worker process index (0-based); None where not known.
    """

    request_id: str
    created_at: float
    text: str
    label: str
    confidence: float
    top3: list[tuple[str, float]]
    model_tag: str
    latency_ms: float
    http_request_id: str | None = None
    generation: GenerationRecord | None = None
    replica: str | None = None
    worker: int | None = None


_INSERT_PREDICTIONS = (
    "INSERT INTO predictions (request_id, created_at, text, label, confidence, top3, model_tag, latency_ms, "
    "http_request_id, replica, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_GENERATIONS = (
    "INSERT INTO generations (request_id, reply, finish_reason, prompt_tokens, completion_tokens, mean_logprob, "
    "first_token_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# read_window's columns: the prediction's, its feedback label, then the generation's and its feedback's
WINDOW_COLUMNS = ["seq", "request_id", "created_at", "text", "label", "confidence", "top3", "model_tag", "latency_ms",
                  "replica", "worker"]
GENERATION_WINDOW_COLUMNS = ["reply", "finish_reason", "prompt_tokens", "completion_tokens", "mean_logprob",
                             "true_reply", "rating"]


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
        """Insert a batch of predictions (and the ``generations`` rows of those that carry a
        :class:`GenerationRecord`) in one committed transaction.

        Straight through the DB-API connection (one ``executemany`` per table, one commit): the
        service's log writer runs this next to the inference threads, and every step in Python is
        a wait for the GIL; SQLAlchemy's statement machinery took twice the CPU (measured).
        """
        if not records:
            return
        rows = [
            (r.request_id, r.created_at, r.text, r.label, float(r.confidence),
             json.dumps([[lab, float(p)] for lab, p in r.top3]), r.model_tag, float(r.latency_ms), r.http_request_id,
             r.replica, None if r.worker is None else int(r.worker))
            for r in records
        ]
        generations = [
            (r.request_id, g.reply, g.finish_reason, int(g.prompt_tokens), int(g.completion_tokens),
             float(g.mean_logprob), None if g.first_token_ms is None else float(g.first_token_ms))
            for r in records if (g := r.generation) is not None
        ]
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.executemany(_INSERT_PREDICTIONS, rows)
            if generations:
                cursor.executemany(_INSERT_GENERATIONS, generations)
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

    def add_generation_feedback(self, request_id: str, reply: str | None = None, rating: int | None = None) -> None:
        """Record a reviewer's corrected reply and/or rating of a logged generation. A later call for
        the same id replaces the earlier feedback as a whole (a field it leaves out becomes null).

        Args:
            request_id: the generation's request id.
            reply: the reply it should have given (non-empty), or None.
            rating: +1 (good) or -1 (bad), or None.

        Raises:
            ValueError: neither ``reply`` nor ``rating`` given, an empty reply, or a rating other than +1/-1.
            UnknownRequestError: ``request_id`` is not a logged generation.
        """
        if reply is None and rating is None:
            raise ValueError("generation feedback needs a reply, a rating, or both")
        if reply is not None and not reply.strip():
            raise ValueError("the corrected reply is empty")
        if rating is not None and rating not in (1, -1):
            raise ValueError(f"rating must be +1 (good) or -1 (bad), not {rating!r}")
        with Session(self.engine) as session, session.begin():
            known = session.scalar(select(Generation.request_id).where(Generation.request_id == request_id))
            if known is None:
                raise UnknownRequestError(request_id)
            values = {"true_label": None, "reply": reply, "rating": rating, "created_at": time.time()}
            stmt = sqlite_insert(Feedback).values(request_id=request_id, **values)
            stmt = stmt.on_conflict_do_update(index_elements=[Feedback.request_id],
                                              set_={k: getattr(stmt.excluded, k) for k in values})
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
        """Predictions with ``after_seq < seq <= until_seq``, joined with their feedback and, for
        generations, their reply.

        Returns:
            DataFrame, one row per prediction in ``seq`` order, columns ``seq, request_id,
            created_at, text, label, confidence, top3 (JSON str), model_tag, latency_ms, replica,
            worker`` (None where not recorded), ``true_label`` (None where no feedback came), then the generation columns ``reply,
            finish_reason, prompt_tokens, completion_tokens, mean_logprob`` (None for a
            classification row) and its feedback ``true_reply`` (a corrected reply) and
            ``rating`` (+1 good, -1 bad; None where none came). Integer columns that hold a None
            are float (pandas), so test them with ``isna()``.
        """
        stmt = (
            select(Prediction, Feedback.true_label, Generation.reply, Generation.finish_reason,
                   Generation.prompt_tokens, Generation.completion_tokens, Generation.mean_logprob,
                   Feedback.reply, Feedback.rating)
            .outerjoin(Feedback, Feedback.request_id == Prediction.request_id)
            .outerjoin(Generation, Generation.request_id == Prediction.request_id)
            .where(Prediction.seq > after_seq)
            .order_by(Prediction.seq)
        )
        if until_seq is not None:
            stmt = stmt.where(Prediction.seq <= until_seq)
        with Session(self.engine) as session:
            rows = [[getattr(row[0], c) for c in WINDOW_COLUMNS] + list(row[1:]) for row in session.execute(stmt).all()]
        import pandas as pd

        return pd.DataFrame(rows, columns=WINDOW_COLUMNS + ["true_label"] + GENERATION_WINDOW_COLUMNS)

    def labelled(self, after_feedback_seq: int = 0) -> pd.DataFrame:
        """Every prediction that has feedback with ``feedback.seq > after_feedback_seq``: a true
        label, or (generations) a corrected reply and/or a rating.

        Returns:
            DataFrame with columns ``feedback_seq, request_id, text, label, true_label,
            confidence, seq, true_reply, rating, reply`` in feedback order (``true_label`` None
            for a generation's feedback; ``true_reply``/``rating`` None where not given, and
            ``reply``, the generated reply, None for classification rows).
        """
        stmt = (
            select(Feedback.seq, Prediction.request_id, Prediction.text, Prediction.label,
                   Feedback.true_label, Prediction.confidence, Prediction.seq, Feedback.reply, Feedback.rating,
                   Generation.reply)
            .join(Prediction, Prediction.request_id == Feedback.request_id)
            .outerjoin(Generation, Generation.request_id == Feedback.request_id)
            .where(Feedback.seq > after_feedback_seq)
            .order_by(Feedback.seq)
        )
        with Session(self.engine) as session:
            rows = [tuple(r) for r in session.execute(stmt).all()]
        import pandas as pd

        return pd.DataFrame(rows, columns=["feedback_seq", "request_id", "text", "label", "true_label", "confidence",
                                           "seq", "true_reply", "rating", "reply"])
