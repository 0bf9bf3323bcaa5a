"""Sandboxes (one agent server each) and the Threadline processes (instances) that run them."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, Text

from threadline.db.metadata import metadata
from threadline.db.types import UTCDateTime

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
    # The process that runs (launched or adopted) the sandbox; only it stops the sandbox on shutdown.
    Column("owner_instance", String(32), nullable=True),
    Index("ix_sandboxes_user_created", "user_id", "created_at", "id"),
    Index("ix_sandboxes_status", "status"),
    Index("ix_sandboxes_owner_instance", "owner_instance"),
)

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
