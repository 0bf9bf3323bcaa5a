"""An index on events (conversation_id, seq): an event stream asks for a conversation's events stored after
the last one it sent, every poll; with it that is a short range read, not a walk of all the conversation's
events.

Revision ID: 0012
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0012"
# 0011 is being written on another branch: when both are merged this becomes "0011".
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_conversation_seq", "events", ["conversation_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_conversation_seq", "events")
