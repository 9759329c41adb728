"""The traffic store: every prediction and every feedback, durably, through SQLAlchemy.

One store per home, named by a URL (:mod:`tuneloop.state.store_engine`): SQLite by default
(``<home>/traffic.db``, WAL mode, so the service writes while the monitor reads; every process on
one host), or PostgreSQL (``--db-url`` / ``$TUNELOOP_DB_URL``; replicas and monitors on many
hosts). Its tables (:mod:`tuneloop.state.schema`) are created and kept current by Alembic
migrations (:mod:`tuneloop.state.migrate`) when a handle opens it.

Durability. The service commits a request's predictions before it sends the answer (group commit,
see :mod:`tuneloop.serving.log_writer`): an acknowledged request is in the log. SQLite with
``synchronous=NORMAL`` (the default): a commit survives a killed process (``kill -9``: the WAL is in
the OS page cache); only an OS crash or power loss can drop the last commits, which
``synchronous=FULL`` (``TUNELOOP_LOG_SYNC=full``) closes with an fsync per commit. PostgreSQL
(``synchronous_commit=on``): a commit returns once the server has flushed its WAL to disk.

Order. ``seq`` orders rows as they became visible, so a reader that has seen row N has seen every
row below it (the monitor's window cursor never skips a row that committed late): SQLite has one
writer at a time; on PostgreSQL, where sequence values are handed out before commit, writers of
``predictions`` (and of ``feedback``) take a transaction-scoped advisory lock for their insert and
commit. Rows of a rolled-back transaction leave gaps in ``seq``: count rows, not seq differences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Select, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from tuneloop.state.feedback_writes import FeedbackWrite, write_feedback
from tuneloop.state.migrate import upgrade
from tuneloop.state.schema import Feedback, Generation, Prediction
from tuneloop.state.store_engine import (
    ADVISORY_XACT_LOCK_SQL,
    PREDICTIONS_APPEND_LOCK_KEY,
    describe,
    make_engine,
    placeholders,
    sqlite_file,
    without_nul,
)
from tuneloop.state.traffic_queries import window_select
from tuneloop.state.traffic_records import RATINGS, GenerationRecord, PredictionRecord, UnknownRequestError

if TYPE_CHECKING:
    import pandas as pd  # imported where used: the serving worker never needs it (0.4 s of start-up)

__all__ = ["GENERATION_WINDOW_COLUMNS", "LABELLED_COLUMNS", "RATINGS", "WINDOW_COLUMNS", "FeedbackWrite",
           "GenerationRecord", "PredictionRecord", "TrafficLog", "UnknownRequestError", "make_engine"]

_PREDICTION_COLUMNS = ("request_id", "created_at", "text", "label", "confidence", "top3", "model_tag", "latency_ms",
                       "http_request_id", "replica", "worker")
_GENERATION_COLUMNS = ("request_id", "reply", "finish_reason", "prompt_tokens", "completion_tokens", "mean_logprob",
                       "first_token_ms")
# read_window's columns: the prediction's, its feedback label, then the generation's and its feedback's
WINDOW_COLUMNS = ["seq", "request_id", "created_at", "text", "label", "confidence", "top3", "model_tag", "latency_ms",
                  "replica", "worker"]
GENERATION_WINDOW_COLUMNS = ["reply", "finish_reason", "prompt_tokens", "completion_tokens", "mean_logprob",
                             "true_reply", "rating"]
LABELLED_COLUMNS = ["feedback_seq", "request_id", "text", "label", "true_label", "confidence", "seq", "true_reply",
                    "rating", "reply", "reviewer"]


class TrafficLog:
    """Read and write the traffic store. Thread-safe (one short transaction per call).

    Args:
        store: the store: a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or the
            path of a SQLite file (created when missing). Migrated to the newest schema on open.
        synchronous: durability of this handle's commits on SQLite (``NORMAL``, ``FULL``); on
            PostgreSQL every commit is flushed (``synchronous_commit=on``).

    Attributes:
        engine: the SQLAlchemy engine.
        db_path: the SQLite file, or None on PostgreSQL.

    Raises:
        ValueError: an unknown ``synchronous`` level or an unsupported engine.
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """

    def __init__(self, store: str | Path | URL, synchronous: str = "NORMAL") -> None:
        self.engine = make_engine(store, synchronous)
        self.db_path = sqlite_file(self.engine.url)
        self._postgres = self.engine.dialect.name == "postgresql"
        upgrade(self.engine)
        self._insert_predictions = (f"INSERT INTO predictions ({', '.join(_PREDICTION_COLUMNS)}) "
                                    f"VALUES ({placeholders(self.engine, len(_PREDICTION_COLUMNS))})")
        self._insert_generations = (f"INSERT INTO generations ({', '.join(_GENERATION_COLUMNS)}) "
                                    f"VALUES ({placeholders(self.engine, len(_GENERATION_COLUMNS))})")

    def __repr__(self) -> str:
        return f"TrafficLog({describe(self.engine.url)})"

    def log_predictions(self, records: list[PredictionRecord]) -> None:
        """Insert a batch of predictions (and the ``generations`` rows of those that carry a
        :class:`GenerationRecord`) in one transaction, committed (durably, see the module
        docstring) before this returns.

        Straight through the DB-API connection (one ``executemany`` per table, one commit): the
        service's log writer runs this next to the inference threads, and every step in Python is
        a wait for the GIL; on SQLite SQLAlchemy's statement machinery took twice the CPU. On
        PostgreSQL too: psycopg's ``executemany`` (pipelined) took 1.4 ms of CPU per 8-row commit,
        SQLAlchemy Core's ``insert`` executemany (insertmanyvalues) 2.3 ms (measured, 200 commits
        each, interleaved). NUL characters in texts become U+FFFD there (PostgreSQL text cannot hold NUL).

        Raises:
            sqlalchemy's DB-API errors (e.g. ``sqlite3.IntegrityError``, ``psycopg.errors.UniqueViolation``
            for a request id already logged): nothing of the batch was written.
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
            if self._postgres:
                rows, generations = [without_nul(r) for r in rows], [without_nul(g) for g in generations]
                cursor.execute(ADVISORY_XACT_LOCK_SQL, (PREDICTIONS_APPEND_LOCK_KEY,))
            cursor.executemany(self._insert_predictions, rows)
            if generations:
                cursor.executemany(self._insert_generations, generations)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()  # back to the pool

    def add_feedback(self, request_id: str, true_label: str, reviewer: str | None = None) -> FeedbackWrite:
        """Record the true label of a logged request, and who gave it. A later call for the same id
        replaces it: latest wins, audited as a ``feedback_replaced`` event in the same transaction
        (:mod:`tuneloop.state.feedback_writes`).

        Args:
            request_id: the prediction's request id.
            true_label: the label it should have had.
            reviewer: the reviewer's name (None: unknown, e.g. a service without reviewer tokens).

        Returns:
            What the write did (replaced an earlier feedback, or changed nothing).

        Raises:
            UnknownRequestError: ``request_id`` was never logged.
        """
        with Session(self.engine) as session, session.begin():
            known = session.scalar(select(Prediction.seq).where(Prediction.request_id == request_id))
            if known is None:
                raise UnknownRequestError(request_id)
            return write_feedback(session, request_id, {"true_label": true_label}, reviewer, self._postgres)

    def add_generation_feedback(self, request_id: str, reply: str | None = None, rating: int | None = None,
                                reviewer: str | None = None) -> FeedbackWrite:
        """Record a reviewer's corrected reply and/or rating of a logged generation. A later call for
        the same id replaces the earlier feedback as a whole (a field it leaves out becomes null;
        latest wins, audited as for :meth:`add_feedback`).

        Args:
            request_id: the generation's request id.
            reply: the reply it should have given (non-empty), or None.
            rating: +1 (good) or -1 (bad), or None.
            reviewer: the reviewer's name, or None.

        Returns:
            What the write did.

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
            return write_feedback(session, request_id, {"reply": reply, "rating": rating}, reviewer, self._postgres)

    def max_seq(self) -> int:
        """The newest prediction's ``seq`` (0 when the log is empty); one primary-key index lookup."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.max(Prediction.seq))) or 0)

    def count_predictions(self) -> int:
        """How many predictions the log holds (a whole-table count: tests and reports, not cycles)."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Prediction)) or 0)

    def read_window(self, after_seq: int = 0, until_seq: int | None = None, limit: int | None = None) -> pd.DataFrame:
        """Predictions with ``after_seq < seq <= until_seq``, joined with their feedback and, for
        generations, their reply; with ``limit``, only the newest ``limit`` of them.

        With ``limit`` the newest rows are picked first (``ORDER BY seq DESC LIMIT`` on the primary
        key: ``limit`` rows read however large the span), then joined (:meth:`window_query`).

        Args:
            after_seq: exclusive lower bound of ``seq``.
            until_seq: inclusive upper bound (None: up to the newest row).
            limit: at most this many rows, the newest of the span (None: all of them).

        Returns:
            DataFrame, one row per prediction in ``seq`` order, columns ``seq, request_id,
            created_at, text, label, confidence, top3 (JSON str), model_tag, latency_ms, replica,
            worker`` (None where not recorded), ``true_label`` (None where no feedback came), then
            the generation columns ``reply, finish_reason, prompt_tokens, completion_tokens,
            mean_logprob`` (None for a classification row) and its feedback ``true_reply`` (a
            corrected reply) and ``rating`` (+1 good, -1 bad; None where none came). Integer
            columns that hold a None are float (pandas), so test them with ``isna()``.

        Raises:
            ValueError: ``limit`` < 1.
        """
        stmt = self.window_query(after_seq, until_seq, limit)
        with self.engine.connect() as conn:
            rows = [tuple(row) for row in conn.execute(stmt)]
        if limit is not None:
            rows.reverse()
        import pandas as pd

        return pd.DataFrame(rows, columns=WINDOW_COLUMNS + ["true_label"] + GENERATION_WINDOW_COLUMNS)

    def window_query(self, after_seq: int = 0, until_seq: int | None = None, limit: int | None = None) -> Select:
        """The SELECT :meth:`read_window` runs (newest first with ``limit``), e.g. for ``EXPLAIN``;
        see :func:`tuneloop.state.traffic_queries.window_select`.

        Raises:
            ValueError: ``limit`` < 1.
        """
        return window_select(WINDOW_COLUMNS, after_seq, until_seq, limit, lateral=self._postgres)

    def labelled(self, after_feedback_seq: int = 0, limit: int | None = None) -> pd.DataFrame:
        """Predictions that have feedback with ``feedback.seq > after_feedback_seq``: a true label,
        or (generations) a corrected reply and/or a rating; with ``limit``, the oldest ``limit`` of
        them (page on with ``after_feedback_seq`` = the last row's ``feedback_seq``).

        Returns:
            DataFrame with columns :data:`LABELLED_COLUMNS` (``feedback_seq, request_id, text,
            label, true_label, confidence, seq, true_reply, rating, reply, reviewer``) in feedback
            order (``true_label`` None for a generation's feedback; ``true_reply``/``rating`` None
            where not given, ``reply``, the generated reply, None for classification rows, and
            ``reviewer`` None where the feedback came without a reviewer token).

        Raises:
            ValueError: ``limit`` < 1.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        stmt = (
            select(Feedback.seq, Prediction.request_id, Prediction.text, Prediction.label,
                   Feedback.true_label, Prediction.confidence, Prediction.seq, Feedback.reply, Feedback.rating,
                   Generation.reply, Feedback.reviewer)
            .join(Prediction, Prediction.request_id == Feedback.request_id)
            .outerjoin(Generation, Generation.request_id == Feedback.request_id)
            .where(Feedback.seq > after_feedback_seq)
            .order_by(Feedback.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(stmt)]
        import pandas as pd

        return pd.DataFrame(rows, columns=LABELLED_COLUMNS)

    def count_labelled(self, after_feedback_seq: int = 0) -> int:
        """How many feedback rows have ``seq > after_feedback_seq`` (= ``len(labelled(after))``:
        every feedback row names a logged prediction, :meth:`add_feedback` refuses others); a
        range count on the feedback primary key, no rows read out."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Feedback)
                                   .where(Feedback.seq > after_feedback_seq)) or 0)
