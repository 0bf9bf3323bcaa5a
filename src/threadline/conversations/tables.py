"""Conversations, their tag index, start tasks and the messages waiting for a conversation to be READY."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from threadline.db.metadata import metadata
from threadline.db.types import JSONType, UTCDateTime

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("sandbox_id", String(64), nullable=False),
    Column("selected_repository", String(512), nullable=True),
    Column("selected_branch", String(256), nullable=True),
    Column("git_provider", String(32), nullable=True),
    Column("title", Text, nullable=True),
    # True once a user set the title: the agent's automatic title must not replace it.
    Column("title_set_by_user", Boolean, nullable=False, default=False),
    Column("trigger", String(32), nullable=True),
    Column("pr_number", JSONType, nullable=False),
    Column("llm_model", String(256), nullable=True),
    Column("agent_kind", String(32), nullable=False, default="openhands"),
    Column("parent_conversation_id", String(32), nullable=True),
    Column("public", Boolean, nullable=True),
    Column("tags", JSONType, nullable=False),
    Column("execution_status", String(32), nullable=True),
    # When the stored execution_status was reported: a late, older delivery must not overwrite a newer one.
    Column("execution_status_at", UTCDateTime, nullable=True),
    # Metrics are columns so callbacks can add to them atomically in SQL.
    Column("metrics_model_name", String(256), nullable=False, default="default"),
    Column("accumulated_cost", Float, nullable=False, default=0.0),
    Column("max_budget_per_task", Float, nullable=True),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("cache_read_tokens", BigInteger, nullable=False, default=0),
    Column("cache_write_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("context_window", BigInteger, nullable=False, default=0),
    Column("per_turn_token", BigInteger, nullable=False, default=0),
    Column("response_id", String(256), nullable=False, default=""),
    Column("has_metrics", Boolean, nullable=False, default=False),
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_conversations_parent", "parent_conversation_id"),
    Index("ix_conversations_sandbox", "sandbox_id"),
)

for _column in ("selected_repository", "git_provider", "trigger", "public", "execution_status", "llm_model"):
    Index(
        f"ix_conversations_user_{_column}",
        conversations.c.user_id,
        conversations.c[_column],
        conversations.c.created_at,
    )
Index("ix_conversations_user_cost", conversations.c.user_id, conversations.c.accumulated_cost)

# The search page's order. Every search has a condition on the parent (a given one, or IS NULL for top-level
# conversations). SQLite needs the parent in the index to keep an ordered plan once ANALYZE has run (it then
# prefers the parent index plus a sort of all the user's conversations); PostgreSQL cannot take an IS NULL
# condition as fixing the column for the ORDER BY, so there the index without the parent gives the order.
for _column in ("created_at", "updated_at"):
    _name = _column.removesuffix("_at")
    Index(
        f"ix_conversations_user_{_name}", conversations.c.user_id, conversations.c[_column], conversations.c.id
    ).ddl_if(dialect="postgresql")
    Index(
        f"ix_conversations_user_parent_{_name}",
        conversations.c.user_id,
        conversations.c.parent_conversation_id,
        conversations.c[_column],
        conversations.c.id,
    ).ddl_if(dialect="sqlite")

# One row per tag, kept in step with conversations.tags, so tag filters are index lookups on both databases.
conversation_tags = Table(
    "conversation_tags",
    metadata,
    Column("conversation_id", String(32), ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
    Column("user_id", String(32), nullable=False),
    Index("ix_conversation_tags_user_key_value", "user_id", "key", "value"),
)

start_tasks = Table(
    "start_tasks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=True),
    Column("app_conversation_id", String(32), nullable=True),
    Column("sandbox_id", String(32), nullable=True),
    Column("agent_server_url", String(512), nullable=True),
    # The start request with secret values redacted.
    Column("request", JSONType, nullable=False),
    # Every status the task passed through, with its time: [{"status": ..., "at": ...}].
    Column("history", JSONType, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The process running the start task: only a task whose process is gone may be closed as interrupted.
    Column("owner_instance", String(32), nullable=True),
    Index("ix_start_tasks_user_created", "user_id", "created_at", "id"),
    Index("ix_start_tasks_conversation", "app_conversation_id"),
)

# Messages sent before a conversation is READY (to its start task's id or its own), delivered in order
# once it is; kept until then, across restarts.
pending_messages = Table(
    "pending_messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The id the message was sent to: a start task's or a conversation's.
    Column("target_id", String(32), nullable=False),
    Column("position", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("run", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("conversation_id", String(32), nullable=True),
    UniqueConstraint("target_id", "position", name="uq_pending_messages_target_position"),
    Index("ix_pending_messages_undelivered", "delivered_at", "target_id"),
)
