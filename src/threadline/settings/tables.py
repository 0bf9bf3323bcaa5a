"""A user's own settings (the LLM their agents use)."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, String, Table, Text

from threadline.db.metadata import metadata
from threadline.db.types import UTCDateTime

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
