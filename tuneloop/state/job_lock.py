"""A named, cross-process, non-blocking lock kept beside the traffic store, so that two runs of a job
(``tuneloop retrain`` from a scheduler, a monitor retraining in its own process) never overlap.

* PostgreSQL: a session-level ``pg_try_advisory_lock(key)`` on a connection of its own, held for the
  whole run. The server releases it when that connection ends, so a run that crashes (or is killed
  with SIGKILL) never leaves the lock behind. ``key`` is a signed 64-bit number derived from the
  name (:func:`lock_key`); advisory locks are per database, so runs against one store share them.
* SQLite: an exclusive ``fcntl.flock`` on ``<db file>.<name>.lock`` beside the database file; the
  kernel releases it when the process ends. SQLite stores are one-host stores (WAL), and so is the lock.

Two holders in one process conflict too (each acquisition is its own connection or open file).
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY_NAMESPACE = "tuneloop-job:"  # prefixed to the name before hashing: our keys stay clear of other users' ones


def lock_key(name: str) -> int:
    """The PostgreSQL advisory-lock key of ``name``: the first 8 bytes of SHA-256 of
    ``"tuneloop-job:<name>"`` as a signed 64-bit integer (``bigint``), the same in every process."""
    digest = hashlib.sha256((KEY_NAMESPACE + name).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_file(store_url: str, name: str) -> Path:
    """The file a SQLite store's lock ``name`` is taken on: ``<database file>.<name>.lock``.

    Raises:
        ValueError: ``store_url`` is not a SQLite URL of a database file (in-memory has no file).
    """
    from sqlalchemy.engine import make_url

    url = make_url(store_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise ValueError(f"{url.render_as_string(hide_password=True)}: not a SQLite database file")
    db = Path(url.database)
    return db.with_name(f"{db.name}.{name}.lock")


@contextmanager
def _flock(path: Path) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _advisory(store_url: str, key: int) -> Iterator[bool]:
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.pool import NullPool

    # NullPool: the connection really closes on exit (a pooled one would keep the session, and the lock)
    engine = create_engine(store_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            acquired = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
            try:
                yield acquired
            finally:
                if acquired:
                    conn.execute(select(func.pg_advisory_unlock(key)))
    finally:
        engine.dispose()


@contextmanager
def job_lock(store_url: str, name: str) -> Iterator[bool]:
    """Try to take the lock ``name`` of the store at ``store_url``, without waiting.

    Args:
        store_url: SQLAlchemy URL of the traffic store (``Home.store_url``): ``sqlite:///<file>`` or
            ``postgresql+psycopg://...``.
        name: what is locked (e.g. ``"retrain"``); runs with the same name exclude each other.

    Yields:
        True when this run holds the lock (released on exit, or by the server/kernel if the process
        dies), False when another holder has it (nothing is held then).

    Raises:
        ValueError: the store is neither SQLite (on a file) nor PostgreSQL.
        sqlalchemy.exc.OperationalError: the PostgreSQL server cannot be reached.
    """
    from sqlalchemy.engine import make_url

    backend = make_url(store_url).get_backend_name()
    if backend == "postgresql":
        with _advisory(store_url, lock_key(name)) as acquired:
            yield acquired
    elif backend == "sqlite":
        with _flock(lock_file(store_url, name)) as acquired:
            yield acquired
    else:
        raise ValueError(f"job locks need a SQLite or PostgreSQL store, not {backend!r}")
