"""ASGI middleware: request id, access log line and HTTP metrics for every request.

Outermost of our middleware, so it sees every answer: 413s of the body limit, 429s of the rate limiter,
streamed bodies (timed to their last byte) and unhandled exceptions, which it logs and answers with a
500 problem+json itself (so that answer carries the request id too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.core.errors import problem_response
from threadline.core.request_id import new_request_id, reset_request_id, sane_request_id, set_request_id
from threadline.observability.metrics import UNMATCHED_ROUTE, Metrics

HEADER = "X-Request-ID"
_HEADER_BYTES = HEADER.lower().encode()
access_log = logging.getLogger("threadline.access")
error_log = logging.getLogger("threadline.errors")


def route_template(scope: Scope, static_paths: frozenset[str]) -> str:
    """The path template of the route that handled the request, never the raw path (ids stay out)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    # Plain Starlette routes (/openapi.json, /docs) are not put in the scope; their paths are constant.
    path = scope.get("path", "")
    return path if path in static_paths else UNMATCHED_ROUTE


class RequestObservability:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None = None,
        static_paths: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self._static_paths = static_paths
        self._static: frozenset[str] | None = None

    def static_paths(self) -> frozenset[str]:
        if self._static is None:
            self._static = self._static_paths() if self._static_paths else frozenset()
        return self._static

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = None
        for name, value in scope.get("headers", ()):
            if name == _HEADER_BYTES:
                sent = value.decode("latin-1")
                break
        request_id = sane_request_id(sent) or new_request_id()
        token = set_request_id(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False
        finished = False

        def finish() -> None:
            """Count and log the request once; called before the last byte goes out, so a client that has
            its answer always finds it in /metrics and the log."""
            nonlocal finished
            if finished:
                return
            finished = True
            seconds = time.perf_counter() - started
            route = route_template(scope, self.static_paths())
            method = scope.get("method", "")
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                self.metrics.observe_request(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.log(
                    logging.ERROR if status >= 500 else logging.INFO,
                    "%s %s %d %.1fms",
                    method,
                    route,
                    status,
                    seconds * 1000,
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "path": scope.get("path", ""),
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != _HEADER_BYTES]
                headers.append((_HEADER_BYTES, request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            error_log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            response = problem_response(500, "Internal server error; the event was logged.")
            await response(scope, receive, send_with_id)
        finally:
            # A client gone before the end, or an error after the response started.
            finish()
            reset_request_id(token)
