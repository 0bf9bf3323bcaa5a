"""Callback endpoints for agent servers, authenticated by the sandbox's session key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header

from threadline.core.context import Context
from threadline.core.errors import Unauthorized
from threadline.core.ids import parse_id
from threadline.core.wire import Success
from threadline.observability.metrics import MetricsOrNone
from threadline.sandboxes.dependencies import Sandboxes
from threadline.sandboxes.records import SandboxRecord
from threadline.streams.dependencies import Hub
from threadline.streams.hub import conversations_topic, events_topic
from threadline.webhooks import service

router = APIRouter(prefix="/api/v1/webhooks", tags=["Webhooks"])


async def calling_sandbox(
    sandboxes: Sandboxes,
    x_session_api_key: Annotated[str | None, Header()] = None,
) -> SandboxRecord:
    row = await sandboxes.by_session_key(x_session_api_key) if x_session_api_key else None
    if row is None:
        raise Unauthorized("a valid X-Session-API-Key of a sandbox is required")
    return row


@router.post("/conversations", response_model=Success)
async def on_conversation_update(
    ctx: Context,
    info: Annotated[dict[str, Any], Body()],
    hub: Hub,
    sandbox: Any = Depends(calling_sandbox),
) -> Success:
    await service.on_conversation_update(ctx.db, sandbox_id=sandbox.id, info=info)
    if sandbox.user_id is not None:
        hub.notify(conversations_topic(sandbox.user_id))
    return Success()


@router.post("/events/{conversation_id}", response_model=Success)
async def on_event(
    metrics: MetricsOrNone,
    ctx: Context,
    conversation_id: str,
    events: Annotated[list[Any], Body()],
    hub: Hub,
    sandbox: Any = Depends(calling_sandbox),
) -> Success:
    stored = await service.on_events(
        ctx.db, sandbox_id=sandbox.id, conversation_id=conversation_id, items=events, metrics=metrics
    )
    # Committed: wake this process's streams now (other processes' streams find it by polling).
    if stored:
        hub.notify(events_topic(parse_id(conversation_id)))
    if sandbox.user_id is not None:
        hub.notify(conversations_topic(sandbox.user_id))
    return Success()
