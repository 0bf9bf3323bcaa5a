from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from threadline.auth.cache import KeyCache
from threadline.auth.dependencies import current_user
from threadline.auth.service import User, revoke_own_key
from threadline.core.context import Context
from threadline.core.wire import UTCTimestamp

router = APIRouter(prefix="/api/v1/users", tags=["User"])


class UserInfo(BaseModel):
    """The caller. The reference's UserInfo fields that describe app settings are kept at their defaults."""

    id: str
    name: str
    is_admin: bool
    created_at: UTCTimestamp
    email: str | None = None
    language: str | None = None
    user_version: int | None = None


@router.get("/me", response_model=UserInfo)
async def get_current_user(user: User = Depends(current_user)) -> UserInfo:
    created: datetime = user.created_at
    return UserInfo(id=user.id, name=user.name, is_admin=user.is_admin, created_at=created)


@router.delete("/me/api-keys/{key_id}", status_code=204, response_class=Response)
async def revoke_my_key(key_id: str, ctx: Context, request: Request, user: User = Depends(current_user)) -> Response:
    """Revoke one of the caller's own API keys (the one making the request too). Every Threadline process on
    the database refuses it within a second; another user's key id is answered as a missing one."""
    await revoke_own_key(ctx.db, user_id=user.id, key_id=key_id)
    cache: KeyCache = request.app.state.auth_cache
    cache.forget()
    return Response(status_code=204)
