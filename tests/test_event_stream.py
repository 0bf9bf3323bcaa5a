"""Event streams (issue 12, point 1): GET .../events/stream, its public twin, and GET
/api/v1/app-conversations/stream, as Server-Sent Events over real HTTP, on SQLite and PostgreSQL.

Events are stored the way an agent server stores them: POSTs to the callback endpoint with the sandbox's
session key. Each stream is read by a thread of its own (a minimal SSE reader, independent of the SDK's);
the tests wait on what it has read with deadlines, never with sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import Database, LiveServer, wait_for
from tests.support.process_server import ProcessServer, insert_conversations, with_database
from tests.support.records import message_event, sandbox_values
from threadline.sandboxes.tables import sandboxes

API = "/api/v1/app-conversations"
HOOKS = "/api/v1/webhooks"
T0 = dt.datetime(2026, 12, 1, 9, 0, 0)
FAST = {"stream_poll_seconds": 0.2}


# -- a minimal SSE reader ---------------------------------------------------------------------------


@dataclass
class Message:
    event: str
    data: str
    id: str | None
    received: float

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Reader:
    """Reads one SSE response in a thread: messages, comments, and whether the server ended it."""

    base_url: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    content_type: str | None = None
    body: bytes = b""
    ended: bool = False
    error: BaseException | None = None
    _client: httpx.Client | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Reader:
        self._client = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=httpx.Timeout(60))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.status is not None or self.error is not None, 30, 0.01, "the stream's answer")
        return self

    def _run(self) -> None:
        assert self._client is not None
        try:
            with self._client.stream("GET", self.path) as response:
                # The status last: `start()` returns as soon as it is set, and a refusal's body must be read
                # by then (it was not, once, on a slow machine: `problem()` read an empty body).
                if response.status_code != 200:
                    self.body = response.read()
                self.content_type = response.headers.get("content-type")
                self.status = response.status_code
                if response.status_code != 200:
                    return
                event, data, last_id = "message", [], None
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            self.messages.append(Message(event, "\n".join(data), last_id, time.monotonic()))
                        event, data = "message", []
                    elif line.startswith(":"):
                        self.comments.append(line[1:].strip())
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            data.append(value)
                        elif name == "event":
                            event = value
                        elif name == "id":
                            last_id = value
            self.ended = True
        except BaseException as exc:
            self.error = exc

    def wait(self, count: int, timeout: float = 20) -> list[Message]:
        wait_for(lambda: len(self.messages) >= count or self.ended, timeout, 0.01, f"{count} messages")
        assert len(self.messages) >= count, (self.messages, self.ended)
        return self.messages

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._thread is not None:
            self._thread.join(10)

    def problem(self) -> dict[str, Any]:
        assert self.content_type == "application/problem+json", (self.status, self.content_type, self.body)
        problem: dict[str, Any] = json.loads(self.body)
        assert problem["status"] == self.status
        return problem


@pytest.fixture
def readers() -> Iterator[Callable[..., Reader]]:
    opened: list[Reader] = []

    def open_reader(base_url: str, path: str, key: str | None = None, **headers: str) -> Reader:
        if key:
            headers["X-Access-Token"] = key
        reader = Reader(base_url, path, headers)
        opened.append(reader)
        return reader.start()

    yield open_reader
    for reader in opened:
        reader.close()


# -- helpers ----------------------------------------------------------------------------------------


def _events_path(conversation_id: str) -> str:
    return f"/api/v1/conversation/{conversation_id}/events"


def _conversation(server: LiveServer, user_id: str, **fields: Any) -> tuple[str, str]:
    """A conversation in a (record-only) sandbox; returns (conversation id, the sandbox's session key)."""
    sandbox_id, session_key = server.sandbox(user_id)
    conv = server.conversation(user_id, sandbox_id=sandbox_id, **fields)
    return conv["id"], session_key


def _deliver(base_url: str, session_key: str, conversation_id: str, items: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=base_url, headers={"X-Session-API-Key": session_key}, timeout=30) as agent:
        r = agent.post(f"{HOOKS}/events/{conversation_id}", json=items)
        assert r.status_code == 200, r.text


def _messages(start: int, count: int) -> list[dict[str, Any]]:
    return [message_event(f"m{i}", T0 + dt.timedelta(seconds=i)) for i in range(start, start + count)]


def _searched(client: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    r = client.get(f"{_events_path(conversation_id)}/search", params={"limit": 100})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


# -- the owner's event stream -----------------------------------------------------------------------


def test_stored_events_first_then_live_ones_and_a_resume_misses_and_repeats_nothing(
    server_factory: Callable[..., LiveServer], readers: Callable[..., Reader]
) -> None:
    server = server_factory(**FAST)
    user, key = server.user("alice")
    cid, session = _conversation(server, user.id)
    _deliver(server.base_url, session, cid, _messages(0, 3))
    # Stored out of delivery order within a batch: the stream still follows the search's order.
    _deliver(server.base_url, session, cid, list(reversed(_messages(3, 2))))

    stream = readers(server.base_url, f"{_events_path(cid)}/stream", key)
    assert stream.status == 200 and stream.content_type is not None
    assert stream.content_type.startswith("text/event-stream")
    with server.client(key) as client:
        searched = _searched(client, cid)
    got = stream.wait(5)
    assert [m.json() for m in got] == searched
    assert [m.id for m in got] == [e["id"] for e in searched]
    assert all(m.event == "message" for m in got)

    # Live: each callback's events arrive as it is stored; latency from the callback's answer to the event.
    latencies = []
    for i in range(5, 25):
        (item,) = _messages(i, 1)
        _deliver(server.base_url, session, cid, [item])
        stored = time.monotonic()
        message = stream.wait(i + 1)[i]
        assert message.id == item["id"]
        latencies.append(max(0.0, message.received - stored))
    p50 = statistics.median(latencies)
    worst = max(latencies)
    print(f"\nevent stream latency, callback stored -> event read: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert p50 < 0.2, latencies

    # Disconnect; events stored meanwhile come on the resume, exactly once, then live ones again.
    last = stream.messages[-1].id
    assert last is not None
    stream.close()
    _deliver(server.base_url, session, cid, _messages(25, 3))
    resumed = readers(server.base_url, f"{_events_path(cid)}/stream", key, **{"Last-Event-ID": last})
    _deliver(server.base_url, session, cid, _messages(28, 1))
    with server.client(key) as client:
        searched = _searched(client, cid)
    got = resumed.wait(4)
    assert [m.id for m in got] == [e["id"] for e in searched[25:29]]
    # The query parameter does the same, for clients that cannot set headers.
    by_query = readers(server.base_url, f"{_events_path(cid)}/stream?last_event_id={searched[26]['id']}", key)
    assert [m.id for m in by_query.wait(2)] == [e["id"] for e in searched[27:29]]
    # Nothing more comes: no duplicate (the next event is a new one).
    _deliver(server.base_url, session, cid, _messages(29, 1))
    assert [m.id for m in by_query.wait(3)] == [e["id"] for e in _searched(server.client(key), cid)[27:30]]


def test_only_the_owner_may_stream_and_errors_are_problems(server: LiveServer, readers: Callable[..., Reader]) -> None:
    user, key = server.user("alice")
    _, other_key = server.user("bob")
    cid, session = _conversation(server, user.id)
    _deliver(server.base_url, session, cid, _messages(0, 1))
    path = f"{_events_path(cid)}/stream"

    anonymous = readers(server.base_url, path)
    assert anonymous.status == 401
    anonymous.problem()
    other = readers(server.base_url, path, other_key)
    assert other.status == 404
    other.problem()
    missing = readers(server.base_url, f"{_events_path(uuid.uuid4().hex)}/stream", key)
    assert missing.status == 404
    unknown = readers(server.base_url, path, key, **{"Last-Event-ID": "no-such-event"})
    assert unknown.status == 422
    assert unknown.problem()["errors"][0]["loc"] == ["header", "Last-Event-ID"]

    # Deleting the conversation ends its stream.
    stream = readers(server.base_url, path, key)
    stream.wait(1)
    with server.client(key) as client:
        assert client.delete(f"{API}/{cid}").status_code == 200
    wait_for(lambda: stream.ended, 20, 0.05, "the stream to end")


def test_public_stream_is_signed_out_only_while_public_and_withholds_private_state(
    server_factory: Callable[..., LiveServer], readers: Callable[..., Reader]
) -> None:
    server = server_factory(**FAST)
    user, key = server.user("alice")
    cid, session = _conversation(server, user.id, public=False)
    secret = "sk-do-not-share"
    private_state = {
        "id": str(uuid.uuid4()),
        "timestamp": T0.isoformat(),
        "source": "environment",
        "kind": "ConversationStateUpdateEvent",
        "key": "agent",
        "value": {"llm": {"api_key": secret}},
    }
    _deliver(server.base_url, session, cid, [private_state, *_messages(1, 1)])
    path = f"/api/v1/shared-conversations/{cid}/events/stream"

    assert readers(server.base_url, path).status == 404
    with server.client(key) as client:
        assert client.patch(f"{API}/{cid}", json={"public": True}).status_code == 200
    shared = readers(server.base_url, path)
    assert shared.status == 200
    got = shared.wait(2)
    assert got[0].id == private_state["id"] and got[0].json()["value"] is None
    assert secret not in "".join(m.data for m in got)
    assert got[1].json()["llm_message"] == _messages(1, 1)[0]["llm_message"]
    # The owner's stream has it all.
    owner = readers(server.base_url, f"{_events_path(cid)}/stream", key)
    assert owner.wait(2)[0].json()["value"] == private_state["value"]

    later = _messages(2, 1)
    _deliver(server.base_url, session, cid, later)
    assert shared.wait(3)[2].json()["id"] == later[0]["id"]
    # Private again: the open stream ends, a new one is a 404.
    with server.client(key) as client:
        assert client.patch(f"{API}/{cid}", json={"public": False}).status_code == 200
    wait_for(lambda: shared.ended, 20, 0.05, "the shared stream to end")
    assert readers(server.base_url, path).status == 404


def test_streams_per_user_are_bounded_and_heartbeats_keep_them_alive(
    server_factory: Callable[..., LiveServer], readers: Callable[..., Reader]
) -> None:
    server = server_factory(max_streams_per_user=2, stream_heartbeat_seconds=0.3)
    user, key = server.user("alice")
    _, other_key = server.user("bob")
    cid, _ = _conversation(server, user.id)
    path = f"{_events_path(cid)}/stream"
    first = readers(server.base_url, path, key)
    second = readers(server.base_url, f"{API}/stream", key)
    assert first.status == second.status == 200
    third = readers(server.base_url, path, key)
    assert third.status == 429
    assert third.problem()["limit"] == 2
    # Another user has streams of their own.
    assert readers(server.base_url, f"{API}/stream", other_key).status == 200

    wait_for(lambda: "keep-alive" in first.comments and "keep-alive" in second.comments, 10, 0.05, "heartbeats")
    first.close()
    wait_for(lambda: readers(server.base_url, path, key).status == 200, 10, 0.1, "a slot to free up")


def test_the_conversation_stream_sees_creates_updates_and_deletes(
    server_factory: Callable[..., LiveServer], readers: Callable[..., Reader]
) -> None:
    server = server_factory(**FAST)
    user, key = server.user("alice")
    _, other_key = server.user("bob")
    cid, session = _conversation(server, user.id, title="before")
    changes = readers(server.base_url, f"{API}/stream", key)
    others = readers(server.base_url, f"{API}/stream", other_key)
    assert changes.status == 200

    def seen(event: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        found = wait_for(
            lambda: [m.json() for m in changes.messages if m.event == event and match(m.json())], 20, 0.05, event
        )
        first: dict[str, Any] = found[0]
        return first

    # (Record-only sandboxes: the first look at one finds no agent server, a sandbox status change of its own.)
    created, _ = _conversation(server, user.id, title="new one")
    assert seen("created", lambda c: c["id"] == created)["title"] == "new one"

    with server.client(key) as client:
        r = client.patch(f"{API}/{cid}", json={"title": "after", "tags": {"k": "v"}})
        assert r.status_code == 200
        updated = seen("updated", lambda c: c["id"] == cid and c["title"] == "after")
        assert updated == client.get(f"{API}/{cid}").json()

        # A callback's execution status reaches it too.
        status = {
            "id": str(uuid.uuid4()),
            "timestamp": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(),
            "source": "environment",
            "kind": "ConversationStateUpdateEvent",
            "key": "execution_status",
            "value": "running",
        }
        version = int(updated["etag"].strip('"').split("-")[0])
        _deliver(server.base_url, session, cid, [status])
        seen("updated", lambda c: c["id"] == cid and int(c["etag"].strip('"').split("-")[0]) > version)

        assert client.delete(f"{API}/{created}").status_code == 200
        assert seen("deleted", lambda c: c["id"] == created) == {"id": created, "deleted": True}
    assert others.messages == []


# -- across processes ------------------------------------------------------------------------------


def _record(database: Database, user_id: str, secret: str) -> tuple[str, str]:
    """A sandbox record and a conversation in it, written straight to the database."""
    row, session_key = sandbox_values(user_id, secret)

    async def insert(db: Any) -> None:
        async with db.write() as conn:
            await conn.execute(sandboxes.insert().values(**row))

    with_database(database.url, database.schema, insert)
    (cid,) = insert_conversations(database.url, database.schema, user_id, 1, sandbox_id=row["id"])
    return cid, session_key


def test_an_event_stored_by_another_replica_reaches_the_stream(
    process_server_factory: Callable[..., ProcessServer], database: Database, readers: Callable[..., Reader]
) -> None:
    settings = {"stream_poll_seconds": 0.5, "runtime_dir": "/nonexistent/threadline-runtime"}
    a = process_server_factory(**settings)
    b = process_server_factory(**settings)
    key = a.admin_key
    assert key
    with a.client(key) as client:
        user_id = client.get("/api/v1/users/me").json()["id"]
    cid, session = _record(database, user_id, a.env["THREADLINE_SECRET_KEY"])
    stream = readers(a.base_url, f"{_events_path(cid)}/stream", key)
    changes = readers(a.base_url, f"{API}/stream", key)
    items = _messages(0, 2)
    _deliver(b.base_url, session, cid, items)
    assert [m.id for m in stream.wait(2)] == [e["id"] for e in items]
    with b.client(key) as client:
        assert client.patch(f"{API}/{cid}", json={"title": "from b"}).status_code == 200
    wait_for(lambda: any(m.json().get("title") == "from b" for m in changes.messages), 20, 0.05, "the change")


def test_shutdown_ends_open_streams_at_once(
    process_server_factory: Callable[..., ProcessServer], database: Database, readers: Callable[..., Reader]
) -> None:
    server = process_server_factory(runtime_dir="/nonexistent/threadline-runtime", shutdown_grace_seconds=60)
    key = server.admin_key
    assert key
    with server.client(key) as client:
        user_id = client.get("/api/v1/users/me").json()["id"]
    (cid,) = insert_conversations(database.url, database.schema, user_id, 1)
    streams = [readers(server.base_url, path, key) for path in (f"{_events_path(cid)}/stream", f"{API}/stream")]
    assert all(s.status == 200 for s in streams)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.wait(20)
    elapsed = time.monotonic() - started
    # uvicorn re-raises the SIGTERM once its shutdown is complete (see test_shutdown).
    assert code in (0, -signal.SIGTERM), server.log_tail()
    assert "Application shutdown complete." in server.log_path.read_text(), server.log_tail()
    wait_for(lambda: all(s.ended or s.error is not None for s in streams), 10, 0.05, "the streams to close")
    assert all(s.ended for s in streams), [s.error for s in streams]
    print(f"\nshutdown with 2 open streams: process exited in {elapsed:.2f} s")
    assert elapsed < 10


# -- the SDK and the CLI ---------------------------------------------------------------------------


def test_sdk_streams_events_and_reconnects_after_the_server_went_away(
    server_factory: Callable[..., LiveServer], database: Database
) -> None:
    from threadline.client import AsyncThreadline, Threadline
    from threadline.events.service import store_events

    server = server_factory(**FAST)
    user, key = server.user("alice")
    cid, session = _conversation(server, user.id)
    first = _messages(0, 2)
    _deliver(server.base_url, session, cid, first)

    # The async client: stored events, then a live one.
    async def read_async() -> list[str]:
        async with AsyncThreadline(server.base_url, key) as client:
            got: list[str] = []
            async for event in client.conversations.stream_events(cid):
                got.append(event["id"])
                if len(got) == 2:
                    threading.Thread(target=_deliver, args=(server.base_url, session, cid, _messages(2, 1))).start()
                if len(got) == 3:
                    return got
        raise AssertionError("the stream ended")

    got = asyncio.run(asyncio.wait_for(read_async(), 30))
    assert got[:2] == [e["id"] for e in first]

    # The sync client, across a restart of the server: what was stored while it was down comes once.
    received: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def read_sync() -> None:
        try:
            with Threadline(server.base_url, key, max_retries=8, backoff=0.2, max_backoff=1.0) as client:
                for event in client.conversations.stream_events(cid, last_event_id=got[2]):
                    received.append(event)
                    if len(received) == 3:
                        return
        except BaseException as exc:
            failures.append(exc)

    reader = threading.Thread(target=read_sync, daemon=True)
    reader.start()
    _deliver(server.base_url, session, cid, _messages(3, 1))
    wait_for(lambda: len(received) == 1 or failures, 20, 0.02, "the first live event")
    server.stop()  # type: ignore[attr-defined]
    while_down = _messages(4, 2)

    async def store(db: Any) -> None:
        async with db.write() as conn:
            await store_events(conn, conversation_id=cid, items=while_down)

    with_database(database.url, database.schema, store)
    server_factory(port=server.settings.port, **FAST)
    reader.join(60)
    assert not failures, failures
    assert [e["id"] for e in received[1:]] == [e["id"] for e in while_down]


def test_cli_follow_prints_events_as_they_are_stored(server_factory: Callable[..., LiveServer], tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    server = server_factory(**FAST)
    user, key = server.user("alice")
    cid, session = _conversation(server, user.id)
    stored = _messages(0, 2)
    _deliver(server.base_url, session, cid, stored)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(THREADLINE_URL=server.base_url, THREADLINE_API_KEY=key, THREADLINE_CONFIG=str(tmp_path / "none.json"))
    command = [sys.executable, "-c", "from threadline.cli.main import app; app()"]
    args = ["conversations", "events", cid, "--follow", "--json", "--timeout", "60"]
    proc = subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_for(lambda: len(lines) >= 2, 30, 0.02, "the stored events")
        later = _messages(2, 1)
        _deliver(server.base_url, session, cid, later)
        sent = time.monotonic()
        wait_for(lambda: len(lines) >= 3, 10, 0.02, "the live event")
        assert [json.loads(line)["id"] for _, line in lines] == [e["id"] for e in [*stored, *later]]
        assert lines[2][0] - sent < 2.0
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_streams_are_documented_in_the_openapi(tmp_path: Any) -> None:
    from threadline.api.app import create_app
    from threadline.config import Settings

    spec = create_app(Settings(home=tmp_path, secret_key="x")).openapi()
    for path in (
        "/api/v1/conversation/{conversation_id}/events/stream",
        "/api/v1/shared-conversations/{conversation_id}/events/stream",
        f"{API}/stream",
    ):
        responses = spec["paths"][path]["get"]["responses"]
        assert list(responses["200"]["content"]) == ["text/event-stream"], path
        assert "application/problem+json" in responses["429"]["content"], path
    resumable = spec["paths"]["/api/v1/conversation/{conversation_id}/events/stream"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in resumable} >= {("Last-Event-ID", "header"), ("last_event_id", "query")}
    # Registered before /{conversation_id}: "stream" is never taken for an id.
    paths = list(spec["paths"])
    assert paths.index(f"{API}/stream") < paths.index(f"{API}/{{conversation_id}}")
