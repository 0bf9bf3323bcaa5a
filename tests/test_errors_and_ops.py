"""One error shape everywhere; body limit; operational endpoints."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import httpx

from tests.conftest import LiveServer

API = "/api/v1/app-conversations"


def _is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    return body


def test_body_over_1_mib_is_413(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id)
    big = {"title": "x" * (1024 * 1024 + 10)}
    _is_problem(client.patch(f"{API}/{conv['id']}", json=big), 413)

    def chunks() -> Any:
        for _ in range(40):
            yield b"a" * 32 * 1024  # streamed, no Content-Length

    r = client.patch(f"{API}/{conv['id']}", content=chunks(), headers={"content-type": "application/json"})
    _is_problem(r, 413)
    assert client.get(f"{API}/{conv['id']}").json()["title"] is None


def test_unknown_route_and_method(alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    _is_problem(client.get("/api/v1/nope"), 404)
    _is_problem(client.put(f"{API}/{uuid.uuid4().hex}", json={}), 405)


def test_ops_endpoints(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/alive").status_code == 200
        assert client.get("/health").json() == "OK"
        assert client.get("/ready").json() == "OK"
        info = client.get("/server_info").json()
        assert info["name"] == "threadline" and info["database"] in ("sqlite", "postgresql")
        spec = client.get("/openapi.json").json()
        assert "/api/v1/app-conversations/{conversation_id}" in spec["paths"]


def test_ready_fails_cleanly_when_the_database_is_gone(server: LiveServer) -> None:
    server.run(server.ctx.db.dispose())
    original = server.ctx.db.engine

    from sqlalchemy.ext.asyncio import create_async_engine

    broken = (
        "sqlite+aiosqlite:////nonexistent-dir/x.db"
        if server.ctx.db.is_sqlite
        else ("postgresql+asyncpg://127.0.0.1:1/none")
    )
    server.ctx.db.engine = create_async_engine(broken)
    try:
        with server.client() as client:
            _is_problem(client.get("/ready"), 503)
    finally:
        server.ctx.db.engine = original


def _raw_exchange(server: LiveServer, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the answer to the end."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return status_line, headers, body


def test_a_request_the_http_parser_refuses_is_a_problem_and_the_server_goes_on(server: LiveServer) -> None:
    """A method the HTTP parser does not know, a broken request line, a header with a control character: 400
    problem+json (not the HTTP server's own text/plain answer), the connection closed, and nothing else hurt."""
    for request in (
        b"BREW /api/v1/app-conversations/search HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /alive HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /alive HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
    ):
        status_line, headers, body = _raw_exchange(server, request)
        assert status_line.startswith("HTTP/1.1 400"), (request, status_line)
        assert headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
        problem = json.loads(body)
        assert problem["status"] == 400 and problem["type"].endswith("/bad-http-request"), problem
        assert "could not be parsed" in problem["detail"]
    assert httpx.get(f"{server.base_url}/alive").status_code == 200
