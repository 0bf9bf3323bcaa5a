"""Conversation events: storing from webhooks, search with keyset paging, count, batch get, ownership."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from threadline.events.service import store_events

T0 = dt.datetime(2026, 1, 1)  # naive: agent servers report naive UTC timestamps


def _url(conversation_id: str, suffix: str = "") -> str:
    return f"/api/v1/conversation/{conversation_id}/events{suffix}"


def _event(event_id: str, at: dt.datetime, kind: str = "MessageEvent", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "kind": kind, "timestamp": at.isoformat(), "source": "agent", **extra}


def _store(server: LiveServer, conversation_id: str, items: list[Any]) -> int:
    async def run() -> int:
        async with server.ctx.db.write() as conn:
            return await store_events(conn, conversation_id=conversation_id, items=items)

    return server.run(run())


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


def _sort_key(event: dict[str, Any]) -> tuple[dt.datetime, str]:
    at = dt.datetime.fromisoformat(event["timestamp"])
    at = at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)
    return at, event["id"]


def _unused(candidate: str, used: set[str]) -> str:
    # Event ids here are digit strings ending in 5, so their order is the same under any collation;
    # appending digits to a candidate keeps it on the same side of the id it was derived from.
    while candidate in used:
        candidate += "5"
    used.add(candidate)
    return candidate


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


@pytest.mark.parametrize("sort_order", ["TIMESTAMP", "TIMESTAMP_DESC"])
def test_paging_with_tied_timestamps_and_inserts_between_pages(
    server: LiveServer, alice: tuple[Any, httpx.Client], sort_order: str
) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    descending = sort_order == "TIMESTAMP_DESC"
    # Three events share each timestamp, so page boundaries fall inside groups of ties.
    originals = [_event(f"{i:03d}5", T0 + dt.timedelta(seconds=i // 3), n=i) for i in range(20)]
    assert _store(server, conversation_id, originals) == 20
    used = {e["id"] for e in originals}
    expected = list(originals)
    seen: list[dict[str, Any]] = []
    page_id = None
    for page in range(1000):
        params: dict[str, Any] = {"sort_order": sort_order, "limit": 3}
        if page_id:
            params["page_id"] = page_id
        r = client.get(_url(conversation_id, "/search"), params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 3
        seen.extend(body["items"])
        page_id = body["next_page_id"]
        if not page_id:
            break
        if page >= 5:
            continue
        # Between pages: events tied with the last one served on both sides of it, and events far
        # before and far after it. Only those after the cursor may show up, each exactly once.
        last = body["items"][-1]
        at = dt.datetime.fromisoformat(last["timestamp"])
        bigger = _unused(last["id"] + "5", used)
        smaller = _unused(last["id"][:-1] + str(int(last["id"][-1]) - 1), used)
        far = dt.timedelta(days=1, seconds=page)
        ahead = [_event(smaller if descending else bigger, at), _event(_unused(f"9{page:02d}5", used), at + far)]
        behind = [_event(bigger if descending else smaller, at), _event(_unused(f"8{page:02d}5", used), at - far)]
        if descending:
            ahead[1]["timestamp"], behind[1]["timestamp"] = behind[1]["timestamp"], ahead[1]["timestamp"]
        assert _store(server, conversation_id, ahead + behind) == 4
        expected.extend(ahead)
    else:
        raise AssertionError("paging did not end")
    want = sorted(expected, key=_sort_key, reverse=descending)
    assert [e["id"] for e in seen] == [e["id"] for e in want]
    assert len({e["id"] for e in seen}) == len(seen) == 20 + 2 * 5
    assert seen == want  # payloads come back exactly as stored


def test_next_page_id_only_when_more(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    empty = client.get(_url(conversation_id, "/search")).json()
    assert empty == {"items": [], "next_page_id": None}
    _store(server, conversation_id, [_event(f"e{i}", T0 + dt.timedelta(seconds=i)) for i in range(4)])
    exact = client.get(_url(conversation_id, "/search"), params={"limit": 4}).json()
    assert [e["id"] for e in exact["items"]] == ["e0", "e1", "e2", "e3"] and exact["next_page_id"] is None
    first = client.get(_url(conversation_id, "/search"), params={"limit": 3}).json()
    assert [e["id"] for e in first["items"]] == ["e0", "e1", "e2"] and first["next_page_id"]
    rest = client.get(_url(conversation_id, "/search"), params={"limit": 3, "page_id": first["next_page_id"]})
    assert rest.json() == {"items": [_event("e3", T0 + dt.timedelta(seconds=3))], "next_page_id": None}
    # Default order is TIMESTAMP ascending, default limit 100.
    assert [e["id"] for e in client.get(_url(conversation_id, "/search")).json()["items"]] == [
        "e0",
        "e1",
        "e2",
        "e3",
    ]


def test_filters_and_count_agree(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    other = server.conversation(user.id)["id"]
    kinds = ["MessageEvent", "ActionEvent", "ObservationEvent", "BrandNewKindFromAFutureAgent"]
    items = [_event(f"ev{i:02d}", T0 + dt.timedelta(minutes=i, microseconds=i), kind=kinds[i % 4]) for i in range(12)]
    # An aware timestamp in another zone: 02:05:30+02:00 is 00:05:30 UTC, between ev05 and ev06.
    items.append(_event("aware", T0, kind="ActionEvent") | {"timestamp": "2026-01-01T02:05:30+02:00"})
    items.append(_event("zulu", T0, kind="PauseEvent") | {"timestamp": "2026-01-01T00:20:00Z"})
    assert _store(server, conversation_id, items) == 14
    _store(server, other, [_event("elsewhere", T0, kind="MessageEvent")])

    def minute(n: int) -> str:
        return (T0 + dt.timedelta(minutes=n)).isoformat()

    after_6 = [*(f"ev{i:02d}" for i in range(6, 12)), "zulu"]
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, [*(f"ev{i:02d}" for i in range(6)), "aware", *(f"ev{i:02d}" for i in range(6, 12)), "zulu"]),
        ({"kind__eq": "MessageEvent"}, ["ev00", "ev04", "ev08"]),
        ({"kind__eq": "ActionEvent"}, ["ev01", "ev05", "aware", "ev09"]),
        ({"kind__eq": "BrandNewKindFromAFutureAgent"}, ["ev03", "ev07", "ev11"]),
        ({"kind__eq": "TokenEvent"}, []),
        ({"timestamp__gte": minute(6)}, after_6),
        # ev06 is at 00:06:00.000006: microseconds count.
        ({"timestamp__gte": (T0 + dt.timedelta(minutes=6, microseconds=6)).isoformat()}, after_6),
        ({"timestamp__gte": (T0 + dt.timedelta(minutes=6, microseconds=7)).isoformat()}, after_6[1:]),
        ({"timestamp__lt": minute(2)}, ["ev00", "ev01"]),
        ({"timestamp__gte": minute(5), "timestamp__lt": minute(6)}, ["ev05", "aware"]),
        ({"timestamp__gte": "2026-01-01T01:05:00+01:00", "timestamp__lt": "2026-01-01T00:06:00Z"}, ["ev05", "aware"]),
        ({"kind__eq": "ActionEvent", "timestamp__gte": minute(5), "timestamp__lt": minute(9)}, ["ev05", "aware"]),
        ({"timestamp__gte": minute(20)}, ["zulu"]),
    ]
    for params, expected in cases:
        for sort_order, ordered in (("TIMESTAMP", expected), ("TIMESTAMP_DESC", expected[::-1])):
            found = _all_pages(client, _url(conversation_id, "/search"), limit=2, sort_order=sort_order, **params)
            assert [e["id"] for e in found] == ordered, (params, sort_order)
        count = client.get(_url(conversation_id, "/count"), params=params)
        assert count.status_code == 200
        assert count.json() == len(expected), params


def test_store_events_skips_invalid_and_duplicates(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    first = _event("dup", T0, text="first", nested={"a": [1, 2, {"b": None}], "t": True})
    items: list[Any] = [
        first,
        _event("dup", T0, text="second copy in the same batch"),
        {"kind": "MessageEvent", "timestamp": T0.isoformat()},  # no id
        {"id": "no-kind", "timestamp": T0.isoformat()},
        {"id": "no-time", "kind": "MessageEvent"},
        _event("bad-time", T0) | {"timestamp": "yesterday"},
        _event("num-time", T0) | {"timestamp": 1767225600},
        _event("x" * 65, T0),  # longer than an event id can be
        _event("long-kind", T0, kind="K" * 65),
        _event("", T0),
        {"id": 7, "kind": "MessageEvent", "timestamp": T0.isoformat()},
        "not an object",
        _event("kept", T0 + dt.timedelta(seconds=1)),
        _event("y" * 64, T0 + dt.timedelta(seconds=2), kind="K" * 64),
    ]
    assert _store(server, conversation_id, items) == 3
    # Already stored: a second delivery stores nothing and keeps the first payload.
    assert _store(server, conversation_id, [_event("dup", T0, text="redelivered"), _event("kept", T0)]) == 0
    assert _store(server, conversation_id, [_event("dup", T0), _event("new", T0 + dt.timedelta(seconds=3))]) == 1
    assert _store(server, conversation_id, []) == 0
    # A dashed conversation id names the same conversation.
    assert _store(server, str(uuid.UUID(conversation_id)), [_event("via-dashed", T0 + dt.timedelta(seconds=4))]) == 1
    page = client.get(_url(conversation_id, "/search")).json()
    assert [e["id"] for e in page["items"]] == ["dup", "kept", "y" * 64, "new", "via-dashed"]
    assert page["items"][0] == first
    assert client.get(_url(conversation_id, "/count")).json() == 5


def test_nul_characters_are_stored_on_every_backend(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    item = _event("bin", T0, kind="ObservationEvent", output="before\x00after", ok="plain")
    assert _store(server, conversation_id, [item, _event("nul\x00id", T0)]) == 1
    stored = client.get(_url(conversation_id), params={"id": "bin"}).json()[0]
    assert stored["output"] == "before\ufffdafter" and stored["ok"] == "plain"


def test_batch_get_order_nulls_and_limits(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    other = server.conversation(user.id)["id"]
    events = [_event(str(uuid.uuid4()), T0 + dt.timedelta(seconds=i), n=i) for i in range(3)]
    _store(server, conversation_id, events)
    _store(server, other, [_event("in-other-conversation", T0)])
    ids = [events[2]["id"], "missing", events[0]["id"], "in-other-conversation", events[1]["id"], events[2]["id"]]
    r = client.get(_url(conversation_id), params={"id": ids})
    assert r.status_code == 200, r.text
    assert r.json() == [events[2], None, events[0], None, events[1], events[2]]
    # Dashed conversation id in the path names the same conversation.
    assert client.get(_url(str(uuid.UUID(conversation_id))), params={"id": events[0]["id"]}).json() == [events[0]]

    assert client.get(_url(conversation_id), params={"id": [f"m{i}" for i in range(100)]}).json() == [None] * 100
    too_many = _problem(client.get(_url(conversation_id), params={"id": [f"m{i}" for i in range(101)]}), 422)
    assert "100" in too_many["detail"] and too_many["errors"][0]["loc"] == ["query", "id"]
    too_long = _problem(client.get(_url(conversation_id), params={"id": ["ok", "z" * 65]}), 422)
    assert "z" * 65 in too_long["detail"]
    _problem(client.get(_url(conversation_id), params={"id": ""}), 422)
    missing = _problem(client.get(_url(conversation_id)), 422)
    assert missing["errors"][0]["loc"] == ["query", "id"]


def test_other_users_missing_and_malformed_conversations_are_404(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    mine = server.conversation(user.id)["id"]
    _store(server, mine, [_event("secret-event", T0)])
    _, bob_client = bob
    for conversation_id in (mine, uuid.uuid4().hex, "not-a-conversation-id"):
        for r in (
            bob_client.get(_url(conversation_id, "/search")),
            bob_client.get(_url(conversation_id, "/count")),
            bob_client.get(_url(conversation_id), params={"id": "secret-event"}),
        ):
            body = _problem(r, 404)
            assert "secret-event" not in r.text
            assert "conversation" in body["detail"]
    # The owner still sees it.
    assert client.get(_url(mine, "/count")).json() == 1
    assert client.get(_url(mine), params={"id": "secret-event"}).json()[0]["id"] == "secret-event"


def test_unauthenticated_is_401(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, _ = alice
    conversation_id = server.conversation(user.id)["id"]
    for client in (server.client(), server.client("tl_not-a-real-key")):
        for path, params in (
            (_url(conversation_id, "/search"), {}),
            (_url(conversation_id, "/count"), {}),
            (_url(conversation_id), {"id": "x"}),
            (_url("not-a-conversation-id", "/search"), {"limit": 0}),
        ):
            _problem(client.get(path, params=params), 401)


def test_bad_parameters_are_422(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    search, count = _url(conversation_id, "/search"), _url(conversation_id, "/count")
    for path in (search, count):
        for params, field in (
            ({"kind__eq": ""}, "kind__eq"),
            ({"kind__eq": "K" * 65}, "kind__eq"),
            ({"timestamp__gte": "not a date"}, "timestamp__gte"),
            ({"timestamp__lt": "2026-13-01T00:00:00"}, "timestamp__lt"),
        ):
            body = _problem(client.get(path, params=params), 422)
            assert body["errors"][0]["loc"] == ["query", field], (path, params)
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"sort_order": "NEWEST"}, "sort_order"),
        ({"sort_order": "timestamp"}, "sort_order"),
    ):
        body = _problem(client.get(search, params=params), 422)
        assert body["errors"][0]["loc"] == ["query", field], params
    assert client.get(search, params={"limit": 100, "kind__eq": "K" * 64}).status_code == 200
    assert client.get(search, params={"limit": 1}).status_code == 200


def test_bad_page_ids_are_400(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conversation_id = server.conversation(user.id)["id"]
    other = server.conversation(user.id)["id"]
    for c in (conversation_id, other):
        _store(server, c, [_event(f"e{i}", T0 + dt.timedelta(seconds=i)) for i in range(3)])
    search = _url(conversation_id, "/search")
    token = client.get(search, params={"limit": 1, "kind__eq": "MessageEvent"}).json()["next_page_id"]
    assert token
    ok = client.get(search, params={"limit": 1, "kind__eq": "MessageEvent", "page_id": token})
    assert [e["id"] for e in ok.json()["items"]] == ["e1"]
    garbled = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for params in (
        {"page_id": "garbage!"},
        {"page_id": garbled},
        {"page_id": "x"},
        {"page_id": token},  # other filters
        {"page_id": token, "kind__eq": "MessageEvent", "sort_order": "TIMESTAMP_DESC"},  # other order
    ):
        _problem(client.get(search, params=params), 400)
    # A token from one conversation's listing is no good for another's.
    _problem(client.get(_url(other, "/search"), params={"limit": 1, "kind__eq": "MessageEvent", "page_id": token}), 400)
    # Conversation listings' tokens are not event tokens.
    conversation_token = client.get(
        "/api/v1/app-conversations/search", params={"limit": 1, "include_sub_conversations": True}
    ).json()["next_page_id"]
    assert conversation_token
    _problem(client.get(search, params={"page_id": conversation_token}), 400)
