"""Drop rate_limit_buckets: rate limits are kept in each process's memory (docs/rate-limits.md); the table
was never read or written.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("rate_limit_buckets")


def downgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("bucket", sa.String(128), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
