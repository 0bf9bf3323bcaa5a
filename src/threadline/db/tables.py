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
    UniqueConstraint,
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

# One row (id 1): a counter database triggers raise with every change to `users` or `api_keys`, in the
# changing transaction (migration 0011). Processes that keep keys in memory poll it (auth/cache.py).
auth_epoch = Table(
    "auth_epoch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
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
    Index("ix_conversations_parent", "parent_conversation_id"),
    Index("ix_conversations_sandbox", "sandbox_id"),
)

# When the stored execution_status was reported: a late, older delivery must not overwrite a newer one.
conversations.append_column(Column("execution_status_at", UTCDateTime, nullable=True))

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", String(32), primary_key=True),
    # NULL while the sandbox waits in the warm pool; set when a start claims it.
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
    Column("spec_id", String(64), nullable=False),
    Column("backend", String(32), nullable=False),
    # The agent-server version the sandbox runs (its spec's); NULL: the runtime in THREADLINE_RUNTIME_DIR.
    Column("runtime_version", String(32), nullable=True),
    # Desired/last known state: STARTING, RUNNING, PAUSED, ERROR, MISSING.
    Column("status", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Column("pid", Integer, nullable=True),
    Column("port", Integer, nullable=True),
    Column("url", String(512), nullable=True),
    Column("work_dir", String(1024), nullable=True),
    # The session key authenticates agent callbacks (looked up by hash) and is shown to the owner
    # (kept encrypted with the server secret).
    Column("session_key_hash", String(64), nullable=False, unique=True),
    Column("session_key_enc", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_sandboxes_user_created", "user_id", "created_at", "id"),
    Index("ix_sandboxes_status", "status"),
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

# A user's secrets for their agents (issue 15 B3): the value is a Fernet token, never returned by the API.
user_secrets = Table(
    "user_secrets",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("description", String(1000), nullable=True),
    Column("value_enc", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(32), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("payload", JSONType, nullable=False),
    UniqueConstraint("conversation_id", "event_id", name="uq_events_conversation_event"),
    Index("ix_events_conversation_time", "conversation_id", "timestamp", "event_id"),
    Index("ix_events_conversation_kind_time", "conversation_id", "kind", "timestamp", "event_id"),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("llm_model", String(256), nullable=True),
    Column("llm_base_url", String(1024), nullable=True),
    # Fernet token made with a key derived from the server secret; never returned by the API.
    Column("llm_api_key_enc", Text, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

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

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", String(32), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    # METHOD and route the key was used for, and a hash of the body: a different body is a 422.
    Column("operation", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    # "in_flight" until the first request finishes (a retry meanwhile is a 409), then "done".
    Column("state", String(16), nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_body", JSONType, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_idempotency_keys_expires", "expires_at"),
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

# A row per running Threadline process, kept fresh by a heartbeat: the lease behind sandbox ownership.
instances = Table(
    "instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)
# The process that runs (launched or adopted) the sandbox; only it stops the sandbox on shutdown.
sandboxes.append_column(Column("owner_instance", String(32), nullable=True))
Index("ix_sandboxes_owner_instance", sandboxes.c.owner_instance)
# The process running the start task: only a task whose process is gone may be closed as interrupted.
start_tasks.append_column(Column("owner_instance", String(32), nullable=True))
