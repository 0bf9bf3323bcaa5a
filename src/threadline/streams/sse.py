"""The text/event-stream wire format (WHATWG HTML, "Server-sent events") and the response that carries it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/event-stream"
# How long an EventSource waits before it reconnects after the connection dropped (milliseconds).
RETRY_MS = 1000


def frame(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE message. `data` may span lines (each becomes a `data:` line; the client joins them with \\n)."""
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    # An id with a line break or NUL cannot be sent (the client would read another field); none of the
    # agent server's ids has one, and such an event is still sent, without an id.
    if event_id is not None and not any(c in event_id for c in "\r\n\x00"):
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str) -> bytes:
    """A comment line: ignored by clients, it keeps proxies and the client from taking the connection for dead."""
    return f": {text}\n\n".encode()


def retry(ms: int = RETRY_MS) -> bytes:
    return f"retry: {ms}\n\n".encode()


HEADERS = {
    "Cache-Control": "no-store",
    # nginx and others would buffer the response: an event must reach the client when it is sent.
    "X-Accel-Buffering": "no",
}


class EventStreamResponse(StreamingResponse):
    """A stream that gives its slot back however it ends (finished, client gone, cancelled at shutdown),
    even if its body was never iterated."""

    media_type = MEDIA_TYPE

    def __init__(
        self, content: AsyncIterator[bytes], release: Callable[[], None], status_code: int = 200, **kwargs: Any
    ) -> None:
        headers = {**HEADERS, **kwargs.pop("headers", {})}
        super().__init__(content, status_code=status_code, headers=headers, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def openapi_response(description: str, example: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a stream route: 200 is text/event-stream."""
    return {
        200: {
            "description": description,
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}, "example": example}},
        },
        429: {"description": "Too many streams open at once for this user (or, signed out, this address)"},
    }
