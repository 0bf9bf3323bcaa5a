"""uvicorn's server, ending Threadline's event streams first when it shuts down.

uvicorn waits for the requests in flight (up to its graceful-shutdown timeout) before it runs the app's
lifespan shutdown; an event stream never finishes by itself, so without this every open stream would hold
the shutdown for the whole timeout. Ending them first lets each close its response cleanly at once.
"""

from __future__ import annotations

import socket

import uvicorn

from threadline.streams.hub import StreamHub


def _end_streams(app: object) -> None:
    hub: StreamHub | None = getattr(getattr(app, "state", None), "streams", None)
    if hub is not None:
        hub.close()


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        _end_streams(self.config.app)
        await super().shutdown(sockets)


def end_streams_first_in_this_process(app: object) -> None:
    """For a worker of `threadline serve --workers N`: uvicorn's supervisor makes each worker's server itself
    (plain `uvicorn.Server`), so its shutdown is wrapped here, in the worker's own process, to end the app's
    event streams first as `Server` does."""
    original = uvicorn.Server.shutdown

    async def shutdown(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        _end_streams(app)
        await original(self, sockets)

    uvicorn.Server.shutdown = shutdown  # type: ignore[method-assign]
