"""Conversations that run: sandboxes, start tasks, events, per-user settings.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from threadline.db.types import JSONType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("execution_status_at", UTCDateTime, nullable=True))
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("spec_id", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("pid", sa.Integer, nullable=True),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("url", sa.String(512), nullable=True),
        sa.Column("work_dir", sa.String(1024), nullable=True),
        sa.Column("session_key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("session_key_enc", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sandboxes_user_created", "sandboxes", ["user_id", "created_at", "id"])
    op.create_index("ix_sandboxes_status", "sandboxes", ["status"])
    op.create_table(
        "start_tasks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("app_conversation_id", sa.String(32), nullable=True),
        sa.Column("sandbox_id", sa.String(32), nullable=True),
        sa.Column("agent_server_url", sa.String(512), nullable=True),
        sa.Column("request", JSONType, nullable=False),
        sa.Column("history", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_start_tasks_user_created", "start_tasks", ["user_id", "created_at", "id"])
    op.create_index("ix_start_tasks_conversation", "start_tasks", ["app_conversation_id"])
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("timestamp", UTCDateTime, nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.UniqueConstraint("conversation_id", "event_id", name="uq_events_conversation_event"),
    )
    op.create_index("ix_events_conversation_time", "events", ["conversation_id", "timestamp", "event_id"])
    op.create_index("ix_events_conversation_kind_time", "events", ["conversation_id", "kind", "timestamp", "event_id"])
    op.create_table(
        "user_settings",
        sa.Column("user_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("llm_model", sa.String(256), nullable=True),
        sa.Column("llm_base_url", sa.String(1024), nullable=True),
        sa.Column("llm_api_key_enc", sa.Text, nullable=True),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("user_settings")
    op.drop_table("events")
    op.drop_table("start_tasks")
    op.drop_table("sandboxes")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("execution_status_at")
