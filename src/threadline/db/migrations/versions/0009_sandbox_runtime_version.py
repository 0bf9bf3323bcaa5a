"""Sandbox specs: each sandbox records the agent-server version it runs, so a resume starts the same one.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL (every sandbox made before versions could be chosen): the runtime in THREADLINE_RUNTIME_DIR.
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("runtime_version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("runtime_version")
