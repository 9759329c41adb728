"""Trust the loop: an ``events`` table (the model lifecycle and audited actions: a model's gate
verdict, promotions, rollbacks, blocks, replaced feedback) and ``feedback.reviewer`` (who gave the
feedback; null for rows logged before this revision or by a service without reviewer tokens).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("tag", sa.String(256), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_index("ix_events_tag", "events", ["tag"])
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("reviewer", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("reviewer")
    op.drop_index("ix_events_tag", "events")
    op.drop_index("ix_events_kind", "events")
    op.drop_index("ix_events_created_at", "events")
    op.drop_table("events")
