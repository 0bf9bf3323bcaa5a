"""Public sharing: read-only views of public conversations and their events, for anyone holding the id."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from threadline.events.service import store_events

API = "/api/v1/app-conversations"
SHARED = "/api/v1/shared-conversations"
T0 = dt.datetime(2026, 1, 1)

SHARED_FIELDS = {
    "id",
    "title",
    "selected_repository",
    "selected_branch",
    "git_provider",
    "trigger",
    "pr_number",
    "llm_model",
    "agent_kind",
    "metrics",
    "parent_conversation_id",
    "sub_conversation_ids",
    "execution_status",
    "created_at",
    "updated_at",
}
NEVER_SHARED = {
    "created_by_user_id",
    "user_id",
    "sandbox_id",
    "sandbox_status",
    "conversation_url",
    "session_api_key",
    "tags",
    "etag",
}
SECRET = "sk-live-do-not-share"


@pytest.fixture
def anonymous(server: LiveServer) -> httpx.Client:
    return server.client()


def _public(server: LiveServer, user_id: str, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "title": "Shared work",
        "public": True,
        "selected_repository": "acme/widgets",
        "selected_branch": "main",
        "git_provider": "github",
        "trigger": "gui",
        "pr_number": [3],
        "llm_model": "openai/gpt-5",
        "execution_status": "finished",
        "accumulated_cost": 0.25,
        "has_metrics": True,
        "sandbox_id": "sbx-" + uuid.uuid4().hex[:8],
        "tags": {"customer": "secret-customer"},
    }
    values.update(fields)
    return server.conversation(user_id, **values)


def _event(event_id: str, minutes: int, kind: str = "MessageEvent", **extra: Any) -> dict[str, Any]:
    at = T0 + dt.timedelta(minutes=minutes)
    return {"id": event_id, "kind": kind, "timestamp": at.isoformat(), "source": "agent", **extra}


def _store(server: LiveServer, conversation_id: str, items: list[dict[str, Any]]) -> None:
    async def run() -> int:
        async with server.ctx.db.write() as conn:
            return await store_events(conn, conversation_id=conversation_id, items=items)

    assert server.run(run()) == len(items)


def _events(conversation_id: str) -> list[dict[str, Any]]:
    state = {
        "id": conversation_id,
        "execution_status": "finished",
        "agent": {"llm": {"model": "openai/gpt-5", "api_key": SECRET, "base_url": "http://10.0.0.7:4000"}},
        "workspace": {"working_dir": "/srv/sandboxes/abc/workspace", "kind": "LocalWorkspace"},
        "secret_registry": {"secret_sources": {"GITHUB_TOKEN": {"value": SECRET}}},
        "tags": {"customer": "secret-customer"},
        "stats": {"usage_to_metrics": {}},
    }
    items = [
        _event("e00", 0, "ConversationStateUpdateEvent", key="full_state", value=state),
        _event("e01", 1, "ConversationStateUpdateEvent", key="agent", value=state["agent"]),
        _event("e02", 2, "ConversationStateUpdateEvent", key="execution_status", value="running"),
    ]
    items += [
        _event(f"e{i:02d}", i, llm_message={"role": "agent", "content": [{"text": f"m{i}"}]}) for i in range(3, 12)
    ]
    return items


def test_batch_get_needs_no_credentials_and_exposes_only_the_shared_view(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, _ = alice
    shared = _public(server, user.id)
    private = _public(server, user.id, public=False)
    unset = _public(server, user.id, public=None)
    missing = uuid.uuid4().hex
    ids = [shared["id"], private["id"], unset["id"], missing, str(uuid.UUID(shared["id"])), shared["id"]]
    r = anonymous.get(SHARED, params={"ids": ids})
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    got = r.json()
    assert [g["id"] if g else None for g in got] == [shared["id"], None, None, None, shared["id"], shared["id"]]
    view = got[0]
    assert set(view) == SHARED_FIELDS
    assert not NEVER_SHARED & set(view)
    assert user.id not in r.text and shared["sandbox_id"] not in r.text and "secret-customer" not in r.text
    for field in ("title", "selected_repository", "selected_branch", "git_provider", "trigger", "pr_number"):
        assert view[field] == shared[field], field
    assert view["execution_status"] == "finished"
    assert view["metrics"]["accumulated_cost"] == 0.25
    assert view["created_at"] == shared["created_at"] and view["updated_at"] == shared["updated_at"]


def test_credentials_change_nothing(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, alice_client = alice
    shared, private = _public(server, user.id), _public(server, user.id, public=False)
    ids = {"ids": [shared["id"], private["id"]]}
    expected = anonymous.get(SHARED, params=ids).json()
    for client in (alice_client, bob[1], server.client("tl_not_a_real_key")):
        r = client.get(SHARED, params=ids)
        assert r.status_code == 200 and r.json() == expected
    assert expected[1] is None


def test_turning_public_off_removes_access_at_once(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, client = alice
    conv = _public(server, user.id)
    _store(server, conv["id"], [_event("only", 0)])
    events = f"{SHARED}/{conv['id']}/events/search"
    assert anonymous.get(SHARED, params={"ids": [conv["id"]]}).json()[0]["id"] == conv["id"]
    assert anonymous.get(events).json()["items"][0]["id"] == "only"
    for public in (False, None):
        assert client.patch(f"{API}/{conv['id']}", json={"public": public}).status_code == 200
        assert anonymous.get(SHARED, params={"ids": [conv["id"]]}).json() == [None]
        r = anonymous.get(events)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
        assert client.patch(f"{API}/{conv['id']}", json={"public": True}).status_code == 200
        assert anonymous.get(SHARED, params={"ids": [conv["id"]]}).json()[0]["id"] == conv["id"]
        assert anonymous.get(events).status_code == 200
    # Deleting ends it too.
    assert client.delete(f"{API}/{conv['id']}").status_code == 200
    assert anonymous.get(SHARED, params={"ids": [conv["id"]]}).json() == [None]
    assert anonymous.get(events).status_code == 404


def test_shared_events_list_like_the_owners_with_agent_state_withheld(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, client = alice
    conv = _public(server, user.id)
    _store(server, conv["id"], _events(conv["id"]))
    own = f"/api/v1/conversation/{conv['id']}/events/search"
    shared = f"{SHARED}/{conv['id']}/events/search"
    for params in (
        {},
        {"sort_order": "TIMESTAMP_DESC"},
        {"kind__eq": "MessageEvent"},
        {"timestamp__gte": (T0 + dt.timedelta(minutes=5)).isoformat(), "timestamp__lt": "2026-01-01T00:09:00"},
    ):
        for limit in (3, 100):
            mine, theirs, page_id = [], [], None
            while True:
                query = {**params, "limit": limit, **({"page_id": page_id} if page_id else {})}
                a, b = client.get(own, params=query), anonymous.get(shared, params=query)
                assert a.status_code == b.status_code == 200, b.text
                assert b.headers["cache-control"] == "no-store"
                assert a.json()["next_page_id"] == b.json()["next_page_id"]
                mine += a.json()["items"]
                theirs += b.json()["items"]
                page_id = b.json()["next_page_id"]
                if not page_id:
                    break
            assert [e["id"] for e in theirs] == [e["id"] for e in mine], params
            assert mine, params
    everything = anonymous.get(shared).json()["items"]
    text = anonymous.get(shared).text
    assert SECRET not in text and "10.0.0.7" not in text and "/srv/sandboxes" not in text
    assert "secret-customer" not in text
    full_state = everything[0]
    assert full_state["key"] == "full_state"
    assert full_state["value"] == {"id": conv["id"], "execution_status": "finished", "stats": {"usage_to_metrics": {}}}
    assert everything[1]["key"] == "agent" and everything[1]["value"] is None
    assert everything[2]["value"] == "running"
    assert everything[3]["llm_message"]["content"][0]["text"] == "m3"
    # The owner still sees everything as stored.
    assert SECRET in client.get(own).text


def test_shared_events_are_404_unless_public(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, _ = alice
    private = _public(server, user.id, public=False)
    unset = _public(server, user.id, public=None)
    for conv in (private, unset):
        _store(server, conv["id"], [_event("x", 0)])
    missing = uuid.uuid4().hex
    answers = {}
    for target in (private["id"], unset["id"], missing, "not-an-id"):
        r = anonymous.get(f"{SHARED}/{target}/events/search")
        assert r.status_code == 404, target
        assert r.headers["content-type"].startswith("application/problem+json")
        answers[target] = r.json()["detail"].replace(target, "X")
    # Private and missing answer word for word alike.
    assert answers[private["id"]] == answers[unset["id"]] == answers[missing]


def test_not_enumerable_and_read_only(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, _ = alice
    conv = _public(server, user.id)
    # Ids are required: there is no listing or search of public conversations.
    r = anonymous.get(SHARED)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    for path in (f"{SHARED}/search", f"{SHARED}/count", f"{SHARED}/{conv['id']}", f"{SHARED}/{conv['id']}/events"):
        assert anonymous.get(path).status_code in (404, 405), path
    for method in ("POST", "PATCH", "PUT", "DELETE"):
        for path in (SHARED, f"{SHARED}/{conv['id']}", f"{SHARED}/{conv['id']}/events/search"):
            r = anonymous.request(method, path, json={"public": False})
            assert r.status_code in (404, 405), (method, path)
    assert anonymous.get(SHARED, params={"ids": [conv["id"]]}).json()[0]["id"] == conv["id"]


def test_ids_validation(anonymous: httpx.Client) -> None:
    assert anonymous.get(SHARED, params={"ids": [uuid.uuid4().hex for _ in range(100)]}).json() == [None] * 100
    too_many = anonymous.get(SHARED, params={"ids": [uuid.uuid4().hex for _ in range(101)]})
    assert too_many.status_code == 422 and "100" in too_many.json()["detail"]
    for bad in ("nope", "g" * 32, "' OR 1=1 --"):
        r = anonymous.get(SHARED, params={"ids": [uuid.uuid4().hex, bad]})
        assert r.status_code == 422, bad
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["loc"] == ["query", "ids"]


def test_shared_events_parameter_validation(
    server: LiveServer, alice: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, _ = alice
    conv = _public(server, user.id)
    url = f"{SHARED}/{conv['id']}/events/search"
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"sort_order": "NEWEST"},
        {"kind__eq": "k" * 65},
        {"timestamp__gte": "x"},
    ):
        r = anonymous.get(url, params=params)
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")
    r = anonymous.get(url, params={"page_id": "garbage"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")


def test_related_ids_only_when_public_too(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client], anonymous: httpx.Client
) -> None:
    user, _ = alice
    parent = _public(server, user.id)
    shared_kid = _public(server, user.id, parent_conversation_id=parent["id"])
    _public(server, user.id, parent_conversation_id=parent["id"], public=False)
    private_parent = _public(server, user.id, public=False)
    orphan_view = _public(server, user.id, parent_conversation_id=private_parent["id"])
    # Another user's public conversation claiming the same parent is not listed under it.
    _public(server, bob[0].id, parent_conversation_id=parent["id"])
    got = anonymous.get(SHARED, params={"ids": [parent["id"], shared_kid["id"], orphan_view["id"]]}).json()
    assert got[0]["sub_conversation_ids"] == [shared_kid["id"]]
    assert got[1]["parent_conversation_id"] == parent["id"]
    assert got[2]["parent_conversation_id"] is None
    assert private_parent["id"] not in str(got)
