"""HTTP routes of /api/v1/shared-conversations: no credentials, read-only, by id only. Thin."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.auth.dependencies import anonymous_client
from threadline.conversations import service as conversations_service
from threadline.conversations.routes import conversation_id_path, parse_id_list
from threadline.core.context import Context
from threadline.core.ids import id_list_schema
from threadline.core.wire import PAGE_ID_SCHEMA, PAGE_ID_TITLE
from threadline.events import service as events_service
from threadline.events import stream as event_stream
from threadline.events.models import EventPage, EventSortOrder
from threadline.events.routes import EventQuery, event_filters
from threadline.sharing import service
from threadline.sharing.models import SharedConversation
from threadline.streams import sse
from threadline.streams.dependencies import Hub, last_event_id, open_stream

# No credentials here, so the rate limit is per client address.
router = APIRouter(prefix="/api/v1/shared-conversations", tags=["Sharing"], dependencies=[Depends(anonymous_client)])

# Access ends the moment the owner turns `public` off: nothing on the way may keep a copy.
_NO_STORE = "no-store"


@router.get("", response_model=list[SharedConversation | None], summary="Batch Get Shared Conversations")
async def batch_get_shared_conversations(
    ctx: Context,
    response: Response,
    ids: Annotated[
        list[str],
        Query(
            description=f"Conversation ids, 1-{service.MAX_BATCH_IDS} of them",
            json_schema_extra=id_list_schema(service.MAX_BATCH_IDS),
        ),
    ],
) -> list[SharedConversation | None]:
    """The shared view of each public conversation; null for one that is missing or not public."""
    parsed = parse_id_list(ids, "ids", service.MAX_BATCH_IDS)
    response.headers["Cache-Control"] = _NO_STORE
    return await service.batch_get(ctx.db, parsed)


@router.get("/{conversation_id}/events/search", response_model=EventPage, summary="Search Shared Events")
async def search_shared_events(
    ctx: Context,
    response: Response,
    conversation_id: str = Depends(conversation_id_path),
    filters: EventQuery = Depends(event_filters),
    sort_order: Annotated[EventSortOrder, Query(title="Sort order for results")] = EventSortOrder.TIMESTAMP,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[
        int, Query(title="The max number of results in the page", gt=0, le=events_service.MAX_LIMIT)
    ] = 100,
) -> EventPage:
    """The events of a public conversation (404 unless it is public), as the owner's events search lists them."""
    page = await service.search_events(
        ctx.db,
        ctx.settings.resolved_secret_key,
        conversation_id,
        kind=filters.kind,
        timestamp_gte=filters.timestamp_gte,
        timestamp_lt=filters.timestamp_lt,
        sort=sort_order,
        limit=limit,
        page_id=page_id,
    )
    response.headers["Cache-Control"] = _NO_STORE
    return page


def _shareable_text(text: str) -> str:
    return json.dumps(service.shareable_event(json.loads(text)), ensure_ascii=False, separators=(",", ":"))


@router.get(
    "/{conversation_id}/events/stream",
    summary="Stream Shared Events",
    response_class=sse.EventStreamResponse,
    responses=sse.openapi_response(
        "Server-Sent Events, as the owner's events stream sends them, with agent state withheld as in the "
        "shared events search",
        "retry: 1000\n\nid: 5f0c...\ndata: {...}\n\n",
    ),
)
async def stream_shared_events(
    ctx: Context,
    hub: Hub,
    request: Request,
    conversation_id: str = Depends(conversation_id_path),
    after: str | None = Depends(last_event_id),
) -> Response:
    """A Threadline extension: the owner's event stream of a public conversation (404 unless it is public),
    events as the shared search shows them. It ends the moment the conversation stops being public."""
    async with ctx.db.read() as conn:
        await conversations_service.require_public(conn, conversation_id)
        position = await event_stream.find_position(conn, conversation_id, last_event_id=after)

    async def still_public(conn: AsyncConnection) -> None:
        await conversations_service.require_public(conn, conversation_id)

    body = event_stream.stream(
        ctx.db, hub, conversation_id, position=position, may_read=still_public, render=_shareable_text
    )
    address = request.client.host if request.client else "unknown"
    return open_stream(hub, f"address:{address}", body)
