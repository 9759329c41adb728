"""The traffic store as tuneloop 0.1 created it: predictions, feedback, decisions, monitor_state.

tuneloop 0.1 created these tables itself, each when the first handle that needed it opened the file,
so an unversioned store may hold any subset of them: each table is created only when missing.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if "predictions" not in have:
        _predictions()
    if "feedback" not in have:
        _feedback()
    if "decisions" not in have:
        _decisions()
    if "monitor_state" not in have:
        op.create_table(
            "monitor_state",
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )


def _predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("top3", sa.Text, nullable=False),
        sa.Column("model_tag", sa.String(256), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_predictions_request_id", "predictions", ["request_id"], unique=True)
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])


def _feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("true_label", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_request_id", "feedback", ["request_id"], unique=True)


def _decisions() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("window_start_seq", sa.Integer, nullable=False),
        sa.Column("window_end_seq", sa.Integer, nullable=False),
        sa.Column("window_size", sa.Integer, nullable=False),
        sa.Column("signals", sa.Text, nullable=False),
        sa.Column("degraded", sa.Boolean, nullable=False),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("champion_tag", sa.String(256), nullable=False),
        sa.Column("challenger_tag", sa.String(256), nullable=True),
        sa.Column("retrain", sa.Text, nullable=True),
        sa.Column("report_path", sa.Text, nullable=True),
    )
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])


def downgrade() -> None:
    for table in ("monitor_state", "decisions", "feedback", "predictions"):
        op.drop_table(table)
