"""The traffic store's schema: one SQLAlchemy declarative base for every table tuneloop keeps.

Tables (their history is in :mod:`tuneloop.state.migrations`; change them only through a new
migration):

    predictions: seq (autoincrement order), request_id (unique), created_at (Unix s), text,
        label, confidence (0..1), top3 (JSON list of [label, prob]), model_tag, latency_ms,
        http_request_id (the ``X-Request-ID`` of the HTTP request that carried the text), replica
        (the service replica that answered, e.g. ``host:port`` or the pod name) and worker (its
        worker process index); both null when not known.
    feedback: seq, request_id (unique; a second feedback for the same id replaces the first),
        true_label (classification; null for a generation's feedback), reply (a reviewer's
        corrected reply, generation), rating (+1 good, -1 bad, generation), created_at.
    generations: what a generation answered, one row per generation ``predictions`` row (same
        request_id, unique; the prediction row holds the prompt): reply, finish_reason
        (``stop``/``length``), prompt_tokens, completion_tokens, mean_logprob (mean natural-log
        probability of the generated tokens, <= 0), first_token_ms (request arrival to first token).
    decisions: one row per monitoring cycle that judged a window: its seq range and size, every
        signal (JSON), the decision and its reason, champion and challenger tags, the retrain
        outcome (JSON) and the report's path.
    monitor_state: key -> JSON value (the monitor's cursors, so a restart resumes).
    events: the model lifecycle and every audited action, one row each: kind (``gated``,
        ``promoted``, ``rolled_back``, ``blocked``, ``feedback_replaced``, ...), the model tag it is
        about (null when none), the actor (``monitor``, ``retrain``, ``cli:<user>``, a reviewer),
        the reason and a JSON detail (:mod:`tuneloop.state.events`).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every table in the traffic store."""


class Prediction(Base):
    """One answered text."""

    __tablename__ = "predictions"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(256))
    confidence: Mapped[float] = mapped_column(Float)
    top3: Mapped[str] = mapped_column(Text)
    model_tag: Mapped[str] = mapped_column(String(256))
    latency_ms: Mapped[float] = mapped_column(Float)
    http_request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    replica: Mapped[str | None] = mapped_column(String(128), nullable=True)
    worker: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Feedback(Base):
    """A reviewer's verdict on one logged prediction: a true label (classification), or a corrected
    reply and/or a rating (generation)."""

    __tablename__ = "feedback"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    true_label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reviewer: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Generation(Base):
    """What one generation answered (its prompt is the ``predictions`` row of the same request_id)."""

    __tablename__ = "generations"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reply: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    mean_logprob: Mapped[float] = mapped_column(Float)
    first_token_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class Decision(Base):
    """One monitoring decision (the audit trail)."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    window_start_seq: Mapped[int] = mapped_column(Integer)
    window_end_seq: Mapped[int] = mapped_column(Integer)
    window_size: Mapped[int] = mapped_column(Integer)
    signals: Mapped[str] = mapped_column(Text)
    degraded: Mapped[bool] = mapped_column(Boolean)
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    champion_tag: Mapped[str] = mapped_column(String(256))
    challenger_tag: Mapped[str | None] = mapped_column(String(256), nullable=True)
    retrain: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)


class MonitorState(Base):
    """A persisted monitor value (JSON), by key."""

    __tablename__ = "monitor_state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Event(Base):
    """One audited event (:mod:`tuneloop.state.events`)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    tag: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
