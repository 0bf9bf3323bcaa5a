"""`/agent-server/{sandbox_id}/...`: clients reach an isolated sandbox's agent server through Threadline.

An isolated agent server has no address outside its sandbox. A sandbox's `exposed_urls` and a
conversation's `conversation_url` point here; every HTTP method and WebSocket under the prefix is passed
on, streamed both ways. The caller must present the sandbox's own session key (`X-Session-API-Key`, or
`session_api_key` in the query as WebSocket clients do), checked here before anything reaches the
sandbox; an unknown sandbox and a wrong key answer the same 401. Only the agent server's own liveness
probes (`GET /alive`, `GET /health`), which it answers without a key too, need none here: the OpenHands
SDK's cloud workspace probes `/health` that way before it uses a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect

from threadline.core.errors import Problem
from threadline.core.ids import MalformedId, parse_id
from threadline.sandboxes.isolated import IsolatedBackend
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus

router = APIRouter(include_in_schema=False)
PREFIX = "/agent-server/{sandbox_id}"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
# Paths the agent server serves without a session key, and so does the proxy (they say only "alive").
_PROBES = {"alive", "health"}
_TIMEOUT = httpx.Timeout(connect=10.0, read=3600.0, write=60.0, pool=10.0)


class NotAuthorized(Problem):
    status = 401
    type_slug = "unauthorized"


async def _sandbox(
    sandboxes: SandboxService, sandbox_id: str, key: str | None, *, probe: bool = False
) -> SandboxRecord:
    try:
        wanted = parse_id(sandbox_id)
    except MalformedId:
        wanted = None
    row = await sandboxes.by_session_key(key) if key else None
    if probe and key is None and wanted is not None:
        row = (await sandboxes.records_by_id([wanted])).get(wanted)
    if row is None or wanted is None or row.id != wanted:
        raise NotAuthorized("this sandbox's session key is required (X-Session-API-Key)")
    status = sandboxes.effective_status(row)
    if status is not SandboxStatus.RUNNING:
        raise Problem(f"sandbox {row.id} is {status.value}", status=409, type_slug="sandbox-not-running")
    return row


def _service(app: Any) -> SandboxService:
    service: SandboxService = app.state.sandboxes
    return service


@router.api_route(PREFIX + "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def forward(sandbox_id: str, path: str, request: Request) -> StreamingResponse:
    sandboxes = _service(request.app)
    key = request.headers.get("x-session-api-key") or request.query_params.get("session_api_key")
    probe = request.method in ("GET", "HEAD") and path.strip("/") in _PROBES
    row = await _sandbox(sandboxes, sandbox_id, key, probe=probe)
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    url = httpx.URL(f"{row.url}/{path}", query=request.url.query.encode())
    upstream_request = sandboxes.http.build_request(
        request.method, url, headers=headers, content=request.stream(), timeout=_TIMEOUT
    )
    try:
        upstream = await sandboxes.http.send(upstream_request, stream=True)
    except httpx.TransportError as exc:
        raise Problem(f"the agent server of sandbox {row.id} did not answer: {exc}", status=502) from exc
    response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=response_headers,
        background=BackgroundTask(upstream.aclose),
    )


@router.websocket(PREFIX + "/{path:path}")
async def forward_websocket(websocket: WebSocket, sandbox_id: str, path: str) -> None:
    sandboxes = _service(websocket.app)
    key = websocket.headers.get("x-session-api-key") or websocket.query_params.get("session_api_key")
    try:
        row = await _sandbox(sandboxes, sandbox_id, key)
    except Problem:
        await websocket.close(code=1008)
        return
    query = websocket.url.query
    target = f"{(row.url or '').replace('http://', 'ws://', 1)}/{path}" + (f"?{query}" if query else "")
    headers = {"X-Session-API-Key": key or ""}
    backend = sandboxes.backend
    try:
        if isinstance(backend, IsolatedBackend):
            socket_path = backend.agent_sockets.get(row.id)
            if socket_path is None:
                await websocket.close(code=1011)
                return
            upstream = await websockets.unix_connect(str(socket_path), target, additional_headers=headers)
        else:
            upstream = await websockets.connect(target, additional_headers=headers)
    except (OSError, websockets.WebSocketException):
        await websocket.close(code=1011)
        return
    await websocket.accept()

    async def client_to_agent() -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
        except (WebSocketDisconnect, websockets.ConnectionClosed):
            return

    async def agent_to_client() -> None:
        try:
            async for message in upstream:
                if isinstance(message, str):
                    await websocket.send_text(message)
                else:
                    await websocket.send_bytes(message)
        except (WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError):
            return

    tasks = [asyncio.create_task(client_to_agent()), asyncio.create_task(agent_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()
