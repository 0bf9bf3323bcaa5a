"""Pending messages (issue 15 B2): sent before a conversation is READY, delivered in order once it is,
at most 10 waiting, nothing lost across a restart. Over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from tests.test_agent_e2e import API, start_and_wait
from tests.test_wire_strictness import problem

PENDING = "/api/v1/conversations/{id}/pending-messages"


def message(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def test_queue_limits_and_ownership(server: LiveServer, alice: tuple[Any, httpx.Client], bob: Any) -> None:
    user, client = alice
    _, bob_client = bob
    sandbox_id, _ = server.sandbox(user.id, status="PAUSED")
    conv = server.conversation(user.id, sandbox_id=sandbox_id)["id"]
    url = PENDING.format(id=conv)
    for position in range(1, 11):
        r = client.post(url, json=message(f"m{position}"))
        assert r.status_code == 201, r.text
        assert r.json()["queued"] is True and r.json()["position"] == position and len(r.json()["id"]) == 32
    body = problem(client.post(url, json=message("one too many")), 429)
    assert body["limit"] == 10
    problem(bob_client.post(url, json=message("not yours")), 404)
    problem(client.post(PENDING.format(id="0" * 32), json=message("x")), 404)
    problem(client.post(PENDING.format(id="nope"), json=message("x")), 404)
    problem(client.post(url, json={"content": []}), 422)
    problem(client.post(url, json={"content": [{"type": "image", "image_urls": ["http://x/y.png"]}]}), 422)


def test_a_failed_start_takes_no_messages(starter: Any) -> None:
    server: LiveServer = starter()
    _, key = server.user("ann")
    client = server.client(key)
    task = start_and_wait(client, {"initial_message": message("x")}, timeout=60)
    assert task["status"] == "ERROR"
    problem(client.post(PENDING.format(id=task["id"]), json=message("too late")), 409)


def _user_texts(client: httpx.Client, conversation_id: str) -> list[str]:
    items = client.get(f"/api/v1/conversation/{conversation_id}/events/search", params={"limit": 100}).json()["items"]
    texts = []
    for event in items:
        llm = event.get("llm_message") or {}
        if event.get("source") == "user" and llm.get("role") == "user":
            texts.extend(c.get("text", "") for c in llm.get("content") or [])
    return texts


@pytest.mark.agent
def test_messages_sent_while_starting_arrive_in_order(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user("cleo")
    client = server.client(key)
    r = client.post(API, json={"initial_message": message("first")})
    task_id = r.json()["id"]
    answers = [client.post(PENDING.format(id=task_id), json=message(f"pending {i}")).json() for i in (1, 2, 3)]
    assert [a["position"] for a in answers if a["queued"]] == list(range(1, 1 + sum(a["queued"] for a in answers)))
    task = wait_for(
        lambda: (
            (t := client.get(f"{API}/start-tasks", params={"ids": [task_id]}).json()[0])["status"] in ("READY", "ERROR")
            and t
        ),
        timeout=120,
        what="READY",
    )
    assert task["status"] == "READY", task["detail"]
    cid = task["app_conversation_id"]
    wanted = ["first", "pending 1", "pending 2", "pending 3"]
    wait_for(
        lambda: _user_texts(client, cid)[: len(wanted)] == wanted,
        timeout=90,
        what="the pending messages delivered in order",
    )
    # Once READY a message to the conversation goes through at once.
    now = client.post(PENDING.format(id=cid), json=message("right away")).json()
    assert now["queued"] is False and now["position"] == 0
    wait_for(lambda: "right away" in _user_texts(client, cid), timeout=60, what="delivered at once")


@pytest.mark.agent
def test_pending_messages_survive_a_restart(agent_server_factory: Any) -> None:
    first: LiveServer = agent_server_factory()
    _, key = first.user("dora")
    client = first.client(key)
    task = start_and_wait(client, {"initial_message": message("hello")})
    assert task["status"] == "READY", task["detail"]
    cid, sid = task["app_conversation_id"], task["sandbox_id"]
    assert client.post(f"/api/v1/sandboxes/{sid}/pause").status_code == 200
    queued = client.post(PENDING.format(id=cid), json=message("after the restart")).json()
    assert queued["queued"] is True and queued["position"] == 1
    first.stop()  # type: ignore[attr-defined]

    second: LiveServer = agent_server_factory(instance_heartbeat_seconds=1.0)
    client = second.client(key)
    assert "after the restart" not in _user_texts(client, cid)
    assert client.post(f"/api/v1/sandboxes/{sid}/resume").status_code == 200
    wait_for(lambda: "after the restart" in _user_texts(client, cid), timeout=120, what="delivered after resume")


def test_concurrent_sends_get_consecutive_positions_and_the_limit_holds(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    user, client = alice
    sandbox_id, _ = server.sandbox(user.id, status="PAUSED")
    conv = server.conversation(user.id, sandbox_id=sandbox_id)["id"]
    url = f"{server.base_url}{PENDING.format(id=conv)}"
    headers = dict(client.headers)

    def send(i: int) -> httpx.Response:
        return httpx.post(url, json=message(f"m{i}"), headers=headers, timeout=30)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(send, range(14)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * 10 + [429] * 4, [r.text for r in answers if r.status_code not in (201, 429)]
    assert sorted(r.json()["position"] for r in answers if r.status_code == 201) == list(range(1, 11))
