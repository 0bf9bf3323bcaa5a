"""SQLite: search indexes led by (user, parent), so that a search page keeps coming in index order after ANALYZE.

With planner statistics, SQLite switched the search page from (user, created_at, id) to the parent index
plus a sort of all of the user's top-level conversations (67 ms instead of 2-4 ms for 20,000 of them, about a
second at 100,000). With the parent in the index (every search has a condition on it) it keeps the ordered
plan. PostgreSQL keeps (user, time, id): it cannot take `parent IS NULL` as fixing the column for the order.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TIMES = {"created": "created_at", "updated": "updated_at"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, column in _TIMES.items():
        op.create_index(
            f"ix_conversations_user_parent_{name}", "conversations", ["user_id", "parent_conversation_id", column, "id"]
        )
        op.drop_index(f"ix_conversations_user_{name}", "conversations")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, column in _TIMES.items():
        op.create_index(f"ix_conversations_user_{name}", "conversations", ["user_id", column, "id"])
        op.drop_index(f"ix_conversations_user_parent_{name}", "conversations")
