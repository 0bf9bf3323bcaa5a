"""Events belong to their conversation: a foreign key that deletes them with it (ON DELETE CASCADE), so
deleting a conversation needs no write to the events domain's table.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Events of conversations deleted before (none are expected: deleting always took them too).
    op.execute("DELETE FROM events WHERE conversation_id NOT IN (SELECT id FROM conversations)")
    with op.batch_alter_table("events") as batch:
        batch.create_foreign_key(
            "fk_events_conversation", "conversations", ["conversation_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("fk_events_conversation", type_="foreignkey")
