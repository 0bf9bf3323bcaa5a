"""HTTP routes for starting conversations, start tasks and send-message.

Declared before the `/{conversation_id}` routes so `start-tasks` and `stream-start` are not taken for ids.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response, StreamingResponse

from threadline.auth.dependencies import current_user, starting_user
from threadline.auth.service import User
from threadline.conversations.dependencies import Starts
from threadline.conversations.messages import send_message
from threadline.conversations.routes import conversation_id_path, parse_id_list
from threadline.conversations.start_models import (
    AppConversationStartRequest,
    AppConversationStartTask,
    AppConversationStartTaskPage,
    AppConversationStartTaskSortOrder,
    AppSendMessageRequest,
    AppSendMessageResponse,
)
from threadline.core.context import Context
from threadline.core.errors import Invalid
from threadline.core.ids import ID_PATTERN, MalformedId, id_list_schema, parse_id
from threadline.core.wire import PAGE_ID_SCHEMA, PAGE_ID_TITLE, OptionalIsoDateTime
from threadline.idempotency.service import Idempotent, idempotency
from threadline.sandboxes.dependencies import Sandboxes

router = APIRouter(prefix="/api/v1/app-conversations", tags=["Conversations"])
MAX_BATCH = 100


@router.post("", response_model=AppConversationStartTask, responses={409: {}, 422: {}, 429: {}})
async def start_app_conversation(
    starts: Starts,
    request: Annotated[AppConversationStartRequest, Body()],
    user: User = Depends(starting_user),
    idempotent: Idempotent = Depends(idempotency),
) -> Response:
    result = await idempotent.run(user.id, request, lambda: starts.begin(user.id, request))
    return result.response()


@router.post("/stream-start", response_model=list[AppConversationStartTask], responses={409: {}, 422: {}, 429: {}})
async def stream_app_conversation_start(
    starts: Starts,
    request: Annotated[AppConversationStartRequest, Body()],
    user: User = Depends(starting_user),
    idempotent: Idempotent = Depends(idempotency),
) -> Response:
    result = await idempotent.run(user.id, request, lambda: starts.begin(user.id, request))
    if result.status != 200:
        return result.response()
    # A replay starts nothing: it streams the stored task from where it is now.
    task_id = result.json()["id"]

    async def body() -> AsyncIterator[bytes]:
        # A JSON array, one element per status the task passes through, flushed as it happens.
        yield b"["
        separator = b""
        async for task in starts.stream(user_id=user.id, task_id=task_id):
            yield separator + json.dumps(task.model_dump(mode="json")).encode()
            separator = b","
        yield b"]"

    return StreamingResponse(body(), media_type="application/json", headers=result.headers)


@router.get("/start-tasks/search", response_model=AppConversationStartTaskPage)
async def search_app_conversation_start_tasks(
    starts: Starts,
    conversation_id__eq: Annotated[str | None, Query(json_schema_extra={"pattern": ID_PATTERN})] = None,
    created_at__gte: OptionalIsoDateTime = None,
    sort_order: AppConversationStartTaskSortOrder = AppConversationStartTaskSortOrder.CREATED_AT_DESC,
    page_id: Annotated[str | None, Query(title=PAGE_ID_TITLE, json_schema_extra=PAGE_ID_SCHEMA)] = None,
    limit: Annotated[int, Query(gt=0, le=100)] = 100,
    user: User = Depends(current_user),
) -> AppConversationStartTaskPage:
    conversation_id = _optional_id(conversation_id__eq)
    return await starts.search(
        user.id,
        conversation_id=conversation_id,
        created_at_gte=created_at__gte,
        sort=sort_order,
        limit=limit,
        page_id=page_id,
    )


@router.get("/start-tasks/count", response_model=int)
async def count_app_conversation_start_tasks(
    starts: Starts,
    conversation_id__eq: Annotated[str | None, Query(json_schema_extra={"pattern": ID_PATTERN})] = None,
    created_at__gte: OptionalIsoDateTime = None,
    user: User = Depends(current_user),
) -> int:
    return await starts.count(
        user.id, conversation_id=_optional_id(conversation_id__eq), created_at_gte=created_at__gte
    )


@router.get("/start-tasks", response_model=list[AppConversationStartTask | None])
async def batch_get_app_conversation_start_tasks(
    starts: Starts,
    ids: Annotated[list[str], Query(json_schema_extra=id_list_schema(MAX_BATCH))],
    user: User = Depends(current_user),
) -> list[AppConversationStartTask | None]:
    return await starts.batch_get(user_id=user.id, ids=parse_id_list(ids, "ids", MAX_BATCH))


@router.post(
    "/{conversation_id}/send-message",
    response_model=AppSendMessageResponse,
    responses={404: {}, 409: {}, 410: {}, 422: {}, 502: {}, 503: {}},
)
async def send_message_to_conversation(
    sandboxes: Sandboxes,
    ctx: Context,
    request: Annotated[AppSendMessageRequest, Body()],
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
    idempotent: Idempotent = Depends(idempotency),
) -> Response:
    result = await idempotent.run(
        user.id,
        request,
        lambda: send_message(ctx.db, sandboxes, user_id=user.id, conversation_id=conversation_id, request=request),
    )
    return result.response()


def _optional_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_id(value)
    except MalformedId:
        raise Invalid("conversation_id__eq", "not a valid conversation id", location="query", input=value) from None
