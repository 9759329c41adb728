"""The traffic store's window query, built once for both engines (:meth:`TrafficLog.read_window`).

A monitoring window is the newest ``limit`` predictions of a ``seq`` span, each with its feedback
and (for a generation) its reply. The rows are picked first, ``ORDER BY seq DESC LIMIT`` on the
primary key, so a span of any size costs ``limit`` rows; then their feedback and generation rows
are looked up by ``request_id`` (unique indexes on both tables).
"""

from __future__ import annotations

from sqlalchemy import Select, select, true

from tuneloop.state.schema import Feedback, Generation, Prediction


def window_select(columns: list[str], after_seq: int = 0, until_seq: int | None = None, limit: int | None = None,
                  lateral: bool = False) -> Select:
    """The window's SELECT: ``columns`` of ``predictions``, then feedback ``true_label``, the
    generation's ``reply, finish_reason, prompt_tokens, completion_tokens, mean_logprob``, then
    feedback ``reply, rating``; rows with ``after_seq < seq <= until_seq``, in ``seq`` order, or
    with ``limit`` the newest ``limit`` of them, newest first.

    Args:
        columns: ``predictions`` columns to return, in order.
        after_seq: exclusive lower bound of ``seq``.
        until_seq: inclusive upper bound (None: none).
        limit: at most this many rows (None: every row of the span).
        lateral: the PostgreSQL form: the span's rows in a ``MATERIALIZED`` CTE, feedback and
            generation looked up with ``LATERAL`` subqueries. A plain join let PostgreSQL's planner
            hash the whole feedback table (60,000 labels: 49 ms) rather than look 1,000 rows up by
            index (5 ms); ``LIMIT 1`` (request ids are unique) keeps it from flattening the
            subqueries back into that join. Without the CTE, underestimated window rows made it
            pick a parallel scan of ``predictions`` over the primary key (50,000 rows: 35 ms).
            SQLite looks rows up through the indexes by itself and has no ``LATERAL``.

    Raises:
        ValueError: ``limit`` < 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    span = select(Prediction.__table__).where(Prediction.seq > after_seq)
    if until_seq is not None:
        span = span.where(Prediction.seq <= until_seq)
    if limit is not None:
        span = span.order_by(Prediction.seq.desc()).limit(limit)
    if lateral:  # planned on its own: the backward primary-key scan, whatever the joins' estimates
        rows = span.cte("span").prefix_with("MATERIALIZED")
        fb = (select(Feedback.true_label, Feedback.reply, Feedback.rating)
              .where(Feedback.request_id == rows.c.request_id).limit(1).lateral("fb"))
        gen = (select(Generation.reply, Generation.finish_reason, Generation.prompt_tokens,
                      Generation.completion_tokens, Generation.mean_logprob)
               .where(Generation.request_id == rows.c.request_id).limit(1).lateral("gen"))
        joined = rows.outerjoin(fb, true()).outerjoin(gen, true())
    else:
        rows = span.subquery("span")
        fb, gen = Feedback.__table__, Generation.__table__
        joined = (rows.outerjoin(fb, fb.c.request_id == rows.c.request_id)
                  .outerjoin(gen, gen.c.request_id == rows.c.request_id))
    stmt = select(*(rows.c[c] for c in columns), fb.c.true_label, gen.c.reply, gen.c.finish_reason,
                  gen.c.prompt_tokens, gen.c.completion_tokens, gen.c.mean_logprob, fb.c.reply, fb.c.rating)
    return stmt.select_from(joined).order_by(rows.c.seq if limit is None else rows.c.seq.desc())
