"""Pending messages: what a user sends before the conversation is READY (to the start task's id, or to a
conversation whose sandbox is not RUNNING yet), stored, then delivered to the agent in order once it can
take them. Nothing is lost across a restart: undelivered messages stay in the database until sent.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, update

from threadline.conversations.tables import conversations, pending_messages, start_tasks
from threadline.core.errors import Conflict, NotFound, Problem
from threadline.core.ids import new_id
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.sandboxes.agent_client import AgentServerError
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus

log = logging.getLogger("threadline.pending")
MAX_QUEUED = 10


class PendingMessageResponse(BaseModel):
    id: str
    # False when the conversation could take it at once and it was delivered already.
    queued: bool
    # 1 for the next message to be delivered; 0 once delivered.
    position: int


class TooManyQueued(Problem):
    status = 429
    type_slug = "too-many-pending-messages"


class PendingMessages:
    def __init__(self, db: Database, sandboxes: SandboxService) -> None:
        self.db = db
        self.sandboxes = sandboxes
        # One delivery at a time per target in this process (a lock lives while someone holds it).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def add(self, *, user_id: str, target_id: str, text: str, run: bool) -> PendingMessageResponse:
        message_id = new_id()
        async with self.db.write() as conn:
            # The target's row is locked while the message is numbered: concurrent sends to one conversation
            # get consecutive positions and the limit holds (SQLite serialises writes anyway).
            task = (
                await conn.execute(
                    select(start_tasks.c.status)
                    .where(start_tasks.c.id == target_id, start_tasks.c.user_id == user_id)
                    .with_for_update()
                )
            ).first()
            if task is not None and task.status == "ERROR":
                raise Conflict("this start failed, so its conversation will never take messages; start again")
            conversation = None
            if task is None:
                conversation = (
                    await conn.execute(
                        select(conversations.c.id)
                        .where(conversations.c.id == target_id, conversations.c.user_id == user_id)
                        .with_for_update()
                    )
                ).first()
            if task is None and conversation is None:
                raise NotFound(f"no conversation or start task {target_id}")
            waiting = (
                await conn.execute(
                    select(func.count())
                    .select_from(pending_messages)
                    .where(pending_messages.c.target_id == target_id, pending_messages.c.delivered_at.is_(None))
                )
            ).scalar_one()
            if waiting >= MAX_QUEUED:
                raise TooManyQueued(
                    f"{waiting} messages already wait for this conversation (at most {MAX_QUEUED}); "
                    "send more once it is READY",
                    limit=MAX_QUEUED,
                )
            last = (
                await conn.execute(
                    select(func.max(pending_messages.c.position)).where(pending_messages.c.target_id == target_id)
                )
            ).scalar_one()
            await conn.execute(
                pending_messages.insert().values(
                    id=message_id,
                    user_id=user_id,
                    target_id=target_id,
                    position=(last or 0) + 1,
                    text=text,
                    run=run,
                    created_at=utcnow(),
                )
            )
        await self.deliver(target_id)
        async with self.db.read() as conn:
            mine = (await conn.execute(select(pending_messages).where(pending_messages.c.id == message_id))).one()
            ahead = (
                await conn.execute(
                    select(func.count())
                    .select_from(pending_messages)
                    .where(
                        pending_messages.c.target_id == target_id,
                        pending_messages.c.delivered_at.is_(None),
                        pending_messages.c.position <= mine.position,
                    )
                )
            ).scalar_one()
        queued = mine.delivered_at is None
        return PendingMessageResponse(id=message_id, queued=queued, position=int(ahead) if queued else 0)

    async def _destination(self, target_id: str) -> tuple[str, Any] | None:
        """(conversation id, RUNNING sandbox record) when the target can take messages now, else None."""
        async with self.db.read() as conn:
            task = (
                await conn.execute(
                    select(start_tasks.c.status, start_tasks.c.app_conversation_id).where(start_tasks.c.id == target_id)
                )
            ).first()
            if task is not None:
                if task.status != "READY" or not task.app_conversation_id:
                    return None
                conversation_id = task.app_conversation_id
            else:
                conversation_id = target_id
            conversation = (
                await conn.execute(select(conversations.c.sandbox_id).where(conversations.c.id == conversation_id))
            ).first()
        if conversation is None:
            return None
        row = (await self.sandboxes.records_by_id([conversation.sandbox_id])).get(conversation.sandbox_id)
        if row is None or self.sandboxes.effective_status(row) is not SandboxStatus.RUNNING:
            return None
        return conversation_id, row

    async def deliver(self, target_id: str) -> int:
        """Send the target's undelivered messages in order, if it can take them now; returns how many.

        The batch is claimed in one transaction (so two processes never both send it) and released again
        from the first message the agent server did not take, to be retried."""
        lock = self._locks.get(target_id)
        if lock is None:
            lock = self._locks[target_id] = asyncio.Lock()
        async with lock:
            destination = await self._destination(target_id)
            if destination is None:
                return 0
            conversation_id, row = destination
            now = utcnow()
            async with self.db.write() as conn:
                batch = (
                    await conn.execute(
                        select(pending_messages)
                        .where(pending_messages.c.target_id == target_id, pending_messages.c.delivered_at.is_(None))
                        .order_by(pending_messages.c.position)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if batch:
                    await conn.execute(
                        update(pending_messages)
                        .where(pending_messages.c.id.in_([m.id for m in batch]))
                        .values(delivered_at=now, conversation_id=conversation_id)
                    )
            agent = self.sandboxes.client(row)
            for index, message in enumerate(batch):
                try:
                    await agent.send_message(conversation_id, message.text, run=message.run)
                except AgentServerError as exc:
                    log.info("pending message %s not delivered yet: %s", message.id, exc)
                    rest = [m.id for m in batch[index:]]
                    async with self.db.write() as conn:
                        await conn.execute(
                            update(pending_messages).where(pending_messages.c.id.in_(rest)).values(delivered_at=None)
                        )
                    return index
            return len(batch)

    async def deliver_due(self) -> int:
        """Deliver every target's waiting messages that can be delivered now (after a restart, a resume)."""
        async with self.db.read() as conn:
            targets = [
                r.target_id
                for r in await conn.execute(
                    select(pending_messages.c.target_id).where(pending_messages.c.delivered_at.is_(None)).distinct()
                )
            ]
        delivered = 0
        for target_id in targets:
            try:
                delivered += await self.deliver(target_id)
            except Exception:
                log.exception("delivering the pending messages of %s failed; retrying later", target_id)
        return delivered
