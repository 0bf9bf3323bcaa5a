"""Idempotency-Key on POST app-conversations, stream-start, send-message and POST sandboxes.

Starts run without an agent runtime (runtime_dir points nowhere): a start makes its sandbox record,
which ends in ERROR at once; enough to count what was started.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer, wait_for
from threadline.core.errors import Problem
from threadline.idempotency.tables import idempotency_keys

API = "/api/v1/app-conversations"
SANDBOXES = "/api/v1/sandboxes"
IN_FLIGHT = "https://threadline.dev/problems/idempotency-key-in-flight"
REUSED = "https://threadline.dev/problems/idempotency-key-reused"


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


def _counts(client: httpx.Client) -> tuple[int, int]:
    """(start tasks, sandbox records) of the client's user."""
    tasks = client.get(f"{API}/start-tasks/count").json()
    sandboxes = len(client.get(f"{SANDBOXES}/search").json()["items"])
    return tasks, sandboxes


def _settled(client: httpx.Client, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task = client.get(f"{API}/start-tasks", params={"ids": [task_id]}).json()[0]
        return task if task["status"] in ("READY", "ERROR") else None

    result: dict[str, Any] = wait_for(done, timeout=30, what="start task to end")
    return result


def _together(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """Run n calls at once from n threads (released together by a barrier)."""
    barrier = threading.Barrier(n)

    def go(i: int) -> httpx.Response:
        barrier.wait(10)
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def _is_problem(r: httpx.Response, status: int, type_: str) -> bool:
    return (
        r.status_code == status
        and r.headers["content-type"].startswith("application/problem+json")
        and r.json()["type"] == type_
    )


@pytest.fixture
def clients(starter: Callable[..., LiveServer]) -> Iterator[tuple[LiveServer, httpx.Client]]:
    server = starter()
    _, key = server.user("alice")
    with server.client(key) as client:
        yield server, client


def test_ten_concurrent_retries_start_once(clients: tuple[LiveServer, httpx.Client]) -> None:
    server, client = clients
    key = client.headers["X-Access-Token"]
    headers = _key()
    body = {"title": "once", "tags": {"team": "core"}}
    thread_clients = [server.client(key) for _ in range(10)]
    try:
        answers = _together(10, lambda i: thread_clients[i].post(API, json=body, headers=headers))
    finally:
        for c in thread_clients:
            c.close()
    ok = [r for r in answers if r.status_code == 200]
    assert ok, [r.text for r in answers]
    assert all(r.status_code == 200 or _is_problem(r, 409, IN_FLIGHT) for r in answers), [r.text for r in answers]
    assert len({r.content for r in ok}) == 1  # byte for byte the same answer
    original = ok[0]
    _settled(client, original.json()["id"])
    assert _counts(client) == (1, 1)
    for _ in range(3):
        replay = client.post(API, json=body, headers=headers)
        assert replay.status_code == 200 and replay.content == original.content
        assert replay.headers["Idempotent-Replayed"] == "true"
    assert _counts(client) == (1, 1)


def test_reuse_with_another_request_is_422(clients: tuple[LiveServer, httpx.Client]) -> None:
    _, client = clients
    headers = _key()
    first = client.post(API, json={"title": "a"}, headers=headers)
    assert first.status_code == 200
    for method, path, body in [
        ("POST", API, {"title": "b"}),  # another body
        ("POST", API, {"title": "a", "tags": {"x": "y"}}),
        ("POST", f"{API}/stream-start", {"title": "a"}),  # another operation
        ("POST", SANDBOXES, None),
    ]:
        r = client.request(method, path, json=body, headers=headers)
        assert _is_problem(r, 422, REUSED), (path, body, r.text)
    # The same request with keys in another order and other spacing is the same request.
    same = client.post(
        API, content=json.dumps({"title": "a"}, indent=2), headers={**headers, "content-type": "application/json"}
    )
    assert same.status_code == 200 and same.content == first.content
    _settled(client, first.json()["id"])
    assert _counts(client) == (1, 1)


def test_key_format(clients: tuple[LiveServer, httpx.Client]) -> None:
    _, client = clients
    for bad in ("", "k" * 256):
        r = client.post(SANDBOXES, headers={"Idempotency-Key": bad})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), bad
    assert _counts(client) == (0, 0)
    longest = {"Idempotency-Key": "k" * 255}
    first = client.post(SANDBOXES, headers=longest)
    assert first.status_code == 200
    assert client.post(SANDBOXES, headers=longest).content == first.content
    # Without a key every request is new.
    assert client.post(SANDBOXES).json()["id"] != client.post(SANDBOXES).json()["id"]
    assert _counts(client) == (0, 3)


def test_sandbox_create_replays(clients: tuple[LiveServer, httpx.Client]) -> None:
    _, client = clients
    headers = _key()
    first = client.post(SANDBOXES, headers=headers)
    assert first.status_code == 200
    again = client.post(SANDBOXES, headers=headers)
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    # A query parameter is part of the request.
    assert _is_problem(client.post(SANDBOXES, params={"sandbox_spec_id": "bwrap"}, headers=headers), 422, REUSED)
    assert _counts(client) == (0, 1)


def test_keys_are_per_user(starter: Callable[..., LiveServer]) -> None:
    server = starter()
    _, alice_key = server.user("alice")
    _, bob_key = server.user("bob")
    headers = _key()
    with server.client(alice_key) as alice, server.client(bob_key) as bob:
        a = alice.post(API, json={"title": "t"}, headers=headers)
        b = bob.post(API, json={"title": "t"}, headers=headers)
        assert a.status_code == b.status_code == 200
        assert a.json()["id"] != b.json()["id"]
        assert bob.post(API, json={"title": "t"}, headers=headers).content == b.content
        _settled(alice, a.json()["id"])
        _settled(bob, b.json()["id"])
        assert _counts(alice) == (1, 1) and _counts(bob) == (1, 1)


def test_two_processes_racing_one_key_start_once(starter: Callable[..., LiveServer]) -> None:
    first = starter()
    second = starter()  # a second Threadline on the same database
    _, key = first.user("alice")
    headers = _key()
    body = {"title": "raced"}
    thread_clients = [(first if i % 2 else second).client(key) for i in range(10)]
    try:
        answers = _together(10, lambda i: thread_clients[i].post(API, json=body, headers=headers))
    finally:
        for c in thread_clients:
            c.close()
    ok = [r for r in answers if r.status_code == 200]
    assert ok and all(r.status_code == 200 or _is_problem(r, 409, IN_FLIGHT) for r in answers)
    assert len({r.content for r in ok}) == 1
    with first.client(key) as a, second.client(key) as b:
        _settled(a, ok[0].json()["id"])
        assert _counts(a) == (1, 1)
        assert a.post(API, json=body, headers=headers).content == ok[0].content
        assert b.post(API, json=body, headers=headers).content == ok[0].content


def test_expired_key_can_be_reused_and_is_purged(starter: Callable[..., LiveServer]) -> None:
    server = starter(idempotency_ttl_seconds=1.0)
    _, key = server.user("alice")
    headers = _key()
    with server.client(key) as client:
        assert client.post(SANDBOXES, headers=headers).status_code == 200
        assert _is_problem(client.post(SANDBOXES, params={"sandbox_spec_id": "bwrap"}, headers=headers), 422, REUSED)
        # Once expired, the key takes a new request (polling: the TTL is 1 s).
        reused = wait_for(
            lambda: (
                (r := client.post(SANDBOXES, params={"sandbox_spec_id": "bwrap"}, headers=headers)).status_code == 200
                and r
            ),
            timeout=10,
            what="the key to expire",
        )
        assert "Idempotent-Replayed" not in reused.headers
        assert _counts(client) == (0, 2)

        # A key nobody uses again is purged by later requests with other keys.
        forgotten = _key()
        assert client.post(SANDBOXES, headers=forgotten).status_code == 200

        def stored_keys() -> set[str]:
            async def read() -> set[str]:
                async with server.ctx.db.read() as conn:
                    return {r.key for r in (await conn.execute(select(idempotency_keys.c.key))).all()}

            return server.run(read())

        assert forgotten["Idempotency-Key"] in stored_keys()
        wait_for(
            lambda: (
                client.post(SANDBOXES, headers=_key()).status_code == 200
                and forgotten["Idempotency-Key"] not in stored_keys()
            ),
            timeout=10,
            what="the expired key to be purged",
        )


def test_4xx_is_kept_5xx_and_errors_release_the_key(clients: tuple[LiveServer, httpx.Client]) -> None:
    server, client = clients
    # A 4xx from the handler (too many tags is checked by the start itself) is the stored answer.
    headers = _key()
    too_many = {"tags": {f"k{i}": "v" for i in range(51)}}
    first = client.post(API, json=too_many, headers=headers)
    assert first.status_code == 422 and first.headers["content-type"].startswith("application/problem+json")
    again = client.post(API, json=too_many, headers=headers)
    assert again.status_code == 422 and again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["content-type"].startswith("application/problem+json")

    # A 5xx or an unexpected exception frees the key: the retry runs.
    starts = server.app.state.starts
    original = starts.begin
    failures: list[BaseException] = [Problem("agent trouble", status=503), RuntimeError("boom")]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await original(*args, **kwargs)

    starts.begin = flaky
    try:
        headers = _key()
        assert client.post(API, json={"title": "x"}, headers=headers).status_code == 503
        # uvicorn closes the connection after an unhandled exception: use one of its own.
        with server.client(client.headers["X-Access-Token"]) as fresh:
            assert fresh.post(API, json={"title": "x"}, headers=headers).status_code == 500
        ok = client.post(API, json={"title": "x"}, headers=headers)
        assert ok.status_code == 200 and "Idempotent-Replayed" not in ok.headers
        assert client.post(API, json={"title": "x"}, headers=headers).content == ok.content
    finally:
        starts.begin = original
    _settled(client, ok.json()["id"])
    assert _counts(client) == (1, 1)


def _stream(client: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return client.post(f"{API}/stream-start", json=body, headers=headers)


def test_stream_start_replay_streams_the_same_task(clients: tuple[LiveServer, httpx.Client]) -> None:
    _, client = clients
    headers = _key()
    first = _stream(client, {"title": "s"}, headers)
    assert first.status_code == 200, first.text
    tasks = first.json()
    assert tasks[-1]["status"] == "ERROR" and len({t["id"] for t in tasks}) == 1
    replay = _stream(client, {"title": "s"}, headers)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    replayed = replay.json()
    # Streamed from where the task is now (ended): the same task, no new one.
    assert [t["id"] for t in replayed] == [tasks[0]["id"]] and replayed[-1] == tasks[-1]
    assert _counts(client) == (1, 1)
    assert _is_problem(_stream(client, {"title": "other"}, headers), 422, REUSED)


@pytest.mark.agent
def test_send_message_reaches_the_agent_once(agent_server_factory: Callable[..., LiveServer]) -> None:
    """Retries of one send-message, sequential and concurrent, put exactly one message into the agent."""
    from tests.test_agent_e2e import conversation, start_and_wait

    server = agent_server_factory()
    _, key = server.user("alice")
    client = server.client(key)
    task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "first"}]}})
    assert task["status"] == "READY", task["detail"]
    conv_id = task["app_conversation_id"]
    wait_for(lambda: conversation(client, conv_id)["execution_status"] == "finished", timeout=90, what="finished")
    path = f"{API}/{conv_id}/send-message"
    body = {"content": [{"type": "text", "text": "exactly once"}]}
    headers = _key()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: client.post(path, json=body, headers=headers), range(5)))
    answers += [client.post(path, json=body, headers=headers) for _ in range(3)]
    assert {a.status_code for a in answers} <= {200, 409}
    originals = [a for a in answers if a.status_code == 200]
    assert originals and all(a.content == originals[0].content for a in originals)
    assert client.post(path, json={**body, "run": False}, headers=headers).status_code == 422

    def user_messages() -> list[str]:
        conv = conversation(client, conv_id)
        r = httpx.get(
            f"{conv['conversation_url']}/events/search",
            params={"kind": "MessageEvent", "limit": 100},
            headers={"X-Session-API-Key": conv["session_api_key"]},
        )
        texts = []
        for event in r.json()["items"]:
            if event.get("source") == "user":
                texts.extend(c.get("text", "") for c in event["llm_message"]["content"])
        return texts

    wait_for(lambda: conversation(client, conv_id)["execution_status"] == "finished", timeout=90, what="finished")
    assert user_messages() == ["first", "exactly once"]


def test_a_claim_left_by_a_dead_process_frees_its_key(clients: tuple[LiveServer, httpx.Client]) -> None:
    """An in-flight record whose process died (never finished) holds its key only for the lock time."""
    server, client = clients
    user_id = client.get("/api/v1/users/me").json()["id"]
    now = dt.datetime.now(dt.UTC)
    service = server.app.state.idempotency

    def abandon(key: str, expires_at: dt.datetime) -> None:
        async def insert() -> None:
            async with server.ctx.db.write() as conn:
                await conn.execute(
                    idempotency_keys.insert().values(
                        user_id=user_id,
                        key=key,
                        operation=f"POST {SANDBOXES}",
                        request_hash=service.fingerprint({"params": {"path": {}, "query": []}, "body": None}),
                        state="in_flight",
                        created_at=now - dt.timedelta(minutes=10),
                        expires_at=expires_at,
                    )
                )

        server.run(insert())

    abandon("held", now + dt.timedelta(minutes=5))
    assert _is_problem(client.post(SANDBOXES, headers={"Idempotency-Key": "held"}), 409, IN_FLIGHT)
    abandon("dead", now - dt.timedelta(seconds=1))
    assert client.post(SANDBOXES, headers={"Idempotency-Key": "dead"}).status_code == 200
    assert _counts(client) == (0, 1)
