"""Users and their API keys."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, String, Table

from threadline.db.metadata import metadata
from threadline.db.types import UTCDateTime

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
