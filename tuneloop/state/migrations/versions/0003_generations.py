"""Generation traffic: a ``generations`` table (one row per generation, keyed by its request_id),
and feedback for replies: ``feedback.reply`` (a corrected reply), ``feedback.rating`` (+1 / -1),
``feedback.true_label`` nullable (a generation's feedback has no label).

``batch_alter_table``: SQLite cannot alter a column's nullability, so on SQLite Alembic copies the
table (rows and named indexes kept); on PostgreSQL the same operations are plain ``ALTER TABLE``.
The copy loses an unnamed inline ``UNIQUE`` (tuneloop 0.1 created feedback with one, and no
index): the unique index of the current schema is then created, so feedback upserts keep working.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("mean_logprob", sa.Float, nullable=False),
        sa.Column("first_token_ms", sa.Float, nullable=True),
    )
    with op.batch_alter_table("feedback") as batch:
        batch.alter_column("true_label", existing_type=sa.String(256), nullable=True)
        batch.add_column(sa.Column("reply", sa.Text, nullable=True))
        batch.add_column(sa.Column("rating", sa.Integer, nullable=True))
    _ensure_unique_request_id()


def _ensure_unique_request_id() -> None:
    if op.get_context().as_sql:  # offline SQL script: no store to inspect (0001 made the named index)
        return
    inspector = sa.inspect(op.get_bind())
    unique = [ix["column_names"] for ix in inspector.get_indexes("feedback") if ix["unique"]]
    unique += [uc["column_names"] for uc in inspector.get_unique_constraints("feedback")]
    if ["request_id"] not in unique:
        op.create_index("ix_feedback_request_id", "feedback", ["request_id"], unique=True)


def downgrade() -> None:
    op.execute("DELETE FROM feedback WHERE true_label IS NULL")  # a generation's feedback has no label
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("rating")
        batch.drop_column("reply")
        batch.alter_column("true_label", existing_type=sa.String(256), nullable=False)
    op.drop_table("generations")
