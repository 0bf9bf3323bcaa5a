"""Instance leases: which Threadline process owns which sandbox.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from threadline.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    )
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("owner_instance", sa.String(32), nullable=True))
    op.create_index("ix_sandboxes_owner_instance", "sandboxes", ["owner_instance"])
    with op.batch_alter_table("start_tasks") as batch:
        batch.add_column(sa.Column("owner_instance", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("start_tasks") as batch:
        batch.drop_column("owner_instance")
    op.drop_index("ix_sandboxes_owner_instance", "sandboxes")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("owner_instance")
    op.drop_table("instances")
