"""Warm pool: a sandbox may belong to no user yet (pre-started, waiting to be claimed).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.alter_column("user_id", existing_type=sa.String(32), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM sandboxes WHERE user_id IS NULL")
    with op.batch_alter_table("sandboxes") as batch:
        batch.alter_column("user_id", existing_type=sa.String(32), nullable=False)
