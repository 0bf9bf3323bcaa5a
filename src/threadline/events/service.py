"""Conversation events: stored from agent-server webhooks, read back with filters and keyset paging.

Services take a conversation id that the caller has already checked belongs to the requesting user
(`threadline.conversations.service.require_owned`), except `search_events`, which checks it itself (with
`owner_id`) in the transaction of its read: the hottest read makes one round of the database, not two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import NullType

from threadline.conversations import service as conversations_service
from threadline.conversations.tables import conversations
from threadline.core.errors import Invalid
from threadline.core.ids import parse_id
from threadline.core.pagination import Pager, filters_fingerprint
from threadline.core.time import as_utc
from threadline.db.engine import Database
from threadline.db.rows import utc_time
from threadline.events.models import (
    MAX_BATCH_IDS,
    MAX_EVENT_ID_LENGTH,
    MAX_KIND_LENGTH,
    EventPage,
    EventPayload,
    EventSortOrder,
)
from threadline.events.tables import events

PAGE_KIND = "events"
MAX_LIMIT = 100
# Rows per INSERT statement: 5 bound values each stays far below SQLite's oldest variable limit (999).
_INSERT_CHUNK = 150


# -- storing ------------------------------------------------------------------------------------


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None


def _valid_key(value: Any, max_length: int) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_length and "\x00" not in value


def clean_text(value: str) -> str:
    """Replace what PostgreSQL cannot store in text/jsonb (NUL, lone surrogates) with U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _clean(value: Any) -> Any:
    # Tool output can hold NUL bytes; stored as given they would abort the whole webhook
    # transaction on PostgreSQL, so both backends store the same, replaced, text.
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _row(conversation_id: str, item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    event_id, kind = item.get("id"), item.get("kind")
    timestamp = _parse_timestamp(item.get("timestamp"))
    if not _valid_key(event_id, MAX_EVENT_ID_LENGTH) or not _valid_key(kind, MAX_KIND_LENGTH) or timestamp is None:
        return None
    return {
        "conversation_id": conversation_id,
        "event_id": event_id,
        "kind": kind,
        "timestamp": timestamp,
        "payload": _clean(item),
    }


async def _insert_new(conn: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping any (conversation_id, event_id) already stored, even by a concurrent writer."""
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise RuntimeError(f"storing events is not supported on {dialect}")
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stored = 0
    for start in range(0, len(rows), _INSERT_CHUNK):
        statement = (
            insert(events)
            .values(rows[start : start + _INSERT_CHUNK])
            .on_conflict_do_nothing(index_elements=["conversation_id", "event_id"])
            .returning(events.c.event_id)
        )
        stored += len((await conn.execute(statement)).all())
    return stored


async def store_events(conn: AsyncConnection, *, conversation_id: str, items: list[dict[str, Any]]) -> int:
    """Store agent-server events inside the caller's write transaction; returns how many were new.

    Items without a string `id` (<= 64 chars), a string `kind` (<= 64 chars) or an ISO-8601
    `timestamp` (naive means UTC) are skipped, as are events already stored for the conversation;
    within one call the first of two items with the same id wins.
    """
    conversation_id = parse_id(conversation_id)
    rows: dict[str, dict[str, Any]] = {}
    for item in items:
        row = _row(conversation_id, item)
        if row is not None:
            rows.setdefault(row["event_id"], row)
    if not rows:
        return 0
    return await _insert_new(conn, list(rows.values()))


# -- reading ------------------------------------------------------------------------------------


async def latest_event_times(conn: AsyncConnection, conversation_ids: Sequence[str]) -> dict[str, datetime]:
    """The time of the newest stored event of each conversation that has one."""
    if not conversation_ids:
        return {}
    c = events.c
    query = (
        select(c.conversation_id, func.max(c.timestamp))
        .where(c.conversation_id.in_(list(conversation_ids)))
        .group_by(c.conversation_id)
    )
    return {conversation_id: latest for conversation_id, latest in (await conn.execute(query)).all()}


@dataclass(frozen=True)
class EventFilters:
    kind: str | None = None
    timestamp_gte: datetime | None = None
    timestamp_lt: datetime | None = None

    def normalised(self) -> EventFilters:
        return EventFilters(
            kind=self.kind,
            timestamp_gte=as_utc(self.timestamp_gte) if self.timestamp_gte is not None else None,
            timestamp_lt=as_utc(self.timestamp_lt) if self.timestamp_lt is not None else None,
        )

    def fingerprint(self, conversation_id: str) -> str:
        # The conversation is part of it: a token from one conversation's listing is no good for another.
        return filters_fingerprint(
            {
                "conversation_id": conversation_id,
                "kind": self.kind,
                "timestamp_gte": self.timestamp_gte.isoformat() if self.timestamp_gte else None,
                "timestamp_lt": self.timestamp_lt.isoformat() if self.timestamp_lt else None,
            }
        )

    def shape(self) -> tuple[bool, bool, bool]:
        return (self.kind is not None, self.timestamp_gte is not None, self.timestamp_lt is not None)

    def parameters(self, conversation_id: str) -> dict[str, Any]:
        """The values of the statement `bound_where()` writes (only those of the filters given)."""
        values: dict[str, Any] = {"conversation_id": conversation_id}
        if self.kind is not None:
            values["kind"] = self.kind
        if self.timestamp_gte is not None:
            values["timestamp_gte"] = self.timestamp_gte
        if self.timestamp_lt is not None:
            values["timestamp_lt"] = self.timestamp_lt
        return values

    def bound_where(self) -> list[ColumnElement[bool]]:
        """`where()` with bound parameters in place of values: the same for every request of this shape."""
        c = events.c
        clauses: list[ColumnElement[bool]] = [c.conversation_id == bindparam("conversation_id")]
        if self.kind is not None:
            clauses.append(c.kind == bindparam("kind"))
        if self.timestamp_gte is not None:
            clauses.append(c.timestamp >= bindparam("timestamp_gte"))
        if self.timestamp_lt is not None:
            clauses.append(c.timestamp < bindparam("timestamp_lt"))
        return clauses


@dataclass(frozen=True)
class RawEventPage:
    """A page of events as stored JSON texts: served without decoding and re-encoding every event."""

    items: list[str]
    next_page_id: str | None

    def render(self) -> bytes:
        token = json.dumps(self.next_page_id)
        return f'{{"items":[{",".join(self.items)}],"next_page_id":{token}}}'.encode()

    def decoded(self) -> EventPage:
        return EventPage(items=[json.loads(item) for item in self.items], next_page_id=self.next_page_id)


async def search_events(
    db: Database,
    secret: str,
    conversation_id: str,
    *,
    owner_id: str | None = None,
    kind: str | None = None,
    timestamp_gte: datetime | None = None,
    timestamp_lt: datetime | None = None,
    sort: EventSortOrder | str = EventSortOrder.TIMESTAMP,
    limit: int = MAX_LIMIT,
    page_id: str | None = None,
) -> RawEventPage:
    """One page of a conversation's events, ordered by (timestamp, event id); ties never split badly.

    With `owner_id`, the conversation must be that user's (404 otherwise): the page statement itself
    returns no row of another user's conversation, and an empty page is checked before it is answered."""
    order = EventSortOrder(sort)
    if not 0 < limit <= MAX_LIMIT:
        raise Invalid("limit", f"must be between 1 and {MAX_LIMIT}", location="query", input=limit)
    filters = EventFilters(kind, timestamp_gte, timestamp_lt).normalised()
    fingerprint = filters.fingerprint(conversation_id)
    descending = order is EventSortOrder.TIMESTAMP_DESC
    pager = Pager(secret, PAGE_KIND, order.value, fingerprint, events.c.timestamp, events.c.event_id, descending)
    parameters = {**filters.parameters(conversation_id), **pager.after(page_id), "rows": limit + 1}
    if owner_id is not None:
        parameters["owner_id"] = owner_id
    shape = (filters.shape(), order, "after_id" in parameters, owner_id is not None)
    query = _PAGE_STATEMENTS.get(shape)
    if query is None:
        base = select(_RAW_TIMESTAMP, events.c.event_id, _PAYLOAD_TEXT).where(*filters.bound_where())
        if owner_id is not None:
            base = base.where(_OWNED)
        query = _PAGE_STATEMENTS[shape] = pager.statement(base, after="after_id" in parameters)
    rows = await db.run_read(
        _page_rows, conversation_id=conversation_id, owner_id=owner_id, query=query, parameters=parameters
    )
    page = rows[:limit]
    next_page_id = None
    if len(rows) > limit and page:
        last = page[-1]
        next_page_id = pager.token(utc_time(last[0]), last[1])
    return RawEventPage(items=[row[2] for row in page], next_page_id=next_page_id)


def _page_rows(
    conn: Connection, *, conversation_id: str, owner_id: str | None, query: Select[Any], parameters: dict[str, Any]
) -> Sequence[Any]:
    # Rows of (time as the driver gives it, event id, payload text).
    rows = conn.execute(query, parameters).all()
    if owner_id is not None and not rows:
        # The page statement returns rows only when the conversation is the owner's (`_OWNED`); an empty page
        # is either an empty conversation or not theirs (404), which this tells apart.
        conversations_service.require_owned(conn, user_id=owner_id, conversation_id=conversation_id)
    return rows


_PAYLOAD_TEXT = cast(events.c.payload, Text).label("payload_text")
# As the driver gives it, without a conversion per row: only the last row's time is used (the next page's token).
_RAW_TIMESTAMP = type_coerce(events.c.timestamp, NullType()).label("timestamp")
# The ownership check inside the page statement: one statement (one round trip) for a page that has events.
_OWNED = (
    select(conversations.c.id)
    .where(conversations.c.id == bindparam("conversation_id"), conversations.c.user_id == bindparam("owner_id"))
    .exists()
)
# One page statement per shape (which filters, order, first page or not, owner checked): at most 2^3 * 2 * 2 * 2.
_PAGE_STATEMENTS: dict[tuple[Any, ...], Any] = {}


async def count_events(
    db: Database,
    conversation_id: str,
    *,
    kind: str | None = None,
    timestamp_gte: datetime | None = None,
    timestamp_lt: datetime | None = None,
) -> int:
    filters = EventFilters(kind, timestamp_gte, timestamp_lt).normalised()
    query = select(func.count()).select_from(events).where(*filters.bound_where())
    async with db.read() as conn:
        return int((await conn.execute(query, filters.parameters(conversation_id))).scalar_one())


def _check_ids(ids: Sequence[str]) -> None:
    if not ids:
        raise Invalid("id", "at least one event id is required", location="query")
    if len(ids) > MAX_BATCH_IDS:
        raise Invalid("id", f"at most {MAX_BATCH_IDS} ids per request (got {len(ids)})", location="query")
    for value in ids:
        if not _valid_key(value, MAX_EVENT_ID_LENGTH):
            raise Invalid(
                "id",
                f"{value!r} is not a valid event id (1-{MAX_EVENT_ID_LENGTH} characters)",
                location="query",
                input=value,
            )


async def batch_get_events(db: Database, *, conversation_id: str, ids: Sequence[str]) -> list[EventPayload | None]:
    """The events with these ids, in the order asked (repeats allowed), None where there is none."""
    _check_ids(ids)
    c = events.c
    query = select(c.event_id, c.payload).where(c.conversation_id == conversation_id, c.event_id.in_(set(ids)))
    async with db.read() as conn:
        found = {r.event_id: r.payload for r in (await conn.execute(query)).all()}
    return [found.get(i) for i in ids]
