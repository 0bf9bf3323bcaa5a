"""HTTP routes of /api/v1/conversation/{conversation_id}/events. Thin: parse, check ownership, call the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.auth.dependencies import current_user, direct_user
from threadline.auth.service import User
from threadline.conversations.routes import conversation_id_path
from threadline.conversations.service import require_owned
from threadline.core.context import AppContext, Context, get_context
from threadline.core.direct import direct, path_id, plain_query, small_int
from threadline.core.wire import PAGE_ID_SCHEMA, PAGE_ID_TITLE, OptionalIsoDateTime
from threadline.events import service
from threadline.events import stream as event_stream
from threadline.events.models import (
    MAX_BATCH_IDS,
    MAX_EVENT_ID_LENGTH,
    MAX_KIND_LENGTH,
    EventPage,
    EventPayload,
    EventSortOrder,
)
from threadline.streams import sse
from threadline.streams.dependencies import Hub, last_event_id, open_stream

# Events search is marked @direct: its plain requests are answered by its direct handler (core.direct).
router = APIRouter(prefix="/api/v1/conversation/{conversation_id}/events", tags=["Events"])

_KIND_DESCRIPTION = (
    "Optional filter by event kind, e.g. MessageEvent, ActionEvent, ObservationEvent. Any kind name is "
    f"accepted (1-{MAX_KIND_LENGTH} characters), not only the kinds the reference enumerates: agent servers "
    "add new event kinds, and a kind no stored event has simply matches nothing."
)


async def owned_conversation_id(
    ctx: Context,
    user: User = Depends(current_user),
    conversation_id: str = Depends(conversation_id_path),
) -> str:
    """The normalised conversation id, once it is known to be the caller's (404 otherwise, never 403)."""
    await ctx.db.run_read(require_owned, user_id=user.id, conversation_id=conversation_id)
    return conversation_id


@dataclass(frozen=True)
class EventQuery:
    kind: str | None
    timestamp_gte: datetime | None
    timestamp_lt: datetime | None


async def event_filters(
    kind__eq: Annotated[
        str | None,
        Query(
            title="Optional filter by event kind",
            description=_KIND_DESCRIPTION,
            min_length=1,
            max_length=MAX_KIND_LENGTH,
        ),
    ] = None,
    timestamp__gte: Annotated[
        OptionalIsoDateTime,
        Query(
            title="Optional filter by timestamp greater than or equal to",
            description="ISO-8601; without a UTC offset it means UTC.",
        ),
    ] = None,
    timestamp__lt: Annotated[
        OptionalIsoDateTime,
        Query(
            title="Optional filter by timestamp less than", description="ISO-8601; without a UTC offset it means UTC."
        ),
    ] = None,
) -> EventQuery:
    return EventQuery(kind__eq, timestamp__gte, timestamp__lt)


async def _search(
    ctx: AppContext,
    user: User,
    conversation_id: str,
    filters: EventQuery,
    sort_order: EventSortOrder,
    page_id: str | None,
    limit: int,
) -> Response:
    page = await service.search_events(
        ctx.db,
        ctx.settings.resolved_secret_key,
        conversation_id,
        owner_id=user.id,
        kind=filters.kind,
        timestamp_gte=filters.timestamp_gte,
        timestamp_lt=filters.timestamp_lt,
        sort=sort_order,
        limit=limit,
        page_id=page_id,
    )
    # The stored events are JSON already: sent as they are (the EventPage shape), not decoded and re-encoded.
    return Response(page.render(), media_type="application/json")


_PLAIN_SEARCH = frozenset({"kind__eq", "limit", "page_id", "sort_order"})
_SORT_ORDERS = {order.value: order for order in EventSortOrder}


async def _search_direct(request: Request) -> Response | None:
    """A page of one conversation's events, by kind or not (what clients following an agent ask for)."""
    conversation_id = path_id(request, "conversation_id")
    query = plain_query(request, _PLAIN_SEARCH)
    if conversation_id is None or query is None:
        return None
    kind = query.get("kind__eq")
    limit = small_int(query.get("limit"), default=100, maximum=service.MAX_LIMIT)
    sort_order = _SORT_ORDERS.get(query.get("sort_order", EventSortOrder.TIMESTAMP.value))
    if (kind is not None and not 0 < len(kind) <= MAX_KIND_LENGTH) or limit is None or sort_order is None:
        return None
    user = await direct_user(request)
    if user is None:
        return None
    filters = EventQuery(kind, None, None)
    ctx = await get_context(request)
    return await _search(ctx, user, conversation_id, filters, sort_order, query.get("page_id"), limit)


@router.get("/search", response_model=EventPage, summary="Search Events")
@direct(_search_direct)
async def search_events(
    ctx: Context,
    user: User = Depends(current_user),
    conversation_id: str = Depends(conversation_id_path),
    filters: EventQuery = Depends(event_filters),
    sort_order: Annotated[EventSortOrder, Query(title="Sort order for results")] = EventSortOrder.TIMESTAMP,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[int, Query(title="The max number of results in the page", gt=0, le=service.MAX_LIMIT)] = 100,
) -> Response:
    """Search / List events, ordered by timestamp then event id; `next_page_id` is a keyset token."""
    return await _search(ctx, user, conversation_id, filters, sort_order, page_id, limit)


@router.get("/count", response_model=int, summary="Count Events")
async def count_events(
    ctx: Context,
    conversation_id: str = Depends(owned_conversation_id),
    filters: EventQuery = Depends(event_filters),
) -> int:
    """Count events matching the given filters (the same filters as search, always in agreement)."""
    return await service.count_events(
        ctx.db,
        conversation_id,
        kind=filters.kind,
        timestamp_gte=filters.timestamp_gte,
        timestamp_lt=filters.timestamp_lt,
    )


@router.get("", response_model=list[EventPayload | None], summary="Batch Get Events")
async def batch_get_events(
    ctx: Context,
    ids: Annotated[
        list[str],
        Query(
            alias="id",
            title="Id",
            description=f"Event ids, 1-{MAX_BATCH_IDS} of them",
            # No NUL: what _check_ids refuses (an event id the server could never have stored).
            json_schema_extra={
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID_LENGTH, "pattern": "^[^\\x00]*$"},
                "minItems": 1,
                "maxItems": MAX_BATCH_IDS,
            },
        ),
    ],
    conversation_id: str = Depends(owned_conversation_id),
) -> list[EventPayload | None]:
    """Get a batch of events given their ids, returning null for any missing event."""
    return await service.batch_get_events(ctx.db, conversation_id=conversation_id, ids=ids)


STREAM_EXAMPLE = (
    "retry: 1000\n\n"
    'id: 5f0c...\ndata: {"id": "5f0c...", "kind": "MessageEvent", "timestamp": "...", ...}\n\n'
    ": keep-alive\n\n"
)


@router.get(
    "/stream",
    summary="Stream Events",
    response_class=sse.EventStreamResponse,
    responses=sse.openapi_response(
        "Server-Sent Events: every stored event (as events search lists them, default order), then each new "
        "one as it is stored; `id` is the event's id; a comment line is a heartbeat",
        STREAM_EXAMPLE,
    ),
)
async def stream_events(
    ctx: Context,
    hub: Hub,
    user: User = Depends(current_user),
    conversation_id: str = Depends(conversation_id_path),
    after: str | None = Depends(last_event_id),
) -> Response:
    """A Threadline extension: the conversation's events as Server-Sent Events, resumable with `Last-Event-ID`
    (or `last_event_id`): a reconnect gets exactly the events it has not had, including those stored while it
    was away. Ends when the conversation is deleted or the server shuts down."""
    async with ctx.db.read() as conn:
        await conn.run_sync(require_owned, user_id=user.id, conversation_id=conversation_id)
        position = await event_stream.find_position(conn, conversation_id, last_event_id=after)

    async def still_owned(conn: AsyncConnection) -> None:
        await conn.run_sync(require_owned, user_id=user.id, conversation_id=conversation_id)

    body = event_stream.stream(
        ctx.db, hub, conversation_id, position=position, may_read=still_owned, render=lambda text: text
    )
    return open_stream(hub, f"user:{user.id}", body)
