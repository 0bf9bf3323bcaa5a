"""Pending messages: sent before a conversation is READY, delivered in order once it is.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from threadline.db.types import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("target_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("run", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.Column("conversation_id", sa.String(32), nullable=True),
        sa.UniqueConstraint("target_id", "position", name="uq_pending_messages_target_position"),
    )
    op.create_index("ix_pending_messages_undelivered", "pending_messages", ["delivered_at", "target_id"])


def downgrade() -> None:
    op.drop_index("ix_pending_messages_undelivered", "pending_messages")
    op.drop_table("pending_messages")
