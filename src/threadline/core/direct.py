"""Direct handlers: the plain requests of the few hot routes answered without FastAPI's routing and
dependency solving.

A route whose endpoint is marked `@direct(handler)` is declared as usual (its parameters, dependencies and
responses make the OpenAPI document and answer every bad request). `DirectDispatch`, which sits between the
app's exception middleware and its router, offers each request that the router would give to that route to
`handler` first. The handler answers only the plain case, the one a client sends nearly always (credentials
in a header, a path id and a query or body that are valid on their face), and returns None for anything
else; then the router answers as it always has (the body, if the handler read it, is replayed). So every
answer about a bad request still comes from the one declared route; a direct handler only skips work for
requests that route would have accepted. Its checks must be stricter than the route's, never looser, and it
must have no effect (no rate-limit token taken, nothing stored) before it has decided to answer:
authentication (`auth.dependencies.direct_user`) is its last check. Exceptions it raises reach the same
exception middleware the route's would.

Why: on the hot routes FastAPI's route matching, request wrapping and dependency solving cost about as much
CPU as the work itself (docs/performance.md, issue 14).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.core.ids import MalformedId, parse_id

DirectHandler = Callable[[Request], Awaitable[Response | None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

_ATTRIBUTE = "__threadline_direct__"


def direct(handler: DirectHandler) -> Callable[[Endpoint], Endpoint]:
    """Mark a route's endpoint: `DirectDispatch` offers the requests the router would give it to `handler` first."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ATTRIBUTE, handler)
        return endpoint

    return mark


def direct_handler_of(endpoint: Callable[..., Any]) -> DirectHandler | None:
    handler: DirectHandler | None = getattr(endpoint, _ATTRIBUTE, None)
    return handler


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in the order its router tries them, included routers opened in place."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is None:
            yield route
            continue
        prefix = getattr(getattr(route, "include_context", None), "prefix", "")
        if prefix:
            # Its routes' patterns would not be the paths it serves; nothing here includes with a prefix.
            raise RuntimeError(f"direct dispatch does not support routers included with a prefix ({prefix!r})")
        yield from flat_routes(included.routes)


@dataclass(frozen=True)
class _Target:
    route: APIRoute
    handler: DirectHandler
    # The patterns of the routes before it that take one of its methods: the router takes the first route
    # whose pattern and method match, so where one of these matches, the request is not this route's.
    earlier: tuple[re.Pattern[str], ...]


class DirectDispatch:
    """The ASGI layer in front of the router that hands a direct route's requests to its direct handler."""

    def __init__(self, app: FastAPI, router: ASGIApp) -> None:
        self.app = app
        self.router = router
        self._targets: dict[str, list[_Target]] | None = None

    def targets(self) -> dict[str, list[_Target]]:
        """Method -> the direct routes taking it, in the router's order. Built at the first request, when
        every route is in."""
        if self._targets is None:
            table: dict[str, list[_Target]] = {}
            seen: list[tuple[frozenset[str] | None, re.Pattern[str]]] = []
            for route in flat_routes(self.app.router.routes):
                # None: every method (a mount takes a path whatever the method).
                methods = None if isinstance(route, Mount) else frozenset(getattr(route, "methods", None) or ())
                pattern = getattr(route, "path_regex", None)
                handler = direct_handler_of(route.endpoint) if isinstance(route, APIRoute) else None
                if isinstance(route, APIRoute) and handler is not None:
                    for method in route.methods or ():
                        earlier = tuple(p for m, p in seen if m is None or method in m)
                        table.setdefault(method, []).append(_Target(route, handler, earlier))
                if pattern is not None:
                    # A route with no methods that is not a mount (a websocket) is never taken for HTTP.
                    seen.append((methods, pattern))
            self._targets = table
        return self._targets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._target(scope)
        if found is None:
            await self.router(scope, receive, send)
            return
        target, path_params = found
        recorded = _RecordedReceive(receive)
        scope["path_params"] = path_params
        scope["route"] = target.route
        scope["endpoint"] = target.route.endpoint
        response = await target.handler(Request(scope, recorded, send))
        if response is not None:
            await response(scope, receive, send)
            return
        for key in ("path_params", "route", "endpoint"):
            del scope[key]
        await self.router(scope, recorded.replay(), send)

    def _target(self, scope: Scope) -> tuple[_Target, dict[str, str]] | None:
        """The direct route the router would take for this request, with its path parameters."""
        if scope["type"] != "http" or scope.get("root_path"):
            # Under a root path the router matches the path without it; such requests go the long way.
            return None
        path = scope["path"]
        for target in self.targets().get(scope["method"], ()):
            match = target.route.path_regex.match(path)
            if match is not None:
                if any(pattern.match(path) for pattern in target.earlier):
                    return None
                return target, match.groupdict()
        return None


class _RecordedReceive:
    """`receive`, keeping what it delivered so that the router can be given the same messages again."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.messages: list[Message] = []

    async def __call__(self) -> Message:
        message = await self.receive()
        self.messages.append(message)
        return message

    def replay(self) -> Receive:
        pending = list(self.messages)

        async def receive() -> Message:
            return pending.pop(0) if pending else await self.receive()

        return receive


class DirectDispatchApp(FastAPI):
    """FastAPI with `DirectDispatch` between its exception middleware and its router."""

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        # Find the innermost layer, the one that calls the router, and put the dispatch in front of the router.
        layer: Any = stack
        while getattr(layer, "app", None) is not self.router:
            layer = getattr(layer, "app", None)
            if layer is None:
                raise RuntimeError("the middleware stack does not end in the router; direct dispatch cannot be placed")
        layer.app = DirectDispatch(self, self.router)
        return stack


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
