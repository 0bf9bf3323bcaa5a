"""Direct handlers (`core.direct`): the plain requests of the hot routes skip FastAPI's dependency solving, and
nothing a client can see may change with it.

Every request is made twice: as it is (a plain one is answered by the direct handler) and with a query
parameter the route ignores (`_declared=1`, which no direct handler accepts), so the route's declared
FastAPI handler answers it. The two answers must be the same: status, body (but the request id), ETag, the
problem's type and detail, the authentication challenge. The direct handlers' own decisions (answer, or leave
the request to the route) are checked by calling them on the running app."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tests.conftest import LiveServer
from threadline.core.direct import DirectDispatch, direct_handler_of
from threadline.events.service import store_events

T0 = dt.datetime(2026, 1, 1)
DECLARED = {"_declared": "1"}


def _store_events(server: LiveServer, conversation_id: str, count: int) -> None:
    items = [
        {
            "id": f"{i:08d}",
            "kind": "ActionEvent" if i % 2 else "MessageEvent",
            "timestamp": (T0 + dt.timedelta(seconds=i)).isoformat(),
            "source": "agent",
        }
        for i in range(count)
    ]

    async def run() -> None:
        async with server.ctx.db.write() as conn:
            await store_events(conn, conversation_id=conversation_id, items=items)

    server.run(run())


def _seen(r: httpx.Response) -> tuple[Any, ...]:
    """What a client sees of an answer, but what differs between any two requests."""
    body: Any = r.content
    if r.headers.get("content-type", "").startswith(("application/json", "application/problem+json")) and r.content:
        body = r.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
    return (
        r.status_code,
        r.headers.get("content-type"),
        r.headers.get("etag"),
        r.headers.get("www-authenticate"),
        body,
    )


def _both(client: httpx.Client, method: str, path: str, **kwargs: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    params = (
        list(dict(kwargs.pop("params", {})).items())
        if isinstance(kwargs.get("params"), dict)
        else kwargs.pop("params", [])
    )
    plain = client.request(method, path, params=params, **kwargs)
    declared = client.request(method, path, params=[*params, *DECLARED.items()], **kwargs)
    return _seen(plain), _seen(declared)


@pytest.fixture
def setup(server: LiveServer, alice: tuple[Any, httpx.Client]) -> dict[str, Any]:
    user, client = alice
    conversations = [server.conversation(user.id, title=f"c{i}", tags={"team": "a"}) for i in range(5)]
    _store_events(server, conversations[0]["id"], 30)
    return {"client": client, "key": client.headers["X-Access-Token"], "ids": [c["id"] for c in conversations]}


def test_plain_reads_are_answered_the_same_by_both_paths(server: LiveServer, setup: dict[str, Any]) -> None:
    client: httpx.Client = setup["client"]
    one = setup["ids"][0]
    dashed = str(uuid.UUID(one))
    reads: list[tuple[str, dict[str, Any]]] = [
        (f"/api/v1/app-conversations/{one}", {}),
        (f"/api/v1/app-conversations/{dashed}", {}),
        (f"/api/v1/app-conversations/{one.upper()}", {}),
        ("/api/v1/app-conversations/search", {}),
        ("/api/v1/app-conversations/search", {"limit": "2"}),
        ("/api/v1/app-conversations/search", {"limit": "100", "sort_order": "CREATED_AT"}),
        ("/api/v1/app-conversations/search", {"sort_order": "UPDATED_AT_DESC", "limit": "3"}),
        (f"/api/v1/conversation/{one}/events/search", {}),
        (f"/api/v1/conversation/{one}/events/search", {"kind__eq": "ActionEvent", "limit": "4"}),
        (f"/api/v1/conversation/{one}/events/search", {"sort_order": "TIMESTAMP_DESC", "limit": "7"}),
        (f"/api/v1/conversation/{one}/events/search", {"kind__eq": "NoSuchKind"}),
    ]
    for path, params in reads:
        plain, declared = _both(client, "GET", path, params=params)
        assert plain[0] == 200, (path, params, plain)
        assert plain == declared, (path, params)
    # Pages walked by their tokens, both ways, are the same pages.
    for path, params in [
        ("/api/v1/app-conversations/search", {"limit": "2"}),
        (f"/api/v1/conversation/{one}/events/search", {"limit": "8", "kind__eq": "ActionEvent"}),
    ]:
        token = None
        for _ in range(10):
            page_params = {**params, **({"page_id": token} if token else {})}
            plain, declared = _both(client, "GET", path, params=page_params)
            assert plain[0] == 200 and plain == declared
            token = plain[4]["next_page_id"]
            if token is None:
                break
        assert token is None
    # If-None-Match: 304 both ways, with the same ETag.
    etag = client.get(f"/api/v1/app-conversations/{one}").headers["etag"]
    plain, declared = _both(client, "GET", f"/api/v1/app-conversations/{one}", headers={"If-None-Match": etag})
    assert plain[0] == 304 and plain == declared


def test_patches_are_answered_the_same_by_both_paths(server: LiveServer, setup: dict[str, Any]) -> None:
    client: httpx.Client = setup["client"]
    first, second = setup["ids"][0], setup["ids"][1]
    body = {"title": "renamed", "tags": {"team": "b", "new": "x"}, "public": True}
    plain = client.patch(f"/api/v1/app-conversations/{first}", json=body)
    declared = client.patch(f"/api/v1/app-conversations/{second}", json=body, params=DECLARED)
    assert plain.status_code == declared.status_code == 200
    fields = ("title", "tags", "public", "sandbox_status", "metrics", "sub_conversation_ids")
    assert {k: plain.json()[k] for k in fields} == {k: declared.json()[k] for k in fields}
    assert plain.headers["etag"] == plain.json()["etag"] != declared.json()["etag"]
    # The same conversation's GET shows the PATCH's answer exactly.
    assert client.get(f"/api/v1/app-conversations/{first}").json() == plain.json()
    # A stale If-Match: the same 412 both ways; the current one: a change.
    stale = '"not-the-etag"'
    p412, d412 = _both(
        client, "PATCH", f"/api/v1/app-conversations/{first}", json={"title": "x"}, headers={"If-Match": stale}
    )
    assert p412[0] == 412 and p412 == d412
    current = plain.headers["etag"]
    r = client.patch(f"/api/v1/app-conversations/{first}", json={"title": "y"}, headers={"If-Match": current})
    assert r.status_code == 200 and r.json()["title"] == "y"


def _bad_requests(ids: list[str], key: str) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, httpx keyword arguments, the status the route answers)."""
    one = ids[0]
    get, patch = f"/api/v1/app-conversations/{one}", f"/api/v1/app-conversations/{one}"
    search, events = "/api/v1/app-conversations/search", f"/api/v1/conversation/{one}/events/search"
    missing = uuid.uuid4().hex
    return [
        # Ids: malformed (404, as a missing one), missing.
        ("GET", "/api/v1/app-conversations/not-an-id", {}, 404),
        ("GET", f"/api/v1/app-conversations/{one}0", {}, 404),
        ("GET", f"/api/v1/app-conversations/{missing}", {}, 404),
        ("PATCH", f"/api/v1/app-conversations/{missing}", {"json": {"title": "x"}}, 404),
        ("PATCH", "/api/v1/app-conversations/zzz", {"json": {"title": "x"}}, 404),
        ("GET", f"/api/v1/conversation/{missing}/events/search", {}, 404),
        ("GET", "/api/v1/conversation/12345/events/search", {}, 404),
        # Credentials: none, unknown, another scheme, an empty bearer, an empty header key.
        ("GET", get, {"headers": {"X-Access-Token": ""}}, 401),
        ("GET", get, {"headers": {"X-Access-Token": "tl_unknown"}}, 401),
        ("PATCH", patch, {"json": {"title": "x"}, "headers": {"X-Access-Token": "tl_unknown"}}, 401),
        ("GET", search, {"headers": {"X-Access-Token": "", "Authorization": "Basic " + key}}, 401),
        ("GET", events, {"headers": {"X-Access-Token": "", "Authorization": "Bearer"}}, 401),
        ("GET", search, {"headers": {"X-Access-Token": "", "Authorization": "Bearer " + key}}, 200),
        ("GET", events, {"headers": {"X-Access-Token": "", "Authorization": "bearer " + key}}, 200),
        # Queries: limits out of range or not plain numbers, unknown sort orders, empty or long kinds,
        # a parameter given twice.
        ("GET", search, {"params": {"limit": "0"}}, 422),
        ("GET", search, {"params": {"limit": "101"}}, 422),
        ("GET", search, {"params": {"limit": "abc"}}, 422),
        ("GET", search, {"params": {"limit": "05"}}, 200),
        ("GET", search, {"params": {"limit": " 5"}}, 200),
        ("GET", search, {"params": {"limit": "-1"}}, 422),
        ("GET", search, {"params": {"limit": "1e2"}}, 422),
        ("GET", search, {"params": {"sort_order": "SIDEWAYS"}}, 422),
        ("GET", search, {"params": {"page_id": "not-a-token"}}, 400),
        ("GET", search, {"params": [("limit", "1"), ("limit", "2")]}, 200),
        ("GET", events, {"params": {"kind__eq": ""}}, 422),
        ("GET", events, {"params": {"kind__eq": "K" * 1000}}, 422),
        ("GET", events, {"params": {"limit": "0"}}, 422),
        ("GET", events, {"params": {"sort_order": "timestamp"}}, 422),
        ("GET", events, {"params": {"page_id": "AAAA"}}, 400),
        ("GET", events, {"params": {"timestamp__gte": "yesterday"}}, 422),
        # Bodies: not JSON, not an object, a field of the wrong type, a non-finite number, no body, another
        # content type, fields the model refuses.
        ("PATCH", patch, {"content": b"{", "headers": {"Content-Type": "application/json"}}, 422),
        ("PATCH", patch, {"json": ["title"]}, 422),
        ("PATCH", patch, {"json": {"title": 5}}, 422),
        ("PATCH", patch, {"content": b'{"title": NaN}', "headers": {"Content-Type": "application/json"}}, 422),
        ("PATCH", patch, {"content": b'{"public": "yes"}', "headers": {"Content-Type": "application/json"}}, 422),
        ("PATCH", patch, {"content": b"", "headers": {"Content-Type": "application/json"}}, 422),
        ("PATCH", patch, {"content": b'{"title": "t"}', "headers": {"Content-Type": "text/plain"}}, 422),
        ("PATCH", patch, {"content": b"[" * 100_000, "headers": {"Content-Type": "application/json"}}, 400),
        ("PATCH", patch, {"json": {"tags": {"": "x"}}}, 422),
        ("PATCH", patch, {"json": {"sandbox_id": "x"}}, 422),
    ]


def test_bad_requests_get_the_routes_own_answers(server: LiveServer, setup: dict[str, Any]) -> None:
    client: httpx.Client = setup["client"]
    for method, path, kwargs, status in _bad_requests(setup["ids"], setup["key"]):
        plain, declared = _both(client, method, path, **kwargs)
        assert plain[0] == status, (method, path, kwargs, plain)
        assert plain == declared, (method, path, kwargs)


def test_another_users_conversation_is_not_found_either_way(
    server: LiveServer, setup: dict[str, Any], bob: tuple[Any, httpx.Client]
) -> None:
    _, bob_client = bob
    one = setup["ids"][0]
    for method, path, kwargs in [
        ("GET", f"/api/v1/app-conversations/{one}", {}),
        ("PATCH", f"/api/v1/app-conversations/{one}", {"json": {"title": "mine now"}}),
        ("GET", f"/api/v1/conversation/{one}/events/search", {}),
    ]:
        plain, declared = _both(bob_client, method, path, **kwargs)
        assert plain[0] == 404 and plain == declared
    page = bob_client.get("/api/v1/app-conversations/search").json()
    assert page == {"items": [], "next_page_id": None}
    assert setup["client"].get(f"/api/v1/app-conversations/{one}").json()["title"] == "c0"


def test_each_direct_request_takes_exactly_one_token_of_the_rate_limit(
    server_factory: Callable[..., LiveServer],
) -> None:
    """Charged once, by the direct handler or by the route, never by both (a direct handler that gave up after
    charging would make the route charge again)."""
    server = server_factory(rate_limit_burst=4, rate_limit_per_second=0.001)
    user, key = server.user("limited")
    one = server.conversation(user.id, title="t")["id"]
    client = server.client(key)
    answers = [
        client.get(f"/api/v1/app-conversations/{one}"),
        client.patch(f"/api/v1/app-conversations/{one}", json={"title": "u"}),
        client.get("/api/v1/app-conversations/search", params={"limit": "1"}),
        client.get(f"/api/v1/conversation/{one}/events/search"),
        client.get(f"/api/v1/app-conversations/{one}"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    assert answers[-1].headers["content-type"].startswith("application/problem+json")
    assert answers[-1].json()["type"].endswith("/rate-limited")
    # Requests that the direct handlers leave to the route are charged once too.
    fresh = server_factory(rate_limit_burst=2, rate_limit_per_second=0.001)
    user, key = fresh.user("limited-2")
    one = fresh.conversation(user.id, title="t")["id"]
    client = fresh.client(key)
    statuses = [client.get(f"/api/v1/app-conversations/{one}", params=DECLARED).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def _scope(server: LiveServer, method: str, path: str, query: bytes, headers: dict[str, str]) -> dict[str, Any]:
    route = _route(server, method, path)
    match = route.path_regex.match(path)
    assert match is not None
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "path_params": match.groupdict(),
        "app": server.app,
        "client": ("127.0.0.1", 1),
        "state": {},
    }


def _route(server: LiveServer, method: str, path: str) -> Any:
    """The route the app's router takes for this request: the first, in order, whose pattern matches."""
    from tests.test_unit_hot_path import _routes

    for route in _routes(server.app.routes):
        if method in getattr(route, "methods", ()) and route.path_regex.match(path):
            return route
    raise AssertionError(f"no route for {method} {path}")


def test_the_hot_routes_plain_requests_are_answered_by_their_direct_handlers(
    server: LiveServer, setup: dict[str, Any]
) -> None:
    """The direct handlers answer the plain requests (so the fast path is the one used), and leave to the
    route everything else, before they take anything from the rate limit."""
    key, one = setup["key"], setup["ids"][0]
    auth = {"X-Access-Token": key}
    as_json = {**auth, "Content-Type": "application/json"}
    conversation, events = f"/api/v1/app-conversations/{one}", f"/api/v1/conversation/{one}/events/search"
    search = "/api/v1/app-conversations/search"
    answered = [
        ("GET", conversation, b"", auth, b""),
        ("GET", conversation, b"", {"Authorization": f"Bearer {key}"}, b""),
        ("PATCH", conversation, b"", as_json, b'{"title": "direct"}'),
        ("PATCH", conversation, b"", {**auth, "Content-Type": "application/json; charset=utf-8"}, b"{}"),
        ("GET", search, b"", auth, b""),
        ("GET", search, b"limit=7&sort_order=UPDATED_AT_DESC", auth, b""),
        ("GET", events, b"kind__eq=ActionEvent&limit=100", auth, b""),
        ("GET", events, b"sort_order=TIMESTAMP_DESC", auth, b""),
    ]
    left = [
        ("GET", conversation, b"x=1", auth, b""),
        ("GET", conversation, b"", {}, b""),
        ("GET", conversation, b"", {"X-Access-Token": "tl_unknown"}, b""),
        ("GET", conversation, b"", {"Authorization": f"Basic {key}"}, b""),
        ("GET", "/api/v1/app-conversations/" + one[:-1] + "g", b"", auth, b""),
        ("PATCH", conversation, b"", auth, b'{"title": "no content type"}'),
        ("PATCH", conversation, b"", as_json, b'{"title": 1}'),
        ("PATCH", conversation, b"", as_json, b"{"),
        ("PATCH", conversation, b"", {**auth, "Content-Type": "application/merge-patch+json"}, b"{}"),
        ("GET", search, b"title__contains=c", auth, b""),
        ("GET", search, b"limit=05", auth, b""),
        ("GET", search, b"limit=101", auth, b""),
        ("GET", search, b"limit=1&limit=2", auth, b""),
        ("GET", search, b"sort_order=created_at", auth, b""),
        ("GET", events, b"kind__eq=", auth, b""),
        ("GET", events, b"timestamp__gte=2026-01-01T00:00:00Z", auth, b""),
    ]
    limiter = server.app.state.rate_limiter
    for method, path, query, headers, body in answered + left:
        route = _route(server, method, path)
        handler = direct_handler_of(route.endpoint)
        assert handler is not None, f"{method} {route.path} has no direct handler"

        async def call(
            scope: dict[str, Any] = _scope(server, method, path, query, headers),
            raw: bytes = body,
            handler: Any = handler,
        ) -> Any:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": raw, "more_body": False}

            before = limiter._calls  # tokens taken so far, by anyone
            response = await handler(Request(scope, receive))
            return response, before, limiter._calls

        response, before, after = server.run(call())
        if (method, path, query, headers, body) in answered:
            assert response is not None, (method, path, query, headers)
            assert response.status_code == 200, (method, path, query, response.body[:300])
            assert after == before + 1
        else:
            assert response is None, (method, path, query, headers)
            assert after == before, "a request left to the route was charged by the direct handler"


def _dispatch(server: LiveServer) -> DirectDispatch:
    layer: Any = server.app.middleware_stack
    while layer is not None and not isinstance(layer, DirectDispatch):
        layer = getattr(layer, "app", None)
    assert layer is not None, "DirectDispatch is not in the app's middleware stack"
    return layer


def test_the_dispatch_takes_a_request_only_where_the_router_would_take_the_direct_route(
    server: LiveServer, setup: dict[str, Any]
) -> None:
    """For every path the app declares (ids filled in) and every method, the dispatch's choice is the router's
    first matching route when that route has a direct handler, and nothing otherwise: a literal path that an
    id pattern would also match (search, count, stream, start-tasks...) is never taken for the id route."""
    dispatch = _dispatch(server)
    one = setup["ids"][0]
    paths = {p.replace("{conversation_id}", one) for p in server.app.openapi()["paths"]}
    paths |= {re.sub(r"\{[^}]+\}", one, p) for p in server.app.openapi()["paths"]}
    taken = set()
    for path in sorted(paths):
        for method in ("GET", "PATCH", "POST", "DELETE", "PUT", "HEAD"):
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            found = dispatch._target(scope)
            target = found[0] if found else None
            try:
                route = _route(server, method, path)
            except AssertionError:
                route = None
            expected = route if route is not None and direct_handler_of(route.endpoint) is not None else None
            assert (target.route if target else None) is expected, (method, path)
            if target:
                taken.add((method, target.route.path))
    assert taken == {
        ("GET", "/api/v1/app-conversations/search"),
        ("GET", "/api/v1/app-conversations/{conversation_id}"),
        ("PATCH", "/api/v1/app-conversations/{conversation_id}"),
        ("GET", "/api/v1/conversation/{conversation_id}/events/search"),
    }
    # Under a root path the router strips it before matching; the dispatch leaves such requests alone.
    assert (
        dispatch._target(
            {"type": "http", "method": "GET", "path": f"/api/v1/app-conversations/{one}", "root_path": "/x"}
        )
        is None
    )


def test_a_request_the_direct_handler_declines_reaches_the_route_with_its_body(
    server: LiveServer, setup: dict[str, Any]
) -> None:
    """The direct PATCH handler reads the body before it declines (a title that is not a string); the route
    must get the same body again: its 422 names the field, and a body it accepts after a declined read
    (a Content-Type the handler does not take) is applied."""
    key, one = setup["key"], setup["ids"][0]
    client = server.client(key)
    r = client.patch(
        f"/api/v1/app-conversations/{one}", content=b'{"title": 1}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "title" in r.text
    r = client.patch(
        f"/api/v1/app-conversations/{one}",
        content=b'{"title": "through the route"}',
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert r.status_code == 200, r.text
    assert client.get(f"/api/v1/app-conversations/{one}").json()["title"] == "through the route"
