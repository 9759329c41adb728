"""predictions.replica and predictions.worker: which service replica (its name, e.g. the pod or
``host:port``) and which worker process of it (BentoML's worker index) answered each request.
Both nullable: rows logged before this revision, and single-process tools, leave them empty.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("replica", sa.String(128), nullable=True))
        batch.add_column(sa.Column("worker", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("worker")
        batch.drop_column("replica")
