"""Direct handlers: the plain requests of the few hot routes answered without FastAPI's dependency solving.

A route of a router built with `route_class=DirectRoute` whose endpoint is marked `@direct(handler)` offers
every request to `handler` first. The handler answers only the plain case, the one a client sends nearly
always (credentials in a header, a path id and a query or body that are valid on their face), and returns
None for anything else; then the route's FastAPI handler answers as it always has. So every answer about
a bad request still comes from the one declared route (its parameters, its 401/404/422 problems, its
OpenAPI document); a direct handler only skips work for requests that path would have accepted. Its
checks must be stricter than the route's, never looser, and it must have no effect (no rate-limit token
taken, nothing stored) before it has decided to answer: authentication (`auth.dependencies.direct_user`)
is its last check.

Why: on the hot routes FastAPI's dependency solving and request handling cost about as much CPU as the
work itself (docs/performance.md, issue 14).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from threadline.core.ids import MalformedId, parse_id

DirectHandler = Callable[[Request], Awaitable[Response | None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

_ATTRIBUTE = "__threadline_direct__"


def direct(handler: DirectHandler) -> Callable[[Endpoint], Endpoint]:
    """Mark a route's endpoint: its route (a `DirectRoute`) offers each request to `handler` first."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ATTRIBUTE, handler)
        return endpoint

    return mark


def direct_handler_of(endpoint: Callable[..., Any]) -> DirectHandler | None:
    handler: DirectHandler | None = getattr(endpoint, _ATTRIBUTE, None)
    return handler


class DirectRoute(APIRoute):
    """An APIRoute that lets its endpoint's direct handler (if it has one) answer first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        declared = super().get_route_handler()
        handler = direct_handler_of(self.endpoint)
        if handler is None:
            return declared

        async def direct_or_declared(request: Request) -> Response:
            response = await handler(request)
            if response is None:
                # The body, when read, stays cached on this request object: the route reads it again for free.
                response = await declared(request)
            return response

        return direct_or_declared


def path_id(request: Request, name: str) -> str | None:
    """A path parameter that is an id, normalised; None when it is malformed (the route answers that)."""
    try:
        return parse_id(request.path_params[name])
    except MalformedId:
        return None


def plain_query(request: Request, allowed: frozenset[str]) -> dict[str, str] | None:
    """The query's parameters when every one is in `allowed` and given once, else None."""
    query: dict[str, str] = {}
    if not request.scope["query_string"]:
        return query
    for name, value in request.query_params.multi_items():
        if name not in allowed or name in query:
            return None
        query[name] = value
    return query


def small_int(text: str | None, *, default: int, maximum: int) -> int | None:
    """A positive integer written plainly (digits only, no sign, no leading zero), at most `maximum`;
    `default` when absent; None otherwise (the route decides what an odd one means)."""
    if text is None:
        return default
    if not (0 < len(text) <= 6 and text.isascii() and text.isdigit() and text[0] != "0"):
        return None
    value = int(text)
    return value if value <= maximum else None


def json_body_type(request: Request) -> bool:
    """Whether the request says its body is JSON, in the one plain spelling."""
    content_type = request.headers.get("content-type")
    return content_type is not None and content_type.lower() in ("application/json", "application/json; charset=utf-8")
