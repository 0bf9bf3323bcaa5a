"""Request authentication: `X-Access-Token: KEY` or `Authorization: Bearer KEY`."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from threadline.api.context import AppContext, get_context
from threadline.api.errors import Unauthorized
from threadline.auth.service import User, authenticate

# auto_error=False: we answer missing credentials with our own problem+json 401.
_access_token = APIKeyHeader(name="X-Access-Token", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


async def current_user(
    request: Request,
    access_token: str | None = Depends(_access_token),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ctx: AppContext = Depends(get_context),
) -> User:
    key = access_token or (bearer.credentials if bearer else None)
    if not key:
        raise Unauthorized(
            "an API key is required: send it as 'X-Access-Token: KEY' or 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = await authenticate(ctx.db, key)
    if user is None:
        raise Unauthorized("the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    request.state.user = user
    return user
