"""Graceful shutdown of a real `threadline serve` process (issue 7, point 3).

SIGTERM: the listening socket closes at once (new connections are refused), requests in flight finish and
are answered, the process exits; a request that outlasts THREADLINE_SHUTDOWN_GRACE_SECONDS is cut off
without a half-applied write. Sandboxes are stopped (recorded PAUSED), or kept running and re-attached by
the next start when THREADLINE_STOP_SANDBOXES_ON_SHUTDOWN=false.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Database, wait_for
from tests.support.process_server import (
    ProcessServer,
    agent_settings,
    insert_conversations,
    recorded_sandbox_pid,
    sandbox_processes,
)

API = "/api/v1/app-conversations"


def _me(server: ProcessServer) -> str:
    with server.client(server.admin_key) as client:
        r = client.get("/api/v1/users/me")
        assert r.status_code == 200, r.text
        user_id: str = r.json()["id"]
        return user_id


def _patch_in_flight(server: ProcessServer, conversation_id: str, body: bytes) -> socket.socket:
    """Open a PATCH that the app is handling: headers sent, the body not yet. `Expect: 100-continue` makes
    the server say when the app asks for the body, so we know the request is in flight, not just queued."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"PATCH {API}/{conversation_id} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"X-Access-Token: {server.admin_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    sock.sendall(head.encode())
    interim = sock.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        rest += chunk
    return status, headers, rest


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _title(server: ProcessServer, conversation_id: str) -> Any:
    with server.client(server.admin_key) as client:
        r = client.get(f"{API}/{conversation_id}")
        assert r.status_code == 200, r.text
        return r.json()["title"]


def test_sigterm_stops_accepting_and_finishes_requests_in_flight(
    process_server_factory: Callable[..., ProcessServer], database: Database
) -> None:
    server = process_server_factory(shutdown_grace_seconds=60)
    (cid,) = insert_conversations(database.url, database.schema, _me(server), 1, title="before")
    body = json.dumps({"title": "written during shutdown", "tags": {"phase": "shutdown"}}).encode()
    sock = _patch_in_flight(server, cid, body)
    try:
        server.signal(signal.SIGTERM)
        # Stop accepting: the port refuses new connections while the old request is still open.
        wait_for(lambda: _refuses_connections(server.port), timeout=20, what="the listening socket to close")
        assert server.proc is not None and server.proc.poll() is None, "exited with a request in flight"
        sock.sendall(body)
        status, _, payload = _read_response(sock)
        # Keep-alive ends with the shutdown: the server closes the connection after the answer.
        sock.settimeout(30)
        assert sock.recv(1) == b""
    finally:
        sock.close()
    assert status == 200, payload
    assert json.loads(payload)["title"] == "written during shutdown"
    _assert_clean_exit(server, server.wait(60))

    # The acknowledged write is there after a restart.
    restarted = process_server_factory()
    assert _title(restarted, cid) == "written during shutdown"


def test_a_request_outlasting_the_grace_is_cut_off_without_a_partial_write(
    process_server_factory: Callable[..., ProcessServer], database: Database
) -> None:
    grace = 2
    server = process_server_factory(shutdown_grace_seconds=grace)
    (cid,) = insert_conversations(database.url, database.schema, _me(server), 1, title="before")
    body = json.dumps({"title": "never finished"}).encode()
    sock = _patch_in_flight(server, cid, body)
    try:
        sent_at = time.monotonic()
        server.signal(signal.SIGTERM)
        # The client never sends its body: the server waits out the grace, then exits anyway.
        code = server.wait(grace + 60)
        waited = time.monotonic() - sent_at
        sock.settimeout(5)
        try:
            leftover = sock.recv(65536)
        except OSError:
            leftover = b""
    finally:
        sock.close()
    _assert_clean_exit(server, code)
    assert waited >= grace * 0.9, f"exited after {waited:.1f} s, before the {grace} s grace"
    assert not leftover.startswith(b"HTTP/1.1 200"), leftover
    restarted = process_server_factory()
    assert _title(restarted, cid) == "before"


@pytest.mark.agent
def test_sandboxes_are_kept_or_stopped_on_shutdown_as_configured(
    process_server_factory: Callable[..., ProcessServer], database: Database, agent_runtime: Path, fake_llm: Any
) -> None:
    agent = agent_settings(agent_runtime, fake_llm.base_url)
    keeper = process_server_factory(stop_sandboxes_on_shutdown="false", **agent)
    port = keeper.port  # agent servers call back to this port: restarts keep it
    with keeper.client(keeper.admin_key, timeout=60) as client:
        r = client.post(API, json={"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]

        def ready() -> Any:
            tasks = client.get(f"{API}/start-tasks", params={"ids": task_id}).json()
            assert tasks[0]["status"] != "ERROR", tasks[0]
            return tasks[0] if tasks[0]["status"] == "READY" else None

        task = wait_for(ready, timeout=180, what="the start to be READY")
        sandbox_id = task["sandbox_id"]
        conversation_id = task["app_conversation_id"]
        pid = recorded_sandbox_pid(database.url, database.schema, sandbox_id)
        assert pid is not None and _alive(pid)
    _assert_clean_exit(keeper, keeper.stop())
    assert _alive(pid), "THREADLINE_STOP_SANDBOXES_ON_SHUTDOWN=false, yet the agent server was stopped"

    # The next start re-attaches it at once (a clean stop released the lease): same process, RUNNING.
    stopper = process_server_factory(port=port, **agent)
    with stopper.client(stopper.admin_key, timeout=60) as client:
        sandbox = client.get("/api/v1/sandboxes", params={"id": sandbox_id}).json()[0]
        assert sandbox["status"] == "RUNNING", sandbox
        assert recorded_sandbox_pid(database.url, database.schema, sandbox_id) == pid
        r = client.get(f"{API}/{conversation_id}")
        assert r.status_code == 200 and r.json()["sandbox_status"] == "RUNNING", r.text
    # Default configuration: shutdown stops it, and records it PAUSED (resumable).
    _assert_clean_exit(stopper, stopper.stop())
    # Stopped means SIGKILLed at the latest; the kernel may still be tearing the process down for a moment.
    wait_for(lambda: not _alive(pid), timeout=10, what="the agent server to be gone after the shutdown")
    assert not sandbox_processes(stopper.env["THREADLINE_HOME"], sandbox_id), "a process of the sandbox outlived it"
    last = process_server_factory(port=port, **agent)
    with last.client(last.admin_key) as client:
        sandbox = client.get("/api/v1/sandboxes", params={"id": sandbox_id}).json()[0]
        assert sandbox["status"] == "PAUSED", sandbox


def _assert_clean_exit(server: ProcessServer, code: int) -> None:
    # uvicorn ends a SIGTERM'd process by re-raising the signal once shutdown is complete (as a process
    # without a handler would end), so the status is "killed by SIGTERM", after a complete shutdown.
    assert code in (0, -signal.SIGTERM), f"exit status {code}:\n{server.log_tail()}"
    assert "Application shutdown complete." in server.log_path.read_text(), server.log_tail()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent, Threadline, may not have reaped it).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"
