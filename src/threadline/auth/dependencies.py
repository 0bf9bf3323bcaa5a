"""Request authentication: `X-Access-Token: KEY` or `Authorization: Bearer KEY`, or else the web console's
session cookie (`auth.sessions`), then the key's rate limit (and, for routes without credentials, the rate
limit of the client's address). Keys are answered from memory (`auth.cache.KeyCache`), which forgets them
within 0.75 s of any change by any process; a session is looked up by its key's digest the same way.

A request authenticated by the cookie alone that may change something (any method but GET, HEAD, OPTIONS)
must carry the session's CSRF token in `X-CSRF-Token`, or it is refused with 403: a page elsewhere cannot
make a signed-in browser act (SameSite=Strict keeps the cookie off cross-site requests too). A header key
needs no CSRF token: no browser sends one by itself."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from threadline.auth.cache import KeyCache
from threadline.auth.service import User
from threadline.auth.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, ConsoleSessions
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
    cache: KeyCache = request.app.state.auth_cache
    session = None if key else request.cookies.get(SESSION_COOKIE)
    found: tuple[User, str] | None
    if session:
        found = await _session_key(request, cache, session)
    elif key:
        found = await cache.authenticate(key)
        if found is None:
            raise Unauthorized("the API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    else:
        raise Unauthorized(
            "an API key is required: send it as 'X-Access-Token: KEY' or 'Authorization: Bearer KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return _accept(request, ctx, found, policy)


def _accept(request: Request, ctx: AppContext, found: tuple[User, str], policy: str) -> User:
    """The request is this key's: remembered for logs and metrics, and charged to its rate limit."""
    user, key_id = found
    request.state.user = user
    request.state.api_key_id = key_id
    _charge(request, ctx, policy, key_id, "this API key")
    return user


async def direct_user(request: Request, policy: str = DEFAULT) -> User | None:
    """For direct handlers (`core.direct`): the user of a request that sends a known API key in a header,
    accepted exactly as `current_user` accepts it (rate limit charged, 429 raised); None for anything else
    (no key, a console session, an unknown key), which the route's own `current_user` then answers."""
    key = request.headers.get("x-access-token")
    if not key:
        # As HTTPBearer reads it, so that a header the route would refuse is never accepted here.
        scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
        if scheme.lower() != "bearer" or not credentials:
            return None
        key = credentials
    cache: KeyCache = request.app.state.auth_cache
    found = await cache.authenticate(key)
    if found is None:
        return None
    ctx: AppContext = request.app.state.ctx
    return _accept(request, ctx, found, policy)


def console_sessions(request: Request) -> ConsoleSessions | None:
    sessions: ConsoleSessions | None = getattr(request.app.state, "console_sessions", None)
    return sessions


async def _session_key(request: Request, cache: KeyCache, token: str) -> tuple[User, str]:
    """The live key behind a console session cookie; 401 for an expired or ended session, 403 for a request
    that may change something without the session's CSRF token."""
    sessions = console_sessions(request)
    digest = sessions.digest_of(token) if sessions is not None else None
    if sessions is None or digest is None:
        raise Unauthorized(
            "the console session is invalid or expired: sign in again, or send an API key as 'X-Access-Token: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in SAFE_METHODS and not sessions.csrf_ok(token, request.headers.get(CSRF_HEADER)):
        raise Problem(
            f"a request authenticated by the console's session cookie must carry the session's CSRF token in "
            f"the {CSRF_HEADER} header",
            status=403,
            type_slug="csrf-token-missing",
        )
    found = await cache.authenticate_digest(digest)
    if found is None:
        raise Unauthorized(
            "the API key of this console session is revoked: sign in again", headers={"WWW-Authenticate": "Bearer"}
        )
    return found


async def session_user(request: Request, ctx: AppContext) -> tuple[User, str] | None:
    """For the console's pages: the signed-in user and the session token, or None (no cookie, an expired
    session, a revoked key). Charged to the key's rate limit like an API request."""
    token = request.cookies.get(SESSION_COOKIE)
    sessions = console_sessions(request)
    if not token or sessions is None:
        return None
    digest = sessions.digest_of(token)
    if digest is None:
        return None
    cache: KeyCache = request.app.state.auth_cache
    found = await cache.authenticate_digest(digest)
    if found is None:
        return None
    user, key_id = found
    request.state.user = user
    request.state.api_key_id = key_id
    _charge(request, ctx, DEFAULT, key_id, "this API key")
    return user, token


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
