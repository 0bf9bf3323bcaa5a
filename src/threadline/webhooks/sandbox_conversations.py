"""The conversations on sandboxes, as the sandboxes domain asks about them (`ConversationsOfSandboxes`):
which conversations a sandbox runs, how far their stored events go, storing what an agent server reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from threadline.conversations import service as conversations_service
from threadline.db.engine import Database
from threadline.events import service as events_service
from threadline.webhooks import service as webhooks_service


class SandboxConversations:
    def __init__(self, db: Database, *, on_events_stored: Callable[[str], None] | None = None) -> None:
        self.db = db
        # Told the conversation's id when new events were stored (wakes this process's event streams).
        self.on_events_stored = on_events_stored

    async def latest_event_times(self, sandbox_id: str) -> dict[str, datetime | None]:
        async with self.db.read() as conn:
            ids = await conversations_service.ids_on_sandbox(conn, sandbox_id)
            latest = await events_service.latest_event_times(conn, ids)
        return {conversation_id: latest.get(conversation_id) for conversation_id in ids}

    async def store_agent_events(self, *, sandbox_id: str, conversation_id: str, items: list[Any]) -> int:
        stored = await webhooks_service.on_events(
            self.db, sandbox_id=sandbox_id, conversation_id=conversation_id, items=items
        )
        if stored and self.on_events_stored is not None:
            self.on_events_stored(conversation_id)
        return stored

    async def in_use(self, sandbox_id: str) -> bool:
        async with self.db.read() as conn:
            return bool(await conversations_service.ids_on_sandbox(conn, sandbox_id, limit=1))
