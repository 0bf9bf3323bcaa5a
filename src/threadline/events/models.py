"""Wire models of the conversation events API (`EventPage`, `EventSortOrder` follow the reference).

Events are stored and served as the JSON objects the agent server reported; Threadline does not
re-model them, so a newer agent server's event kinds and fields pass through unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

# The `events.event_id` and `events.kind` columns are String(64).
MAX_EVENT_ID_LENGTH = 64
MAX_KIND_LENGTH = 64
MAX_BATCH_IDS = 100

# One event as the agent server reported it (at least `id`, `kind`, `timestamp`).
EventPayload = dict[str, Any]


class EventSortOrder(StrEnum):
    """Enum for event sorting options."""

    TIMESTAMP = "TIMESTAMP"
    TIMESTAMP_DESC = "TIMESTAMP_DESC"


class EventPage(BaseModel):
    items: list[EventPayload]
    next_page_id: str | None = None
