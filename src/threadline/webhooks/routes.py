"""Callback endpoints for agent servers, authenticated by the sandbox's session key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header

from threadline.core.context import Context
from threadline.core.errors import Unauthorized
from threadline.core.wire import Success
from threadline.observability.metrics import MetricsOrNone
from threadline.sandboxes.dependencies import Sandboxes
from threadline.sandboxes.records import SandboxRecord
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
    sandbox: Any = Depends(calling_sandbox),
) -> Success:
    await service.on_conversation_update(ctx.db, sandbox_id=sandbox.id, info=info)
    return Success()


@router.post("/events/{conversation_id}", response_model=Success)
async def on_event(
    metrics: MetricsOrNone,
    ctx: Context,
    conversation_id: str,
    events: Annotated[list[Any], Body()],
    sandbox: Any = Depends(calling_sandbox),
) -> Success:
    await service.on_events(
        ctx.db, sandbox_id=sandbox.id, conversation_id=conversation_id, items=events, metrics=metrics
    )
    return Success()
