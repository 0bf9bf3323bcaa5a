"""Per-user cap on STARTING/RUNNING sandboxes: 429 with `limit` and `current`, nothing paused to make room.

Sandboxes here run real agent servers; STARTING counts against the cap as much as RUNNING.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for

API = "/api/v1/app-conversations"
SANDBOXES = "/api/v1/sandboxes"
LIMIT = "https://threadline.dev/problems/sandbox-limit-reached"


@pytest.fixture
def capped(server_factory: Callable[..., LiveServer], agent_runtime: Path) -> Callable[..., LiveServer]:
    # Real agent servers: a sandbox counts against the cap while STARTING as much as when RUNNING.
    def make(cap: int = 2, **overrides: Any) -> LiveServer:
        values: dict[str, Any] = {
            "runtime_dir": agent_runtime,
            "llm_model": "openai/x",
            "max_running_sandboxes_per_user": cap,
            "sandbox_stop_grace_seconds": 2.0,
        }
        values.update(overrides)
        return server_factory(**values)

    return make


def _statuses(client: httpx.Client) -> dict[str, str]:
    return {s["id"]: s["status"] for s in client.get(f"{SANDBOXES}/search").json()["items"]}


def _live(client: httpx.Client) -> dict[str, str]:
    """Statuses, with STARTING and RUNNING both read as "live" (a real agent server may finish starting)."""
    return {i: "live" if s in ("STARTING", "RUNNING") else s for i, s in _statuses(client).items()}


def _assert_cap(r: httpx.Response, limit: int, current: int) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == LIMIT and body["limit"] == limit and body["current"] == current, body


def test_cap_on_create_and_resume(capped: Callable[..., LiveServer]) -> None:
    server = capped(cap=2)
    _, key = server.user("alice")
    _, bob_key = server.user("bob")
    with server.client(key) as client:
        first, second = (client.post(SANDBOXES).json() for _ in range(2))
        assert first["status"] == second["status"] == "STARTING"
        _assert_cap(client.post(SANDBOXES), 2, 2)
        # Nothing was created, and nothing was paused to make room.
        assert _live(client) == {first["id"]: "live", second["id"]: "live"}
        with server.client(bob_key) as bob:
            assert bob.post(SANDBOXES).status_code == 200  # the cap is per user

        # PAUSED does not count; resuming it when the cap is full is refused the same way.
        assert client.post(f"{SANDBOXES}/{first['id']}/pause").status_code == 200
        third = client.post(SANDBOXES).json()
        assert third["status"] == "STARTING"
        _assert_cap(client.post(f"{SANDBOXES}/{first['id']}/resume"), 2, 2)
        assert _statuses(client)[first["id"]] == "PAUSED"
        # Resuming what is already live needs no slot.
        assert client.post(f"{SANDBOXES}/{second['id']}/resume").status_code == 200
        assert client.delete(f"{SANDBOXES}/{third['id']}").status_code == 200
        assert client.post(f"{SANDBOXES}/{first['id']}/resume").status_code == 200
        assert _live(client) == {first["id"]: "live", second["id"]: "live"}


def test_concurrent_creates_never_pass_the_cap(capped: Callable[..., LiveServer]) -> None:
    server = capped(cap=2)
    _, key = server.user("alice")
    n = 8
    clients = [server.client(key) for _ in range(n)]
    barrier = threading.Barrier(n)

    def create(i: int) -> httpx.Response:
        barrier.wait(10)
        return clients[i].post(SANDBOXES)

    try:
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(create, range(n)))
    finally:
        for c in clients:
            c.close()
    assert sorted(r.status_code for r in answers) == [200] * 2 + [429] * (n - 2), [r.text for r in answers]
    for r in answers:
        if r.status_code == 429:
            _assert_cap(r, 2, 2)
    with server.client(key) as client:
        assert sorted(_live(client).values()) == ["live", "live"]


def test_start_beyond_the_cap_is_429_at_once(capped: Callable[..., LiveServer]) -> None:
    server = capped(cap=1)
    user, key = server.user("alice")
    with server.client(key) as client:
        live = client.post(SANDBOXES).json()
        for path in (API, f"{API}/stream-start"):
            _assert_cap(client.post(path, json={"title": "one too many"}), 1, 1)
        assert client.get(f"{API}/start-tasks/count").json() == 0  # no task that would end in ERROR

        # A start in a live sandbox, or under a parent that has one, needs no new slot.
        first = client.post(API, json={"sandbox_id": live["id"]})
        assert first.status_code == 200
        parent = server.conversation(user.id, sandbox_id=live["id"])
        second = client.post(API, json={"parent_conversation_id": parent["id"]})
        assert second.status_code == 200
        # Let both finish: a start still waiting for the sandbox would resume it once it is paused below.
        ids = [first.json()["id"], second.json()["id"]]
        wait_for(
            lambda: all(
                t["status"] in ("READY", "ERROR") for t in client.get(f"{API}/start-tasks", params={"ids": ids}).json()
            ),
            timeout=180,
            what="the two starts in the live sandbox to finish",
        )

        # A start that would resume a paused sandbox needs one.
        assert client.post(f"{SANDBOXES}/{live['id']}/pause").status_code == 200
        other = client.post(SANDBOXES).json()
        _assert_cap(client.post(API, json={"sandbox_id": live["id"]}), 1, 1)
        assert client.post(API, json={"sandbox_id": other["id"]}).status_code == 200
        assert client.get(f"{API}/start-tasks/count").json() == 3


def test_a_refused_start_does_not_use_up_its_idempotency_key(capped: Callable[..., LiveServer]) -> None:
    server = capped(cap=1)
    _, key = server.user("alice")
    headers = {"Idempotency-Key": "retry-me"}
    with server.client(key) as client:
        live = client.post(SANDBOXES).json()
        _assert_cap(client.post(SANDBOXES, headers=headers), 1, 1)
        assert client.delete(f"{SANDBOXES}/{live['id']}").status_code == 200
        created = client.post(SANDBOXES, headers=headers)
        assert created.status_code == 200 and "Idempotent-Replayed" not in created.headers
        assert client.post(SANDBOXES, headers=headers).content == created.content


def test_no_cap(capped: Callable[..., LiveServer]) -> None:
    server = capped(cap=0)
    _, key = server.user("alice")
    with server.client(key) as client:
        assert all(client.post(SANDBOXES).status_code == 200 for _ in range(3))
