"""HTTP routes of /api/v1/app-conversations. Thin: parse, call the service, shape the answer."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response

from threadline.auth.dependencies import current_user, direct_user
from threadline.auth.service import User
from threadline.conversations import service
from threadline.conversations.dependencies import Live, LiveFields, live_fields
from threadline.conversations.etag import if_none_match_matches
from threadline.conversations.mapping import BATCH_JSON, CONVERSATION_JSON, PAGE_JSON, to_wire
from threadline.conversations.models import (
    AppConversation,
    AppConversationPage,
    AppConversationUpdateRequest,
    ConversationExecutionStatus,
    ConversationTrigger,
    ProviderType,
    SortOrder,
    Success,
)
from threadline.conversations.records import StoredConversation
from threadline.core.context import AppContext, Context, get_context
from threadline.core.direct import direct, json_body_type, path_id, plain_query, small_int
from threadline.core.errors import Invalid, NotFound
from threadline.core.ids import ID_PATTERN, MalformedId, id_list_schema, parse_id
from threadline.core.wire import (
    PAGE_ID_SCHEMA,
    PAGE_ID_TITLE,
    OptionalIsoDateTime,
    json_adapter_response,
)
from threadline.sandboxes.dependencies import Sandboxes, sandbox_service
from threadline.sandboxes.service import SandboxService

# The hot routes marked @direct: their plain requests are answered by direct handlers (core.direct).
router = APIRouter(prefix="/api/v1/app-conversations", tags=["Conversations"])
_NO_PARAMETERS: frozenset[str] = frozenset()


async def conversation_id_path(
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


MAX_TAG_FILTERS = 50  # of each: tag, tag_key


def _tag_pairs(values: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = set()
    for value in values:
        key, sep, tag_value = value.partition(":")
        if not sep or not key:
            raise Invalid(
                "tag", f"{value!r} is not key:value (a non-empty key, then ':')", location="query", input=value
            )
        pairs.add((key, tag_value))
    return tuple(sorted(pairs))


def _tag_keys(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if not value:
            raise Invalid("tag_key", "a tag key must not be empty", location="query", input=value)
    return tuple(sorted(set(values)))


async def search_filters(
    title__contains: Annotated[str | None, Query(title="Filter by title containing this string")] = None,
    created_at__gte: Annotated[OptionalIsoDateTime, Query()] = None,
    created_at__lt: Annotated[OptionalIsoDateTime, Query()] = None,
    updated_at__gte: Annotated[OptionalIsoDateTime, Query()] = None,
    updated_at__lt: Annotated[OptionalIsoDateTime, Query()] = None,
    sandbox_id__eq: Annotated[str | None, Query()] = None,
    include_sub_conversations: Annotated[
        bool, Query(title="If True, include sub-conversations in the results.")
    ] = False,
    tag: Annotated[
        list[str] | None,
        Query(
            description=f"key:value (split at the first ':'); repeatable (at most {MAX_TAG_FILTERS}), "
            "every one must match",
            json_schema_extra={"items": {"type": "string", "pattern": "^[^:]+:"}, "maxItems": MAX_TAG_FILTERS},
        ),
    ] = None,
    tag_key: Annotated[
        list[str] | None,
        Query(
            description=f"Has a tag with this key; repeatable (at most {MAX_TAG_FILTERS}), every one must match",
            json_schema_extra={"items": {"type": "string", "minLength": 1}, "maxItems": MAX_TAG_FILTERS},
        ),
    ] = None,
    selected_repository__eq: Annotated[str | None, Query()] = None,
    git_provider__eq: Annotated[ProviderType | None, Query()] = None,
    trigger__eq: Annotated[ConversationTrigger | None, Query()] = None,
    public__eq: Annotated[
        bool | None, Query(description="true: shared; false: not shared (public false or never set)")
    ] = None,
    parent_conversation_id__eq: Annotated[
        str | None,
        Query(
            description="Sub-conversations of this conversation (included whatever include_sub_conversations says)",
            json_schema_extra={"pattern": ID_PATTERN},
        ),
    ] = None,
    execution_status__eq: Annotated[
        ConversationExecutionStatus | None,
        Query(
            description="The last execution status the agent reported (the stored copy); matches only "
            "conversations whose sandbox is RUNNING, as execution_status is null otherwise"
        ),
    ] = None,
    llm_model__eq: Annotated[str | None, Query()] = None,
    accumulated_cost__gte: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
) -> service.ConversationFilters:
    tags, tag_keys = tag or [], tag_key or []
    for name, values in (("tag", tags), ("tag_key", tag_keys)):
        if len(values) > MAX_TAG_FILTERS:
            raise Invalid(name, f"at most {MAX_TAG_FILTERS} {name} filters per request", location="query")
    parent = None
    if parent_conversation_id__eq is not None:
        parent = parse_id_list([parent_conversation_id__eq], "parent_conversation_id__eq", 1)[0]
    return service.ConversationFilters(
        title__contains=title__contains,
        created_at__gte=created_at__gte,
        created_at__lt=created_at__lt,
        updated_at__gte=updated_at__gte,
        updated_at__lt=updated_at__lt,
        sandbox_id__eq=sandbox_id__eq,
        include_sub_conversations=include_sub_conversations,
        tags=_tag_pairs(tags),
        tag_keys=_tag_keys(tag_keys),
        selected_repository__eq=selected_repository__eq,
        git_provider__eq=git_provider__eq,
        trigger__eq=trigger__eq,
        public__eq=public__eq,
        parent_conversation_id__eq=parent,
        execution_status__eq=execution_status__eq,
        llm_model__eq=llm_model__eq,
        accumulated_cost__gte=accumulated_cost__gte,
    )


async def settle_sandboxes(sandboxes: SandboxService, user: User, filters: service.ConversationFilters) -> None:
    """Before a query on stored sandbox statuses: record the user's sandboxes whose agent server died."""
    if filters.execution_status__eq is not None:
        await sandboxes.settle_user(user.id)


async def _one_wire(live: LiveFields, user: User, stored: StoredConversation) -> dict[str, Any]:
    """One conversation as wire data (`to_wire`), live fields filled: answered without a model."""
    [(current, state)] = await live.resolve(user, [stored])
    return to_wire(current, state)


async def _search(
    sandboxes: SandboxService,
    live: LiveFields,
    ctx: AppContext,
    user: User,
    filters: service.ConversationFilters,
    sort_order: SortOrder,
    page_id: str | None,
    limit: int,
) -> Response:
    await settle_sandboxes(sandboxes, user, filters)
    page = await service.search(
        ctx.db,
        secret=ctx.settings.resolved_secret_key,
        user_id=user.id,
        filters=filters,
        sort=sort_order,
        limit=limit,
        page_id=page_id,
    )
    items = [to_wire(item, state) for item, state in await live.resolve(user, page.items)] if page.items else []
    return json_adapter_response(PAGE_JSON, {"items": items, "next_page_id": page.next_page_id})


_PAGE_PARAMETERS = frozenset({"limit", "page_id", "sort_order"})
# What `search_filters` gives for a query without filters (a prebuilt page statement's key in the service).
_NO_FILTERS = service.ConversationFilters()
_SORT_ORDERS = {order.value: order for order in SortOrder}


async def _search_direct(request: Request) -> Response | None:
    """A page without filters (the console's list, a client walking all its conversations)."""
    query = plain_query(request, _PAGE_PARAMETERS)
    if query is None:
        return None
    limit = small_int(query.get("limit"), default=100, maximum=100)
    sort_order = _SORT_ORDERS.get(query.get("sort_order", SortOrder.CREATED_AT_DESC.value))
    if limit is None or sort_order is None:
        return None
    user = await direct_user(request)
    if user is None:
        return None
    return await _search(
        await sandbox_service(request),
        await live_fields(request),
        await get_context(request),
        user,
        _NO_FILTERS,
        sort_order,
        query.get("page_id"),
        limit,
    )


@router.get("/search", response_model=AppConversationPage)
@direct(_search_direct)
async def search_app_conversations(
    sandboxes: Sandboxes,
    live: Live,
    ctx: Context,
    filters: service.ConversationFilters = Depends(search_filters),
    sort_order: SortOrder = SortOrder.CREATED_AT_DESC,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[int, Query(gt=0, le=100)] = 100,
    user: User = Depends(current_user),
) -> Response:
    return await _search(sandboxes, live, ctx, user, filters, sort_order, page_id, limit)


@router.get("/count", response_model=int)
async def count_app_conversations(
    sandboxes: Sandboxes,
    ctx: Context,
    filters: service.ConversationFilters = Depends(search_filters),
    user: User = Depends(current_user),
) -> int:
    await settle_sandboxes(sandboxes, user, filters)
    return await service.count(ctx.db, user_id=user.id, filters=filters)


@router.get("", response_model=list[AppConversation | None])
async def batch_get_app_conversations(
    live: Live,
    ctx: Context,
    ids: Annotated[list[str], Query(json_schema_extra=id_list_schema(service.MAX_BATCH_IDS))],
    user: User = Depends(current_user),
) -> Response:
    parsed = parse_id_list(ids, "ids", service.MAX_BATCH_IDS)
    found = await service.batch_get(ctx.db, user_id=user.id, ids=parsed)
    present_ones = [c for c in found if c is not None]
    answered = iter(await live.resolve(user, present_ones) if present_ones else [])
    items = [to_wire(*next(answered)) if c is not None else None for c in found]
    return json_adapter_response(BATCH_JSON, items)


_IF_MATCH = Header(
    description="Change only if the conversation's ETag is one of these (strong comparison; `*`: any version)"
)
_PRECONDITION: dict[int | str, dict[str, Any]] = {
    412: {"description": "If-Match does not match; the body's `etag` and the ETag header are current"}
}


async def _get(
    live: LiveFields, ctx: AppContext, user: User, conversation_id: str, if_none_match: str | None
) -> Response:
    stored = await service.get(ctx.db, user_id=user.id, conversation_id=conversation_id)
    conversation = await _one_wire(live, user, stored)
    etag = conversation["etag"]
    if if_none_match is not None and if_none_match_matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return json_adapter_response(CONVERSATION_JSON, conversation, headers={"ETag": etag})


async def _get_direct(request: Request) -> Response | None:
    conversation_id = path_id(request, "conversation_id")
    if conversation_id is None or plain_query(request, _NO_PARAMETERS) is None:
        return None
    user = await direct_user(request)
    if user is None:
        return None
    return await _get(
        await live_fields(request),
        await get_context(request),
        user,
        conversation_id,
        request.headers.get("if-none-match"),
    )


@router.get(
    "/{conversation_id}", response_model=AppConversation, responses={304: {"description": "If-None-Match matched"}}
)
@direct(_get_direct)
async def get_app_conversation(
    live: Live,
    ctx: Context,
    if_none_match: Annotated[str | None, Header(description="Answer 304 if the ETag is one of these")] = None,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> Response:
    return await _get(live, ctx, user, conversation_id, if_none_match)


async def _update(
    live: LiveFields,
    ctx: AppContext,
    user: User,
    conversation_id: str,
    request: AppConversationUpdateRequest,
    if_match: str | None,
) -> Response:
    s = ctx.settings
    limits = service.TagLimits(s.max_tags, s.max_tag_key_length, s.max_tag_value_length)
    stored = await service.update_conversation(
        ctx.db,
        user_id=user.id,
        conversation_id=conversation_id,
        request=request,
        limits=limits,
        expected_etag=if_match,
    )
    conversation = await _one_wire(live, user, stored)
    return json_adapter_response(CONVERSATION_JSON, conversation, headers={"ETag": conversation["etag"]})


async def _update_direct(request: Request) -> Response | None:
    conversation_id = path_id(request, "conversation_id")
    if conversation_id is None or not json_body_type(request) or plain_query(request, _NO_PARAMETERS) is None:
        return None
    try:
        # Read and validated as the route does (json.loads, then the model in Python mode).
        update = AppConversationUpdateRequest.model_validate(json.loads(await request.body()))
    except Exception:
        # Whatever fails here (a body too large or cut off, bad JSON, a field the model refuses), the route
        # answers, with the body replayed to it (core.direct.DirectDispatch).
        return None
    user = await direct_user(request)
    if user is None:
        return None
    return await _update(
        await live_fields(request),
        await get_context(request),
        user,
        conversation_id,
        update,
        request.headers.get("if-match"),
    )


@router.patch("/{conversation_id}", response_model=AppConversation, responses=_PRECONDITION)
@direct(_update_direct)
async def update_app_conversation(
    live: Live,
    ctx: Context,
    request: Annotated[AppConversationUpdateRequest, Body()],
    if_match: Annotated[str | None, _IF_MATCH] = None,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> Response:
    return await _update(live, ctx, user, conversation_id, request, if_match)


@router.delete(
    "/{conversation_id}", response_model=Success, responses={404: {"description": "Not found"}, **_PRECONDITION}
)
async def delete_app_conversation(
    sandboxes: Sandboxes,
    ctx: Context,
    response: Response,
    if_match: Annotated[str | None, _IF_MATCH] = None,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> Success:
    deleted = await service.delete_conversation(
        ctx.db, user_id=user.id, conversation_id=conversation_id, expected_etag=if_match
    )
    # The ETag of the version that was deleted.
    response.headers["ETag"] = deleted.etag
    await sandboxes.release_after_delete(conversation_id=conversation_id, sandbox_id=deleted.sandbox_id)
    return Success()
