"""The audit table of monitor decisions, and the monitor's persisted state, in the traffic database.

Table ``decisions``: one row per monitoring cycle that looked at a window: time, the window's
``seq`` range and size, every signal (JSON: value, threshold, fired), the decision and its
reason, the champion tag, and for retrains the challenger tag, both holdout scores and whether
it was promoted. Table ``monitor_state``: key -> JSON, so a restarted monitor resumes its cursor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from tuneloop.state.migrate import upgrade
from tuneloop.state.schema import Decision as DecisionRow
from tuneloop.state.schema import MonitorState as StateRow
from tuneloop.state.store_engine import make_engine, upsert


class AuditLog:
    """Write decisions and read/write monitor state in the home's traffic store.

    Args:
        store: the store's SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or the
            path of its SQLite file; migrated to the newest schema on open.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """

    def __init__(self, store: str | Path | URL) -> None:
        self.engine = make_engine(store)
        upgrade(self.engine)

    def record(self, *, window_start_seq: int, window_end_seq: int, window_size: int, signals: dict,
               degraded: bool, decision: str, reason: str, champion_tag: str, challenger_tag: str | None = None,
               retrain: dict | None = None, report_path: str | None = None) -> int:
        """Append one decision; returns its id."""
        row = DecisionRow(created_at=time.time(), window_start_seq=window_start_seq, window_end_seq=window_end_seq,
                          window_size=window_size, signals=json.dumps(signals, default=float), degraded=degraded,
                          decision=decision, reason=reason, champion_tag=champion_tag, challenger_tag=challenger_tag,
                          retrain=json.dumps(retrain, default=float) if retrain is not None else None,
                          report_path=report_path)
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def decisions(self) -> pd.DataFrame:
        """Every decision, oldest first (``signals`` and ``retrain`` decoded from JSON)."""
        cols = [c.name for c in DecisionRow.__table__.columns]
        with Session(self.engine) as session:
            rows = [[getattr(r, c) for c in cols] for r in session.scalars(select(DecisionRow).order_by(DecisionRow.id))]
        df = pd.DataFrame(rows, columns=cols)
        if len(df):
            df["signals"] = df["signals"].map(json.loads)
            df["retrain"] = df["retrain"].map(lambda v: json.loads(v) if v else None)
        return df

    def get_state(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        with Session(self.engine) as session:
            row = session.get(StateRow, key)
            return json.loads(row.value) if row else default

    def set_state(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-able) under ``key``, replacing any earlier value."""
        stmt = upsert(self.engine, StateRow, {"key": key, "value": json.dumps(value)}, ["key"], ["value"])
        with Session(self.engine) as session, session.begin():
            session.execute(stmt)
