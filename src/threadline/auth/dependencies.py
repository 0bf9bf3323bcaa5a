"""Request authentication: `X-Access-Token: KEY` or `Authorization: Bearer KEY`, then the key's rate limit
(and, for routes without credentials, the rate limit of the client's address). Keys are answered from
memory (`auth.cache.KeyCache`), which forgets them within 0.75 s of any change by any process."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from threadline.auth.cache import KeyCache
from threadline.auth.service import User
from threadline.core.context import AppContext, Context
from threadline.core.errors import Problem, Unauthorized
from threadline.ratelimit.service import ANONYMOUS, DEFAULT, START, STATE_KEY, RateLimiter

# auto_error=False: we answer missing credentials with our own problem+json 401.
_access_token = APIKeyHeader(name="X-Access-Token", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


async def _authenticated(
    request: Request,
    access_token: str | None,
    bearer: HTTPAuthorizationCredentials | None,
    ctx: AppContext,
    policy: str,
) -> User:
    key = access_token or (bearer.credentials if bearer else None)
    if not key:
        raise Unauthorized(
            "an API key is required: send it as 'X-Access-Token: KEY' or 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache: KeyCache = request.app.state.auth_cache
    found = await cache.authenticate(key)
    if found is None:
        raise Unauthorized("the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    user, key_id = found
    request.state.user = user
    request.state.api_key_id = key_id
    _charge(request, ctx, policy, key_id, "this API key")
    return user


def _charge(request: Request, ctx: AppContext, policy: str, bucket: str, whose: str) -> None:
    """Take a token from the bucket, or answer 429."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    decision = limiter.take(policy, bucket)
    # The RateLimitHeaders middleware puts the headers on the response, whatever it turns out to be.
    setattr(request.state, STATE_KEY, decision)
    if not decision.allowed:
        raise Problem(
            f"rate limit {policy!r} exceeded for {whose}: at most {decision.policy.burst} requests at once, "
            f"refilling at {decision.policy.rate:g} per second; retry in {decision.retry_after} s",
            status=429,
            type_slug="rate-limited",
            headers=decision.headers(),
        )


async def anonymous_client(ctx: Context, request: Request) -> None:
    """Routes without credentials (the public shared views): limited per client address instead."""
    address = request.client.host if request.client else "unknown"
    _charge(request, ctx, ANONYMOUS, f"address:{address}", "this client address")


async def current_user(
    ctx: Context,
    request: Request,
    access_token: str | None = Depends(_access_token),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> User:
    return await _authenticated(request, access_token, bearer, ctx, DEFAULT)


async def starting_user(
    ctx: Context,
    request: Request,
    access_token: str | None = Depends(_access_token),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> User:
    """`current_user` for requests that start something: charged to the lower `start` bucket instead."""
    return await _authenticated(request, access_token, bearer, ctx, START)
