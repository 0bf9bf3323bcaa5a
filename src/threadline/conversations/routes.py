"""HTTP routes of /api/v1/app-conversations. Thin: parse, call the service, shape the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query

from threadline.api.context import AppContext, get_context
from threadline.api.errors import Invalid, NotFound
from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.conversations import service
from threadline.conversations.models import (
    AppConversation,
    AppConversationPage,
    AppConversationUpdateRequest,
    SortOrder,
    Success,
)
from threadline.ids import MalformedId, parse_id

router = APIRouter(prefix="/api/v1/app-conversations", tags=["Conversations"])


def conversation_id_path(
    conversation_id: Annotated[str, Path(description="Conversation id: 32 hex characters or a dashed UUID")],
) -> str:
    try:
        return parse_id(conversation_id)
    except MalformedId as exc:
        # A malformed id names no conversation: same answer as a missing one, never a 500.
        raise NotFound(f"conversation {conversation_id!r} not found: not a valid conversation id") from exc


def parse_id_list(values: list[str], field: str, max_items: int) -> list[str]:
    if len(values) > max_items:
        raise Invalid(field, f"at most {max_items} ids per request (got {len(values)})", location="query")
    parsed = []
    for value in values:
        try:
            parsed.append(parse_id(value))
        except MalformedId as exc:
            raise Invalid(
                field,
                f"{value!r} is not a valid id (32 hex characters or a dashed UUID)",
                location="query",
                input=value,
            ) from exc
    return parsed


def search_filters(
    title__contains: Annotated[str | None, Query(title="Filter by title containing this string")] = None,
    created_at__gte: Annotated[datetime | None, Query()] = None,
    created_at__lt: Annotated[datetime | None, Query()] = None,
    updated_at__gte: Annotated[datetime | None, Query()] = None,
    updated_at__lt: Annotated[datetime | None, Query()] = None,
    sandbox_id__eq: Annotated[str | None, Query()] = None,
    include_sub_conversations: Annotated[
        bool, Query(title="If True, include sub-conversations in the results.")
    ] = False,
) -> service.ConversationFilters:
    return service.ConversationFilters(
        title__contains=title__contains,
        created_at__gte=created_at__gte,
        created_at__lt=created_at__lt,
        updated_at__gte=updated_at__gte,
        updated_at__lt=updated_at__lt,
        sandbox_id__eq=sandbox_id__eq,
        include_sub_conversations=include_sub_conversations,
    )


async def present(ctx: AppContext, user: User, items: list[AppConversation]) -> list[AppConversation]:
    """Fill live fields (sandbox and agent status) when a sandbox service is configured."""
    live = ctx.services.get("live_status")
    if live is None or not items:
        return items
    await live(ctx, user, items)
    return items


@router.get("/search", response_model=AppConversationPage)
async def search_app_conversations(
    filters: service.ConversationFilters = Depends(search_filters),
    sort_order: SortOrder = SortOrder.CREATED_AT_DESC,
    page_id: str | None = None,
    limit: Annotated[int, Query(gt=0, le=100)] = 100,
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> AppConversationPage:
    page = await service.search(
        ctx.db,
        ctx.settings.resolved_secret_key,
        user.id,
        filters,
        sort=sort_order,
        limit=limit,
        page_id=page_id,
    )
    await present(ctx, user, page.items)
    return page


@router.get("/count", response_model=int)
async def count_app_conversations(
    filters: service.ConversationFilters = Depends(search_filters),
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> int:
    return await service.count(ctx.db, user.id, filters)


@router.get("", response_model=list[AppConversation | None])
async def batch_get_app_conversations(
    ids: Annotated[list[str], Query()],
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> list[AppConversation | None]:
    parsed = parse_id_list(ids, "ids", service.MAX_BATCH_IDS)
    found = await service.batch_get(ctx.db, user.id, parsed)
    await present(ctx, user, [c for c in found if c is not None])
    return found


@router.get("/{conversation_id}", response_model=AppConversation)
async def get_app_conversation(
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> AppConversation:
    conversation = await service.get(ctx.db, user.id, conversation_id)
    return (await present(ctx, user, [conversation]))[0]


@router.patch("/{conversation_id}", response_model=AppConversation)
async def update_app_conversation(
    request: Annotated[AppConversationUpdateRequest, Body()],
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> AppConversation:
    s = ctx.settings
    limits = service.TagLimits(s.max_tags, s.max_tag_key_length, s.max_tag_value_length)
    conversation = await service.update_conversation(ctx.db, user.id, conversation_id, request, limits)
    return (await present(ctx, user, [conversation]))[0]


@router.delete("/{conversation_id}", response_model=Success, responses={404: {"description": "Not found"}})
async def delete_app_conversation(
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
    ctx: AppContext = Depends(get_context),
) -> Success:
    row = await service.delete_conversation(ctx.db, user.id, conversation_id)
    release = ctx.services.get("release_sandbox")
    if release is not None:
        await release(ctx, conversation_id, row.sandbox_id)
    return Success()
