"""Idempotency keys and the answers they replay."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table

from threadline.db.metadata import metadata
from threadline.db.types import JSONType, UTCDateTime

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
