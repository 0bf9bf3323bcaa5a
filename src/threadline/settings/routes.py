"""HTTP routes of /api/v1/settings: the caller's LLM settings. Thin: parse, call the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.core.context import Context
from threadline.core.wire import parse_without_echo
from threadline.settings import service
from threadline.settings.models import LLMSettings, SettingsUpdateRequest

router = APIRouter(prefix="/api/v1/settings", tags=["Settings"])

# The body is parsed by hand (see parse_without_echo) so a 422 never echoes an API key; the schema
# is still published.
_UPDATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SettingsUpdateRequest.model_json_schema()}},
    }
}


@router.get("", response_model=LLMSettings)
async def get_settings(
    ctx: Context,
    user: User = Depends(current_user),
) -> LLMSettings:
    """The caller's LLM settings in effect: their own values, else the server-wide defaults."""
    return await service.get_settings(ctx.db, ctx.settings, user.id)


@router.post("", response_model=LLMSettings, openapi_extra=_UPDATE_BODY)
async def update_settings(
    ctx: Context,
    request: Request,
    user: User = Depends(current_user),
) -> LLMSettings:
    """Change the caller's LLM settings: absent fields are kept, null clears back to the server default."""
    update = parse_without_echo(SettingsUpdateRequest, await request.body())
    return await service.update_settings(ctx.db, ctx.settings, user.id, update)
