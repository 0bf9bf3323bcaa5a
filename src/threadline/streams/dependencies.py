"""The hub as a typed dependency (set on `app.state.streams` by the app factory), and how a route opens a stream."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Query
from starlette.requests import HTTPConnection

from threadline.core.errors import Problem
from threadline.streams.hub import StreamHub
from threadline.streams.sse import EventStreamResponse


async def stream_hub(connection: HTTPConnection) -> StreamHub:
    hub: StreamHub = connection.app.state.streams
    return hub


Hub = Annotated[StreamHub, Depends(stream_hub)]


async def last_event_id(
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Resume after this event (an EventSource sends it when it reconnects)",
            max_length=1024,
        ),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            description="Resume after this event, for clients that cannot set headers; the header wins when "
            "both are sent",
            max_length=1024,
        ),
    ] = None,
) -> str | None:
    return last_event_id_header or last_event_id_query or None


def open_stream(hub: StreamHub, client: str, body: AsyncIterator[bytes]) -> EventStreamResponse:
    """The response carrying `body`, counted against `client`'s open streams (429 beyond the limit)."""
    if hub.closing:
        raise Problem("the server is shutting down; reconnect shortly", status=503, type_slug="shutting-down")
    hub.acquire(client)
    return EventStreamResponse(body, release=functools.partial(hub.release, client))
