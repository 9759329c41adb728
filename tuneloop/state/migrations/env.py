"""Alembic environment of the traffic store: runs on the connection :func:`tuneloop.state.migrate.upgrade`
passes in ``config.attributes["connection"]`` (no URL, no logging configuration of its own)."""

from alembic import context

from tuneloop.state.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
