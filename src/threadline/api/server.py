"""uvicorn's server, ending Threadline's event streams first when it shuts down.

uvicorn waits for the requests in flight (up to its graceful-shutdown timeout) before it runs the app's
lifespan shutdown; an event stream never finishes by itself, so without this every open stream would hold
the shutdown for the whole timeout. Ending them first lets each close its response cleanly at once.
"""

from __future__ import annotations

import socket

import uvicorn

from threadline.streams.hub import StreamHub


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        hub: StreamHub | None = getattr(state, "streams", None)
        if hub is not None:
            hub.close()
        await super().shutdown(sockets)
