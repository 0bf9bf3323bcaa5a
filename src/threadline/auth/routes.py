from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
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
