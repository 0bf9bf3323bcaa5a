"""Core: users, API keys, conversations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from threadline.db.types import JSONType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("sandbox_id", sa.String(64), nullable=False),
        sa.Column("selected_repository", sa.String(512), nullable=True),
        sa.Column("selected_branch", sa.String(256), nullable=True),
        sa.Column("git_provider", sa.String(32), nullable=True),
        sa.Column("title", sa.Text, nullable=True),
        sa.Column("title_set_by_user", sa.Boolean, nullable=False),
        sa.Column("trigger", sa.String(32), nullable=True),
        sa.Column("pr_number", JSONType, nullable=False),
        sa.Column("llm_model", sa.String(256), nullable=True),
        sa.Column("agent_kind", sa.String(32), nullable=False),
        sa.Column("parent_conversation_id", sa.String(32), nullable=True),
        sa.Column("public", sa.Boolean, nullable=True),
        sa.Column("tags", JSONType, nullable=False),
        sa.Column("execution_status", sa.String(32), nullable=True),
        sa.Column("metrics_model_name", sa.String(256), nullable=False),
        sa.Column("accumulated_cost", sa.Float, nullable=False),
        sa.Column("max_budget_per_task", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("context_window", sa.BigInteger, nullable=False),
        sa.Column("per_turn_token", sa.BigInteger, nullable=False),
        sa.Column("response_id", sa.String(256), nullable=False),
        sa.Column("has_metrics", sa.Boolean, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_conversations_user_created", "conversations", ["user_id", "created_at", "id"])
    op.create_index("ix_conversations_user_updated", "conversations", ["user_id", "updated_at", "id"])
    op.create_index("ix_conversations_parent", "conversations", ["parent_conversation_id"])
    op.create_index("ix_conversations_sandbox", "conversations", ["sandbox_id"])


def downgrade() -> None:
    op.drop_table("conversations")
    op.drop_table("api_keys")
    op.drop_table("users")
