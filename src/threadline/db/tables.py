"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; keep both in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from threadline.db.types import JSONType, UTCDateTime

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Index("ix_api_keys_user_id", "user_id"),
    Column("label", String(200), nullable=True),
    # First characters of the key, so people can tell keys apart in listings.
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
)

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
    Index("ix_conversations_user_created", "user_id", "created_at", "id"),
    Index("ix_conversations_user_updated", "user_id", "updated_at", "id"),
    Index("ix_conversations_parent", "parent_conversation_id"),
    Index("ix_conversations_sandbox", "sandbox_id"),
)
