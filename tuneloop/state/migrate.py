"""Bring a traffic store to the newest schema with Alembic, safely from many processes at once.

:func:`upgrade` runs every time a store is opened (the service, the monitor, a CLI command): on a
current store it only reads ``alembic_version``. Processes opening a new store at once (the
service's workers, replicas, the monitor) take turns: on SQLite an ``flock`` on a file beside the
database, on PostgreSQL a transaction-scoped advisory lock (``pg_advisory_xact_lock``). PostgreSQL's
own DDL locking is not enough: two transactions that both find no ``predictions`` table both run
``CREATE TABLE``, and the second fails on a duplicate catalog row instead of waiting. A store made before migrations existed (tuneloop
0.1 created its tables directly) has some or all tables but no ``alembic_version``: the first
migrations create only what is missing, so such a store is upgraded in place and no row is touched. Writing a new migration:
``alembic -c tuneloop/state/alembic.ini revision -m "what changes"`` (see that file).
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

from tuneloop.state.store_engine import MIGRATION_LOCK_KEY, advisory_xact_lock, sqlite_file

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEAD = "head"


def alembic_config(connection=None):
    """The Alembic ``Config`` of the traffic store (``script_location`` = this package's migrations)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _file_lock(db_path: Path | None):
    """An exclusive ``flock`` on ``<db>.migrate.lock`` (no-op without a file): two processes opening
    a new store at once (the service and the monitor) must not both create its tables."""
    if db_path is None:
        yield
        return
    lock_path = db_path.with_name(db_path.name + ".migrate.lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_revision(engine) -> str | None:
    """The store's Alembic revision (None: not versioned yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision in :data:`MIGRATIONS_DIR`."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(engine, db_path: Path | None = None) -> str:
    """Migrate the store behind ``engine`` to the newest revision (idempotent, safe from many
    processes at once: see the module docstring).

    Args:
        engine: a SQLAlchemy engine on the store (SQLite or PostgreSQL).
        db_path: the SQLite file to lock beside (default: the engine's own file; unused on PostgreSQL).

    Returns:
        The revision the store is at afterwards.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the store cannot be reached or a migration failed (on
            PostgreSQL the whole upgrade is one transaction and is rolled back).
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    if current_revision(engine) == head:
        return head
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:  # DDL is transactional: all revisions or none
            advisory_xact_lock(conn, MIGRATION_LOCK_KEY)
            if MigrationContext.configure(conn).get_current_revision() != head:  # not done while we waited
                command.upgrade(alembic_config(conn), HEAD)
    else:
        with _file_lock(db_path or sqlite_file(engine.url)):
            if current_revision(engine) != head:
                with engine.begin() as conn:
                    command.upgrade(alembic_config(conn), HEAD)
    return current_revision(engine)
