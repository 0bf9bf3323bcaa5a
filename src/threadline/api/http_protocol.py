"""uvicorn's HTTP protocols, with the answer to a request the HTTP parser refuses (a malformed request line or
header, a method the parser does not know) as problem+json like every other error, instead of uvicorn's
text/plain 400. httptools (llhttp, C) when it is installed, h11 otherwise: as uvicorn's "auto" picks."""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from threadline.core.errors import PROBLEM_JSON


def problem_400(message: str) -> bytes:
    return json.dumps(
        {
            "type": "https://threadline.dev/problems/bad-http-request",
            "title": "Bad Request",
            "status": 400,
            "detail": f"the HTTP request could not be parsed: {message}",
        }
    ).encode()


def _response(body: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 400 Bad Request\r\n",
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        # Written out directly: h11's connection is in an error state after a parse error.
        self.transport.write(_response(problem_400(msg)))
        self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: h11
    _HttpTools: type[asyncio.Protocol] | None = None
else:

    class ProblemHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            self.transport.write(_response(problem_400(msg)))
            self.transport.close()

    _HttpTools = ProblemHttpToolsProtocol


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http` setting (module-level classes: the workers get it pickled)."""
    return _HttpTools or ProblemH11Protocol
