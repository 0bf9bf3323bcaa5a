"""Single and batch get, search with filters and keyset paging, count, sub-conversations, delete."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

API = "/api/v1/app-conversations"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _make(server: LiveServer, user_id: str, n: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        server.conversation(user_id, created_at=T0 + dt.timedelta(minutes=i), title=f"conv {i}", **fields)
        for i in range(n)
    ]


def _all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page_id = None
    for _ in range(1000):
        query = dict(params, **({"page_id": page_id} if page_id else {}))
        r = client.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items.extend(body["items"])
        page_id = body["next_page_id"]
        if not page_id:
            return items
    raise AssertionError("paging did not end")


def test_get_single_full_resource(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id, title="t", trigger="openhands_api", llm_model="openai/gpt")
    body = client.get(f"{API}/{conv['id']}").json()
    assert body["id"] == conv["id"] and len(body["id"]) == 32 and body["id"] == body["id"].lower()
    assert body["created_by_user_id"] == user.id
    assert body["sandbox_status"] == "MISSING"
    assert body["execution_status"] is None
    assert body["conversation_url"] is None and body["session_api_key"] is None
    assert body["metrics"] is None
    assert body["agent_kind"] == "openhands"
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")


def test_batch_get_keeps_order_and_nulls(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    mine = _make(server, user.id, 3)
    theirs = server.conversation(bob[0].id, title="bob's")
    missing = uuid.uuid4().hex
    ids = [mine[2]["id"], missing, str(uuid.UUID(mine[0]["id"])), theirs["id"], mine[1]["id"], mine[2]["id"]]
    r = client.get(API, params={"ids": ids})
    assert r.status_code == 200
    got = r.json()
    assert [g["id"] if g else None for g in got] == [
        mine[2]["id"],
        None,
        mine[0]["id"],
        None,
        mine[1]["id"],
        mine[2]["id"],
    ]


def test_batch_get_limits_and_malformed(alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    assert client.get(API, params={"ids": [uuid.uuid4().hex for _ in range(100)]}).status_code == 200
    too_many = client.get(API, params={"ids": [uuid.uuid4().hex for _ in range(101)]})
    assert too_many.status_code == 422 and "100" in too_many.json()["detail"]
    bad = client.get(API, params={"ids": [uuid.uuid4().hex, "nope"]})
    assert bad.status_code == 422 and "nope" in bad.json()["detail"]
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert client.get(API).status_code == 422


def test_search_default_order_and_paging_with_inserts_and_deletes(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    convs = _make(server, user.id, 25)
    first = client.get(f"{API}/search", params={"limit": 10}).json()
    assert [c["id"] for c in first["items"]] == [c["id"] for c in reversed(convs)][:10]
    # Between pages: insert newer and older rows, delete a seen row and an unseen row.
    server.conversation(user.id, created_at=T0 + dt.timedelta(days=1), title="newer")
    older = server.conversation(user.id, created_at=T0 - dt.timedelta(days=1), title="older")
    assert client.delete(f"{API}/{convs[24]['id']}").status_code == 200
    assert client.delete(f"{API}/{convs[5]['id']}").status_code == 200
    rest = _all_pages(client, f"{API}/search", limit=10, page_id=first["next_page_id"])
    expected = [c["id"] for c in reversed(convs[:15]) if c["id"] != convs[5]["id"]] + [older["id"]]
    assert [c["id"] for c in rest] == expected


@pytest.mark.parametrize("sort_order", ["CREATED_AT", "CREATED_AT_DESC", "UPDATED_AT", "UPDATED_AT_DESC"])
def test_sort_orders_page_completely(server: LiveServer, alice: tuple[Any, httpx.Client], sort_order: str) -> None:
    user, client = alice
    convs = _make(server, user.id, 12)
    # Make updated_at order differ from created_at order.
    for c in convs[::3]:
        client.patch(f"{API}/{c['id']}", json={"title": "touched"})
    items = _all_pages(client, f"{API}/search", limit=5, sort_order=sort_order)
    key = "created_at" if sort_order.startswith("CREATED") else "updated_at"
    values = [(i[key], i["id"]) for i in items]
    assert values == sorted(values, reverse=sort_order.endswith("DESC"))
    assert sorted(i["id"] for i in items) == sorted(c["id"] for c in convs)


def test_filters_and_count_agree(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    convs = _make(server, user.id, 10)
    server.conversation(user.id, title="100% done_ok", sandbox_id="sbx-1", created_at=T0 + dt.timedelta(hours=5))
    server.conversation(user.id, title="100 percent", sandbox_id="sbx-1", created_at=T0 + dt.timedelta(hours=6))
    server.conversation(user.id, title="1000 doneXok", created_at=T0 + dt.timedelta(hours=7))
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 13),
        ({"title__contains": "100%"}, 1),
        ({"title__contains": "done_ok"}, 1),
        ({"title__contains": "CONV"}, 10),
        ({"created_at__gte": _iso(T0 + dt.timedelta(minutes=3))}, 10),
        ({"created_at__lt": _iso(T0 + dt.timedelta(minutes=3))}, 3),
        (
            {
                "created_at__gte": _iso(T0 + dt.timedelta(minutes=3)),
                "created_at__lt": _iso(T0 + dt.timedelta(minutes=5)),
            },
            2,
        ),
        ({"sandbox_id__eq": "sbx-1"}, 2),
        ({"sandbox_id__eq": "sbx-1", "title__contains": "percent"}, 1),
        ({"created_at__gte": "2026-01-01T00:03:00"}, 10),  # naive means UTC
        ({"created_at__gte": "2026-01-01T01:03:00+01:00"}, 10),
    ]
    for params, expected in cases:
        items = _all_pages(client, f"{API}/search", limit=4, **params)
        count = client.get(f"{API}/count", params=params)
        assert count.status_code == 200
        assert len(items) == expected == count.json(), params
    # updated_at filters
    touched = client.patch(f"{API}/{convs[0]['id']}", json={"title": "touched"}).json()
    params = {"updated_at__gte": touched["updated_at"]}
    assert [c["id"] for c in _all_pages(client, f"{API}/search", **params)] == [convs[0]["id"]]
    assert client.get(f"{API}/count", params=params).json() == 1
    params = {"updated_at__lt": touched["updated_at"]}
    assert client.get(f"{API}/count", params=params).json() == 12


def test_sub_conversations_in_search_count_and_every_response(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    parent = server.conversation(user.id, title="parent", created_at=T0)
    kids = [
        server.conversation(
            user.id,
            title=f"kid {i}",
            parent_conversation_id=parent["id"],
            created_at=T0 + dt.timedelta(seconds=i + 1),
        )
        for i in range(2)
    ]
    kid_ids = [k["id"] for k in kids]
    page = client.get(f"{API}/search").json()
    assert [c["id"] for c in page["items"]] == [parent["id"]]
    assert page["items"][0]["sub_conversation_ids"] == kid_ids
    assert client.get(f"{API}/count").json() == 1
    with_subs = client.get(f"{API}/search", params={"include_sub_conversations": True}).json()["items"]
    assert len(with_subs) == 3
    assert client.get(f"{API}/count", params={"include_sub_conversations": True}).json() == 3
    assert client.get(f"{API}/{parent['id']}").json()["sub_conversation_ids"] == kid_ids
    assert client.get(API, params={"ids": [parent["id"]]}).json()[0]["sub_conversation_ids"] == kid_ids
    patched = client.patch(f"{API}/{parent['id']}", json={"title": "p2"}).json()
    assert patched["sub_conversation_ids"] == kid_ids
    assert client.get(f"{API}/{kids[0]['id']}").json()["parent_conversation_id"] == parent["id"]


def test_search_and_count_are_per_user(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    _make(server, user.id, 3)
    bob_user, bob_client = bob
    server.conversation(bob_user.id, title="conv bob")
    assert client.get(f"{API}/count").json() == 3
    assert bob_client.get(f"{API}/count").json() == 1
    assert [c["title"] for c in bob_client.get(f"{API}/search").json()["items"]] == ["conv bob"]
    assert bob_client.get(f"{API}/count", params={"title__contains": "conv"}).json() == 1


def test_page_token_misuse(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    _make(server, user.id, 5)
    token = client.get(f"{API}/search", params={"limit": 2}).json()["next_page_id"]
    assert token
    # Reused with other filters or another sort: rejected, not silently wrong.
    for params in (
        {"title__contains": "conv"},
        {"sort_order": "CREATED_AT"},
        {"include_sub_conversations": True},
    ):
        r = client.get(f"{API}/search", params={"limit": 2, "page_id": token, **params})
        assert r.status_code == 400, params
        assert r.headers["content-type"].startswith("application/problem+json")
    for garbled in ("garbage", token[:-3] + "AAA", "", "0", "10", "%%%", "eyJ9"):
        r = client.get(f"{API}/search", params={"page_id": garbled})
        assert r.status_code in (200, 400), garbled  # empty string means no token
        if garbled:
            assert r.status_code == 400, garbled
    # Another limit with the same token is fine.
    assert client.get(f"{API}/search", params={"limit": 3, "page_id": token}).status_code == 200


def test_search_parameter_validation(alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"sort_order": "TITLE"},
        {"created_at__gte": "yesterday"},
        {"include_sub_conversations": "perhaps"},
    ):
        r = client.get(f"{API}/search", params=params)
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"]
    assert client.get(f"{API}/count", params={"created_at__lt": "nope"}).status_code == 422


def test_delete(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    parent = server.conversation(user.id, title="parent")
    kid = server.conversation(user.id, title="kid", parent_conversation_id=parent["id"])
    r = client.delete(f"{API}/{parent['id']}")
    assert r.status_code == 200 and r.json() == {"success": True}
    assert client.get(f"{API}/{parent['id']}").status_code == 404
    assert client.delete(f"{API}/{parent['id']}").status_code == 404
    assert client.get(API, params={"ids": [parent["id"]]}).json() == [None]
    # The sub-conversation is kept, now top-level.
    orphan = client.get(f"{API}/{kid['id']}").json()
    assert orphan["parent_conversation_id"] is None
    assert client.get(f"{API}/count").json() == 1


def test_unauthenticated_reads(server: LiveServer) -> None:
    with server.client() as anonymous:
        for path in (
            f"{API}/search",
            f"{API}/count",
            f"{API}?ids={uuid.uuid4().hex}",
            f"{API}/{uuid.uuid4().hex}",
        ):
            r = anonymous.get(path)
            assert r.status_code == 401, path
            assert r.headers["content-type"].startswith("application/problem+json")
