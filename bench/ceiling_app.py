"""The ceiling: a bare ASGI app (no framework, no database) served exactly as `threadline serve` serves
Threadline (uvicorn.run, one worker, same host, same log level), answering every request with the same
JSON bytes Threadline sent for one AppConversation.

    python bench/ceiling_app.py PORT BODY_FILE

It reads the request body (a PATCH carries one) before answering, as any real handler must.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def make_app(body: bytes) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: nothing to set up
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            if message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    body = Path(sys.argv[2]).read_bytes()
    # The same call `threadline serve` makes (src/threadline/cli/main.py): keep them in step.
    uvicorn.run(make_app(body), host="127.0.0.1", port=port, log_level="info")


if __name__ == "__main__":
    main()
