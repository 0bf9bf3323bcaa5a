"""HTTP routes of /api/v1/shared-conversations: no credentials, read-only, by id only. Thin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from threadline.auth.dependencies import anonymous_client
from threadline.conversations.routes import conversation_id_path, parse_id_list
from threadline.core.context import Context
from threadline.core.ids import id_list_schema
from threadline.core.wire import PAGE_ID_SCHEMA, PAGE_ID_TITLE
from threadline.events import service as events_service
from threadline.events.models import EventPage, EventSortOrder
from threadline.events.routes import EventQuery, event_filters
from threadline.sharing import service
from threadline.sharing.models import SharedConversation

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
