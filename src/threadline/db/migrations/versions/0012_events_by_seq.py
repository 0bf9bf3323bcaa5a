"""An index on events (conversation_id, seq): an event stream asks for a conversation's events stored after
the last one it sent, every poll; with it that is a short range read, not a walk of all the conversation's
events.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_conversation_seq", "events", ["conversation_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_events_conversation_seq", "events")
