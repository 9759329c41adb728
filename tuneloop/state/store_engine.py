"""Engines on the traffic store, SQLite or PostgreSQL, chosen by one SQLAlchemy URL.

A store is named by a URL (``sqlite:////abs/traffic.db``, ``postgresql+psycopg://user:pass@host/db``)
or by a :class:`~pathlib.Path` (a SQLite file, as tuneloop always took). SQLite runs in WAL mode
(every process on one host); PostgreSQL serves many hosts. The few things the engines do
differently live here: the connection settings (:func:`make_engine`), the upsert statement
(:func:`upsert`), the placeholder style of raw SQL (:func:`placeholders`) and PostgreSQL's
transaction-scoped advisory locks (:func:`advisory_xact_lock`).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session

SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")
# pg_advisory_xact_lock keys (bigint), one per thing tuneloop serialises on a PostgreSQL store
MIGRATION_LOCK_KEY = 0x74756E656C6F0001  # "tunelo" + 1: first-time migrations from several processes
PREDICTIONS_APPEND_LOCK_KEY = 0x74756E656C6F0002  # writers of predictions: seq order = commit order
FEEDBACK_APPEND_LOCK_KEY = 0x74756E656C6F0003  # writers of feedback: feedback seq order = commit order
ADVISORY_XACT_LOCK_SQL = "SELECT pg_advisory_xact_lock(CAST(%s AS BIGINT))"  # raw psycopg (pyformat) SQL
_ADVISORY_XACT_LOCK = text("SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))")


def store_url(store: str | Path | URL) -> URL:
    """The SQLAlchemy URL of a store.

    Args:
        store: a URL (``str`` containing ``://``, or a ``URL``), or a path to a SQLite file
            (``Path`` or a plain ``str``; made absolute). ``postgresql://`` and ``postgres://``
            without a driver mean psycopg 3 (``postgresql+psycopg://``), the driver tuneloop ships.

    Raises:
        sqlalchemy.exc.ArgumentError: a malformed URL.
    """
    if isinstance(store, URL):
        url = store
    elif isinstance(store, str) and "://" in store:
        url = make_url(store)
    else:
        return URL.create("sqlite", database=str(Path(store).expanduser().resolve()))
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe(store: str | Path | URL) -> str:
    """The store's URL for logs and messages, its password masked (``***``)."""
    return store_url(store).render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (None for another engine, or an in-memory SQLite)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def make_engine(store: str | Path | URL, synchronous: str = "NORMAL") -> Engine:
    """A SQLAlchemy engine on the store.

    SQLite: WAL, ``synchronous`` as given, a 30 s busy timeout; the file's folder is created.
    PostgreSQL: psycopg 3, ``synchronous_commit=on`` for this engine's sessions (a commit returns
    once its WAL is flushed to the server's disk: an acknowledged request survives a crash of the
    service and of the database server), connections checked before use (a restarted server).

    Args:
        store: the store's URL or SQLite path (:func:`store_url`).
        synchronous: ``NORMAL`` or ``FULL`` (SQLite's ``synchronous`` level; on PostgreSQL both
            mean ``synchronous_commit=on``, which is already stronger than SQLite's ``FULL``).

    Raises:
        ValueError: another ``synchronous`` level, or an engine other than SQLite and PostgreSQL.
    """
    level = synchronous.upper()
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous={synchronous!r}: use NORMAL or FULL")
    url = store_url(store)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c synchronous_commit=on"})
    if backend != "sqlite":
        raise ValueError(f"unsupported traffic store {describe(url)}: use sqlite:///... or postgresql+psycopg://...")
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # every pooled connection
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={level}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return engine


def placeholders(engine: Engine, n: int) -> str:
    """``n`` comma-separated positional placeholders in the driver's paramstyle, for raw DB-API SQL
    (``?, ?`` for sqlite3, ``%s, %s`` for psycopg).

    Raises:
        ValueError: a driver with a named or numeric paramstyle.
    """
    style = engine.dialect.paramstyle
    if style == "qmark":
        mark = "?"
    elif style in ("format", "pyformat"):
        mark = "%s"
    else:
        raise ValueError(f"paramstyle {style!r} of {engine.dialect.name} is not supported")
    return ", ".join([mark] * n)


def upsert(engine: Engine, table, values: dict, key: list[str], update: list[str]):
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET update = excluded.update`` in the engine's dialect.

    Args:
        engine: decides the dialect (SQLite or PostgreSQL: both have this statement).
        table: the table (or ORM class) to write.
        values: column -> value of the one row.
        key: columns of a unique index or primary key: the conflict target.
        update: columns to overwrite on a conflict.
    """
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**values)
    return stmt.on_conflict_do_update(index_elements=key, set_={c: stmt.excluded[c] for c in update})


def advisory_xact_lock(conn: Connection | Session, key: int) -> None:
    """On PostgreSQL, wait for the transaction-scoped advisory lock ``key`` (released at commit or
    rollback); on SQLite do nothing (its writers are serialised by the database lock already).

    Args:
        conn: a ``Connection`` or ``Session`` inside the transaction the lock is to cover.
        key: a 64-bit lock key (the ``*_LOCK_KEY`` constants).
    """
    dialect = conn.dialect if isinstance(conn, Connection) else conn.get_bind().dialect
    if dialect.name == "postgresql":
        conn.execute(_ADVISORY_XACT_LOCK, {"key": key})


def without_nul(row: tuple) -> tuple:
    """``row`` with NUL characters in its strings replaced by U+FFFD. PostgreSQL's text types cannot
    hold NUL (SQLite's can); one such text from a client must not fail the whole group commit it
    shares with other requests."""
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for v in row)
