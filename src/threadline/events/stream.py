"""The event stream of one conversation: its stored events in the order of the events search (timestamp, then
event id), then the ones stored after, each as an SSE message whose `id` is the event's id.

Where the stream is: `seq`, the events table's autoincrement, the order events were stored in. Per
conversation that is also the order they were committed in (every store holds the conversation's row lock:
`webhooks.service`), so "everything after seq N" never skips an event a slower transaction commits later.

A stream starts by noting S, the conversation's highest seq, and sends every event up to S in search
order; then, following seq, every event stored after S. Resuming after event X (`Last-Event-ID`) sends the
events up to S not yet sent, those stored after X or ordered after X, then goes on as above. Events stored
in timestamp order (what agent servers deliver) therefore arrive exactly once across any number of
reconnects; an event stored late with an older timestamp (a backfill of missed callbacks) is never lost, and
may come twice if a reconnect falls between it and its neighbours (it has the same id: dedupe by id).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, and_, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.core.errors import Invalid, NotFound
from threadline.db.engine import Database
from threadline.events.models import MAX_EVENT_ID_LENGTH
from threadline.events.tables import events
from threadline.streams import sse
from threadline.streams.hub import StreamHub, events_topic

PAGE = 200
# A Last-Event-ID longer than any stored event id names no event.
MAX_LAST_EVENT_ID = MAX_EVENT_ID_LENGTH

# Raises NotFound once the stream's reader may no longer see the conversation (deleted, no longer public).
AccessCheck = Callable[[AsyncConnection], Awaitable[None]]
# The JSON text of an event as this reader is to see it.
Render = Callable[[str], str]


@dataclass(frozen=True)
class Position:
    """The event a client last received (from `Last-Event-ID`)."""

    seq: int
    timestamp: datetime
    event_id: str


def _payload_text() -> Any:
    return cast(events.c.payload, Text).label("payload_text")


async def find_position(conn: AsyncConnection, conversation_id: str, *, last_event_id: str | None) -> Position | None:
    """The stored event `last_event_id` names; a 422 if the conversation has none by that id."""
    if last_event_id is None or last_event_id == "":
        return None
    c = events.c
    row = None
    if len(last_event_id) <= MAX_LAST_EVENT_ID and "\x00" not in last_event_id:
        query = select(c.seq, c.timestamp, c.event_id).where(
            c.conversation_id == conversation_id, c.event_id == last_event_id
        )
        row = (await conn.execute(query)).first()
    if row is None:
        raise Invalid(
            "Last-Event-ID",
            "names no event of this conversation: reconnect without it to receive every event",
            location="header",
            input=last_event_id,
        )
    return Position(row.seq, row.timestamp, row.event_id)


def _after_key(timestamp: datetime, event_id: str) -> Any:
    c = events.c
    return or_(c.timestamp > timestamp, and_(c.timestamp == timestamp, c.event_id > event_id))


async def _backlog(
    db: Database, conversation_id: str, upto: int, position: Position | None, render: Render
) -> AsyncIterator[bytes]:
    """Every event with seq <= `upto` the client has not had, in search order, a page per transaction."""
    c = events.c
    key: tuple[datetime, str] | None = None
    while True:
        query = select(c.timestamp, c.event_id, _payload_text()).where(c.conversation_id == conversation_id)
        query = query.where(c.seq <= upto)
        if position is not None:
            query = query.where(or_(c.seq > position.seq, _after_key(position.timestamp, position.event_id)))
        if key is not None:
            query = query.where(_after_key(*key))
        query = query.order_by(c.timestamp, c.event_id).limit(PAGE)
        async with db.read() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            yield sse.frame(render(row.payload_text), event_id=row.event_id)
        if len(rows) < PAGE:
            return
        key = (rows[-1].timestamp, rows[-1].event_id)


async def _highest_seq(db: Database, conversation_id: str) -> int:
    async with db.read() as conn:
        query = select(func.max(events.c.seq)).where(events.c.conversation_id == conversation_id)
        return int((await conn.execute(query)).scalar_one() or 0)


async def stream(
    db: Database,
    hub: StreamHub,
    conversation_id: str,
    *,
    position: Position | None,
    may_read: AccessCheck,
    render: Render,
) -> AsyncIterator[bytes]:
    """The SSE body; ends when the hub closes or the reader may no longer see the conversation."""
    c = events.c
    yield sse.retry()
    with hub.watch(events_topic(conversation_id)) as woken:
        # Watching before S is read: an event stored after that read wakes the live part below.
        last = await _highest_seq(db, conversation_id)
        async for chunk in _backlog(db, conversation_id, last, position, render):
            yield chunk
            if hub.closing:
                return
        beat = time.monotonic() + hub.heartbeat_seconds
        while not hub.closing:
            woken.clear()
            query = (
                select(c.seq, c.event_id, _payload_text())
                .where(c.conversation_id == conversation_id, c.seq > last)
                .order_by(c.seq)
                .limit(PAGE)
            )
            async with db.read() as conn:
                try:
                    await may_read(conn)
                except NotFound:
                    return
                rows = (await conn.execute(query)).all()
            for row in rows:
                yield sse.frame(render(row.payload_text), event_id=row.event_id)
                last = row.seq
            if len(rows) == PAGE:
                continue
            now = time.monotonic()
            if now >= beat:
                yield sse.comment("keep-alive")
                beat = now + hub.heartbeat_seconds
            await hub.wait(woken, max(0.0, min(hub.poll_seconds, beat - time.monotonic())))
