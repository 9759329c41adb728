"""predictions.http_request_id: the X-Request-ID of the HTTP request that carried each text.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "http_request_id" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}:
        return  # an unversioned tuneloop 0.1 store that already had it
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("http_request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("http_request_id")
