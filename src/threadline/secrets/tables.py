"""A user's secrets for their agents: the value is a Fernet token, never returned by the API."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, String, Table, Text

from threadline.db.metadata import metadata
from threadline.db.types import UTCDateTime

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
