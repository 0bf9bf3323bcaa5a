"""The events agent servers report, one row each, kept with the conversation they belong to."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table, UniqueConstraint

from threadline.db.metadata import metadata
from threadline.db.types import JSONType, UTCDateTime

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    # Deleting a conversation deletes its events (the database does it, so no other domain writes here).
    Column(
        "conversation_id",
        String(32),
        ForeignKey("conversations.id", ondelete="CASCADE", name="fk_events_conversation"),
        nullable=False,
    ),
    Column("event_id", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("payload", JSONType, nullable=False),
    UniqueConstraint("conversation_id", "event_id", name="uq_events_conversation_event"),
    Index("ix_events_conversation_time", "conversation_id", "timestamp", "event_id"),
    Index("ix_events_conversation_kind_time", "conversation_id", "kind", "timestamp", "event_id"),
    # Event streams read a conversation's events stored after the last one they sent.
    Index("ix_events_conversation_seq", "conversation_id", "seq"),
)
