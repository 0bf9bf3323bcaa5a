"""Safe writes and sharp queries: tag index table, idempotency records, rate-limit buckets, filter indexes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from threadline.db.types import JSONType, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FILTER_COLUMNS = ("selected_repository", "git_provider", "trigger", "public", "execution_status", "llm_model")


def upgrade() -> None:
    op.create_table(
        "conversation_tags",
        sa.Column(
            "conversation_id",
            sa.String(32),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
    )
    op.create_index("ix_conversation_tags_user_key_value", "conversation_tags", ["user_id", "key", "value"])
    # Existing tags move into the index table.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, user_id, tags FROM conversations")).all()
    table = sa.table(
        "conversation_tags",
        sa.column("conversation_id"),
        sa.column("key"),
        sa.column("value"),
        sa.column("user_id"),
    )
    for conversation_id, user_id, tags in rows:
        if isinstance(tags, str):
            tags = json.loads(tags)
        if tags:
            op.bulk_insert(
                table,
                [
                    {"conversation_id": conversation_id, "key": k, "value": v, "user_id": user_id}
                    for k, v in tags.items()
                ],
            )
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("operation", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("response_status", sa.Integer, nullable=True),
        sa.Column("response_body", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_idempotency_keys_expires", "idempotency_keys", ["expires_at"])
    op.create_table(
        "rate_limit_buckets",
        sa.Column("bucket", sa.String(128), primary_key=True),
        sa.Column("tokens", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    for column in FILTER_COLUMNS:
        op.create_index(f"ix_conversations_user_{column}", "conversations", ["user_id", column, "created_at"])
    op.create_index("ix_conversations_user_cost", "conversations", ["user_id", "accumulated_cost"])


def downgrade() -> None:
    op.drop_index("ix_conversations_user_cost", "conversations")
    for column in FILTER_COLUMNS:
        op.drop_index(f"ix_conversations_user_{column}", "conversations")
    op.drop_table("rate_limit_buckets")
    op.drop_table("idempotency_keys")
    op.drop_table("conversation_tags")
