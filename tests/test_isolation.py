"""The isolation matrix: every route of the app, exercised by user B (and by nobody) against user A's things.

`MATRIX` has an entry for every (method, path template) the app serves, enumerated from `app.routes`;
a route without an entry fails `test_every_route_has_an_entry` with the line to add. Each entry lists
probes: a request as B (API key), as B's sandbox (its session key, for the agent callbacks) or as an
anonymous caller, aimed at A's conversation (private, and public), start task, sandbox, events, settings,
and what must come back. Every answer of every probe must then:

- have the expected status, and never 403 (another user's thing is missing, not forbidden);
- contain none of A's private data, in body or headers: ids of A's private conversation, sandbox,
  start task, events and user, titles, tag keys and values, event text, LLM settings, keys (a value B
  sent in a request itself, such as an id it asked for, is not held against the answers);
- for probes marked `like_missing`: be the same answer as the same request aimed at ids that exist
  nowhere (status, headers that matter, body with the ids put back and the request id left out), so
  not even existence leaks.

Afterwards A's view of all of it is exactly what it was before (no write went through), and each
authenticated route answers an anonymous caller 401.

A's records are made through the service layer and direct inserts; no agent server runs. Start probes
use stream-start, which answers when the start task has finished (ERROR here: the server has no
agent runtime), so the task's `detail` is compared too.

One deliberate exception, inherent to client-chosen ids: starting with `conversation_id` set to an id
that is taken (by anyone) fails with "conversation ... already exists", which a free id would not. The
id is random (122 bits), so this confirms only what the caller already knows; the probe checks the
answer holds nothing else of A's.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from threadline.auth.service import User, authenticate_key
from threadline.console import pages
from threadline.conversations.tables import start_tasks
from threadline.core.ids import new_id

API = "/api/v1/app-conversations"
EVENTS = "/api/v1/conversation/{conv}/events"
SHARED = "/api/v1/shared-conversations"
STATIC_PREFIX = pages.STATIC_PREFIX
HOOKS = "/api/v1/webhooks"

# -- the routes of the app ------------------------------------------------------------------------


def app_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path template) the app serves, included routers flattened."""
    found: set[tuple[str, str]] = set()

    def add(route: Any) -> None:
        for method in getattr(route, "methods", None) or ():
            found.add((method, route.path))

    for route in app.routes:
        if isinstance(getattr(route, "path", None), str):
            add(route)
        elif hasattr(route, "effective_route_contexts"):  # FastAPI's included routers (0.16x)
            for context in route.effective_route_contexts():
                add(context.original_route)
        else:
            raise AssertionError(f"a route of unknown kind: {route!r}; teach app_routes() to enumerate it")
    return found


# -- A's world ------------------------------------------------------------------------------------


def _insert_sandbox(server: LiveServer, user_id: str, status: str) -> tuple[str, str]:
    return server.sandbox(user_id, status)


def _insert_task(server: LiveServer, user_id: str, conversation_id: str, sandbox_id: str) -> str:
    task_id = new_id()
    now = dt.datetime.now(dt.UTC)

    async def insert() -> None:
        async with server.ctx.db.write() as conn:
            await conn.execute(
                start_tasks.insert().values(
                    id=task_id,
                    user_id=user_id,
                    status="READY",
                    app_conversation_id=conversation_id,
                    sandbox_id=sandbox_id,
                    agent_server_url="http://127.0.0.1:1/a-private-url",
                    request={"title": "alice-task-title-5b7e", "tags": {"alice-task-tag": "x"}},
                    history=[{"status": "READY", "at": now.isoformat()}],
                    created_at=now,
                    updated_at=now,
                )
            )

    server.run(insert())
    return task_id


def _message(text: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "timestamp": dt.datetime(2026, 3, 1, 12, 0, 0).isoformat(),
        "source": "agent",
        "kind": "MessageEvent",
        "llm_message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
    }


@dataclass
class World:
    server: LiveServer
    alice: User
    alice_key: str
    alice_client: httpx.Client
    bob: User
    bob_client: httpx.Client
    bob_sandbox_key: str
    anonymous: httpx.Client
    ids: dict[str, str] = field(default_factory=dict)
    # What no answer to B or to nobody may contain, unless B sent it in a request before.
    private: set[str] = field(default_factory=set)
    sent: str = ""

    def snapshot(self) -> Any:
        """A's whole view of A's things, as A reads it."""
        c, ids = self.alice_client, self.ids
        convs = [c.get(f"{API}/{ids[k]}").json() for k in ("conv", "public_conv")]
        return {
            "conversations": convs,
            "search": c.get(f"{API}/search").json(),
            "events": [c.get(f"/api/v1/conversation/{ids[k]}/events/search").json() for k in ("conv", "public_conv")],
            "tasks": c.get(f"{API}/start-tasks/search").json(),
            "sandboxes": c.get("/api/v1/sandboxes", params={"id": [ids["sandbox"]]}).json(),
            "settings": c.get("/api/v1/settings").json(),
            "secrets": c.get("/api/v1/secrets").json(),
            "me": c.get("/api/v1/users/me").json(),
        }


@pytest.fixture
def world(server_factory: Callable[..., LiveServer], tmp_path: Path) -> Iterator[World]:
    # An LLM model, so starts get past settings to the checks that matter; no agent runtime, so any
    # sandbox start fails at once.
    server = server_factory(runtime_dir=tmp_path / "no-runtime", llm_model="openai/server-default")
    alice, alice_key = server.user("alice-owner-9d2c")
    bob, bob_key = server.user("bob-other-41aa")
    a_sandbox, a_session_key = _insert_sandbox(server, alice.id, "PAUSED")
    b_sandbox, b_session_key = _insert_sandbox(server, bob.id, "PAUSED")
    conv = server.conversation(
        alice.id,
        sandbox_id=a_sandbox,
        title="alice-private-title-3f1e",
        tags={"alice-tag-key-77c1": "alice-tag-value-0be2"},
        public=False,
        selected_repository="alice-org-aa1/alice-repo-c0de",
        llm_model="openai/alice-conv-model-6a4d",
    )
    public_conv = server.conversation(
        alice.id,
        sandbox_id=a_sandbox,
        title="alice-public-title",
        tags={"alice-public-tag-e5f0": "alice-public-tag-value-19b3"},
        public=True,
    )
    server.conversation(bob.id, sandbox_id=b_sandbox, title="bob's own")
    task_id = _insert_task(server, alice.id, conv["id"], a_sandbox)
    private_event = _message("alice-event-text-8c2b")
    public_event = _message("alice-public-event-text")
    with httpx.Client(base_url=server.base_url, headers={"X-Session-API-Key": a_session_key}) as agent:
        for conversation_id, event in ((conv["id"], private_event), (public_conv["id"], public_event)):
            r = agent.post(f"{HOOKS}/events/{conversation_id}", json=[event])
            assert r.status_code == 200, r.text
    alice_client = server.client(alice_key)
    r = alice_client.post(
        "/api/v1/settings",
        json={
            "llm_model": "openai/alice-model-2e9f",
            "llm_base_url": "http://alice-llm-4d1b.invalid/v1",
            "llm_api_key": "alice-llm-key-a8f3e1",
        },
    )
    assert r.status_code == 200, r.text
    r = alice_client.post(
        "/api/v1/secrets",
        json={"name": "ALICE_SECRET_5E1F", "value": "alice-secret-value-9a7c", "description": "alice-secret-desc-1b2d"},
    )
    assert r.status_code == 201, r.text
    etag = alice_client.get(f"{API}/{conv['id']}").headers["ETag"]
    page = alice_client.get(f"{API}/search", params={"limit": 1}).json()
    assert page["next_page_id"]
    world = World(
        server=server,
        alice=alice,
        alice_key=alice_key,
        alice_client=alice_client,
        bob=bob,
        bob_client=server.client(bob_key),
        bob_sandbox_key=b_session_key,
        anonymous=server.client(),
    )
    world.ids = {
        "conv": conv["id"],
        "public_conv": public_conv["id"],
        "sandbox": a_sandbox,
        "task": task_id,
        "event": private_event["id"],
        "public_event": public_event["id"],
        "key": _key_id(server, alice_key),
    }
    world.private = {
        conv["id"],
        str(uuid.UUID(conv["id"])),
        a_sandbox,
        str(uuid.UUID(a_sandbox)),
        task_id,
        private_event["id"],
        alice.id,
        alice.name,
        alice_key,
        a_session_key,
        "alice-private-title-3f1e",
        "alice-tag-key-77c1",
        "alice-tag-value-0be2",
        "alice-public-tag-e5f0",
        "alice-public-tag-value-19b3",
        "alice-org-aa1",
        "alice-conv-model-6a4d",
        "alice-task-title-5b7e",
        "alice-task-tag",
        "a-private-url",
        "alice-event-text-8c2b",
        "alice-model-2e9f",
        "alice-llm-4d1b",
        "alice-llm-key-a8f3e1",
        "ALICE_SECRET_5E1F",
        "alice-secret-value-9a7c",
        "alice-secret-desc-1b2d",
        etag.strip('"'),
        page["next_page_id"],
    }
    world.private.add(world.ids["key"])
    world.ids["etag"] = etag
    world.ids["page"] = page["next_page_id"]
    yield world
    for client in (alice_client, world.bob_client, world.anonymous):
        client.close()


def _key_id(server: LiveServer, key: str) -> str:
    found = server.run(authenticate_key(server.ctx.db, key))
    assert found is not None
    return found[1]


# -- probes ---------------------------------------------------------------------------------------

# Placeholders in probe URLs, bodies and headers, replaced by A's ids (or, for the comparison with a
# missing thing, by fresh ids of the same shape).
ID_PLACEHOLDERS = ("conv", "public_conv", "sandbox", "task", "event", "key")


@dataclass(frozen=True)
class Probe:
    method: str
    url: str
    expect: int
    # "bob" (B's API key), "bob_sandbox" (B's sandbox session key), "anonymous"
    who: str = "bob"
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    # The same answer as for ids that exist nowhere.
    like_missing: bool = False
    # Further checks of the answer.
    check: Check | None = None
    # What of the answer is compared for `like_missing` (default: the body without request_id).
    view: Callable[[httpx.Response], Any] | None = None


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, id_ in ids.items():
            value = value.replace("{" + name + "}", id_).replace("{" + name + ":dashed}", _dashed(id_))
        return value
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


def _dashed(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def _body(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        return r.text
    if isinstance(body, dict):
        body.pop("request_id", None)
    return body


Check = Callable[[httpx.Response, "World"], None]


def _empty_items(r: httpx.Response, world: World) -> None:
    assert r.json()["items"] == [], r.json()


def _only_bobs(r: httpx.Response, world: World) -> None:
    for item in r.json()["items"]:
        assert item["created_by_user_id"] == world.bob.id, item


def _equals(expected: Any) -> Check:
    def check(r: httpx.Response, world: World) -> None:
        assert r.json() == expected, r.json()

    return check


def _final_task(r: httpx.Response) -> Any:
    """Of a stream-start answer: how the task ended (how many steps were streamed is timing)."""
    last = json.loads(r.text)[-1]
    return last["status"], last["detail"]


def _already_exists(r: httpx.Response, world: World) -> None:
    status, detail = _final_task(r)
    assert status == "ERROR" and "already exists" in detail, (status, detail)


def _shared_public_view(r: httpx.Response, world: World) -> None:
    private, public = r.json()
    assert private is None
    assert public is not None and public["title"] == "alice-public-title"
    assert not {"tags", "created_by_user_id", "sandbox_id", "session_api_key"} & set(public)


def _public_events(r: httpx.Response, world: World) -> None:
    texts = json.dumps(r.json())
    assert "alice-public-event-text" in texts


A_CONV = f"{API}/{{conv}}"
A_PUBLIC = f"{API}/{{public_conv}}"
START = {"title": "bob starts", "secrets": {"BOB_TOKEN": "bob-secret"}}
MESSAGE = {"content": [{"type": "text", "text": "from bob"}]}

MATRIX: dict[tuple[str, str], list[Probe]] = {
    # -- public, no user data -------------------------------------------------------------------
    ("GET", "/openapi.json"): [Probe("GET", "/openapi.json", 200)],
    ("HEAD", "/openapi.json"): [Probe("HEAD", "/openapi.json", 200)],
    ("GET", "/docs"): [Probe("GET", "/docs", 200, who="anonymous")],
    ("HEAD", "/docs"): [Probe("HEAD", "/docs", 200, who="anonymous")],
    ("GET", "/docs/oauth2-redirect"): [Probe("GET", "/docs/oauth2-redirect", 200, who="anonymous")],
    ("HEAD", "/docs/oauth2-redirect"): [Probe("HEAD", "/docs/oauth2-redirect", 200, who="anonymous")],
    ("GET", "/redoc"): [Probe("GET", "/redoc", 200, who="anonymous")],
    ("HEAD", "/redoc"): [Probe("HEAD", "/redoc", 200, who="anonymous")],
    ("GET", "/alive"): [Probe("GET", "/alive", 200, who="anonymous")],
    ("GET", "/health"): [Probe("GET", "/health", 200, who="anonymous")],
    ("GET", "/ready"): [Probe("GET", "/ready", 200, who="anonymous")],
    ("GET", "/server_info"): [Probe("GET", "/server_info", 200, who="anonymous")],
    # Route templates only, never raw paths: no id of anybody's ends up in a label.
    ("GET", "/metrics"): [Probe("GET", "/metrics", 200, who="anonymous")],
    # -- users ------------------------------------------------------------------------------------
    ("GET", "/api/v1/users/me"): [Probe("GET", "/api/v1/users/me", 200)],
    # A's key by its id: as missing as a key that does not exist (and A's key keeps working: the snapshot).
    ("DELETE", "/api/v1/users/me/api-keys/{key_id}"): [
        Probe("DELETE", "/api/v1/users/me/api-keys/{key}", 404, like_missing=True)
    ],
    # -- starting ---------------------------------------------------------------------------------
    ("POST", API): [
        # Answered at once (WORKING); how the task ends is what the stream-start probes check.
        Probe("POST", API, 200, json={**START, "sandbox_id": "{sandbox}"}),
        Probe("POST", API, 200, json={**START, "parent_conversation_id": "{conv:dashed}"}),
    ],
    ("POST", f"{API}/stream-start"): [
        Probe(
            "POST",
            f"{API}/stream-start",
            200,
            json={**START, "sandbox_id": "{sandbox}"},
            like_missing=True,
            view=_final_task,
        ),
        Probe(
            "POST",
            f"{API}/stream-start",
            200,
            json={**START, "parent_conversation_id": "{conv:dashed}"},
            like_missing=True,
            view=_final_task,
        ),
        Probe(
            "POST",
            f"{API}/stream-start",
            200,
            json={**START, "parent_conversation_id": "{public_conv}"},
            like_missing=True,
            view=_final_task,
        ),
        # The one inherent exception (see the module doc): the id is taken, and that is all it says.
        Probe("POST", f"{API}/stream-start", 200, json={**START, "conversation_id": "{conv}"}, check=_already_exists),
    ],
    # -- start tasks ------------------------------------------------------------------------------
    ("GET", f"{API}/start-tasks/search"): [
        Probe("GET", f"{API}/start-tasks/search", 200, check=_only_bobs),
        # B's own start tasks may name A's conversation id (B asked for it above); A's never show.
        Probe("GET", f"{API}/start-tasks/search", 200, params={"conversation_id__eq": "{conv}"}, check=_only_bobs),
    ],
    ("GET", f"{API}/start-tasks/count"): [
        Probe(
            "GET", f"{API}/start-tasks/count", 200, params={"conversation_id__eq": "{public_conv}"}, check=_equals(0)
        ),
    ],
    ("GET", f"{API}/start-tasks"): [
        Probe("GET", f"{API}/start-tasks", 200, params={"ids": ["{task}"]}, check=_equals([None]), like_missing=True),
    ],
    # -- conversations ----------------------------------------------------------------------------
    ("GET", f"{API}/search"): [
        Probe("GET", f"{API}/search", 200, check=_only_bobs),
        Probe("GET", f"{API}/search", 200, params={"sandbox_id__eq": "{sandbox}"}, check=_empty_items),
        Probe("GET", f"{API}/search", 200, params={"parent_conversation_id__eq": "{conv}"}, check=_empty_items),
        Probe(
            "GET", f"{API}/search", 200, params={"tag": "alice-tag-key-77c1:alice-tag-value-0be2"}, check=_empty_items
        ),
        Probe("GET", f"{API}/search", 200, params={"title__contains": "alice"}, check=_empty_items),
        # A's page token: B's filters on B's data (the token is bound to its filters, not its user, and
        # points at a position only).
        Probe("GET", f"{API}/search", 200, params={"limit": 1, "page_id": "{page}"}),
    ],
    ("GET", f"{API}/count"): [
        Probe("GET", f"{API}/count", 200, params={"sandbox_id__eq": "{sandbox}"}, check=_equals(0)),
        Probe("GET", f"{API}/count", 200, params={"tag_key": "alice-tag-key-77c1"}, check=_equals(0)),
        Probe("GET", f"{API}/count", 200, params={"public__eq": "true"}, check=_equals(0)),
    ],
    ("GET", API): [
        Probe(
            "GET", API, 200, params={"ids": ["{conv}", "{public_conv}"]}, check=_equals([None, None]), like_missing=True
        ),
    ],
    # -- pending messages: B cannot queue into A's conversation or start ---------------------------
    ("POST", "/api/v1/conversations/{conversation_id}/pending-messages"): [
        Probe("POST", "/api/v1/conversations/{conv}/pending-messages", 404, json=MESSAGE, like_missing=True),
        Probe("POST", "/api/v1/conversations/{task}/pending-messages", 404, json=MESSAGE, like_missing=True),
    ],
    # -- reviewing A's work: B sees what an unknown conversation shows ------------------------------
    ("GET", f"{API}/{{conversation_id}}/git/changes"): [
        Probe("GET", f"{A_CONV}/git/changes", 404, like_missing=True),
        Probe("GET", f"{A_PUBLIC}/git/changes", 404, like_missing=True),
    ],
    ("GET", f"{API}/{{conversation_id}}/git/diff"): [
        Probe("GET", f"{A_CONV}/git/diff", 404, params={"path": "README.md"}, like_missing=True),
    ],
    ("GET", f"{API}/{{conversation_id}}/skills"): [
        Probe("GET", f"{A_CONV}/skills", 404, like_missing=True),
        Probe("GET", f"{A_PUBLIC}/skills", 404, like_missing=True),
    ],
    ("GET", f"{API}/{{conversation_id}}/download"): [
        Probe("GET", f"{A_CONV}/download", 404, like_missing=True),
        Probe("GET", f"{A_PUBLIC}/download", 404, like_missing=True),
    ],
    ("GET", f"{API}/{{conversation_id}}"): [
        Probe("GET", A_CONV, 404, like_missing=True),
        Probe("GET", f"{API}/{{conv:dashed}}", 404, like_missing=True),
        Probe("GET", A_PUBLIC, 404, like_missing=True),
        # A's current ETag: still 404, not 304.
        Probe("GET", A_CONV, 404, headers={"If-None-Match": "{etag}"}, like_missing=True),
    ],
    ("PATCH", f"{API}/{{conversation_id}}"): [
        Probe("PATCH", A_CONV, 404, json={"title": "bob was here", "tags": {"x": "y"}}, like_missing=True),
        Probe("PATCH", A_PUBLIC, 404, json={"public": False}, like_missing=True),
        # Preconditions say nothing either: not 412.
        Probe("PATCH", A_CONV, 404, json={"title": "t"}, headers={"If-Match": '"0-0"'}, like_missing=True),
        Probe("PATCH", A_CONV, 404, json={"title": "t"}, headers={"If-Match": "*"}, like_missing=True),
    ],
    ("DELETE", f"{API}/{{conversation_id}}"): [
        Probe("DELETE", A_CONV, 404, like_missing=True),
        Probe("DELETE", A_CONV, 404, headers={"If-Match": '"1-0"'}, like_missing=True),
        Probe("DELETE", A_PUBLIC, 404, like_missing=True),
    ],
    ("POST", f"{API}/{{conversation_id}}/send-message"): [
        Probe(
            "POST",
            f"{A_CONV}/send-message",
            404,
            json={"content": [{"type": "text", "text": "hi"}]},
            like_missing=True,
        ),
    ],
    # -- events -----------------------------------------------------------------------------------
    ("GET", "/api/v1/conversation/{conversation_id}/events/search"): [
        Probe("GET", f"{EVENTS}/search", 404, like_missing=True),
        Probe("GET", "/api/v1/conversation/{public_conv}/events/search", 404, like_missing=True),
    ],
    ("GET", "/api/v1/conversation/{conversation_id}/events/count"): [
        Probe("GET", f"{EVENTS}/count", 404, like_missing=True),
    ],
    ("GET", "/api/v1/conversation/{conversation_id}/events"): [
        Probe("GET", EVENTS, 404, params={"id": ["{event}"]}, like_missing=True),
    ],
    # -- sandboxes --------------------------------------------------------------------------------
    ("GET", "/api/v1/sandboxes/search"): [Probe("GET", "/api/v1/sandboxes/search", 200, check=_only_bobs)],
    ("GET", "/api/v1/sandboxes"): [
        Probe("GET", "/api/v1/sandboxes", 200, params={"id": ["{sandbox}"]}, check=_equals([None]), like_missing=True),
    ],
    ("POST", "/api/v1/sandboxes"): [Probe("POST", "/api/v1/sandboxes", 200)],
    ("POST", "/api/v1/sandboxes/{sandbox_id}/pause"): [
        Probe("POST", "/api/v1/sandboxes/{sandbox}/pause", 404, like_missing=True),
    ],
    ("POST", "/api/v1/sandboxes/{sandbox_id}/resume"): [
        Probe("POST", "/api/v1/sandboxes/{sandbox}/resume", 404, like_missing=True),
    ],
    ("DELETE", "/api/v1/sandboxes/{sandbox_id}"): [
        Probe("DELETE", "/api/v1/sandboxes/{sandbox}", 404, like_missing=True),
    ],
    ("DELETE", "/api/v1/sandboxes"): [
        Probe("DELETE", "/api/v1/sandboxes", 404, params={"sandbox_id": "{sandbox}"}, like_missing=True),
    ],
    ("GET", "/api/v1/sandbox-specs/search"): [Probe("GET", "/api/v1/sandbox-specs/search", 200)],
    ("GET", "/api/v1/sandbox-specs"): [Probe("GET", "/api/v1/sandbox-specs", 200, params={"id": ["bwrap"]})],
    # -- the proxy route to isolated agent servers: only the sandbox's own session key passes --------
    **{
        (method, "/agent-server/{sandbox_id}/{path:path}"): [
            Probe(method, "/agent-server/{sandbox}/api/conversations/search", 401),
            Probe(method, "/agent-server/{sandbox}/api/conversations/search", 401, who="bob_sandbox"),
        ]
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
    },
    # -- settings ---------------------------------------------------------------------------------
    ("GET", "/api/v1/settings"): [Probe("GET", "/api/v1/settings", 200)],
    ("POST", "/api/v1/settings"): [
        Probe("POST", "/api/v1/settings", 200, json={"llm_model": "openai/bob-model", "llm_api_key": "bob-llm-key"}),
    ],
    # -- secrets: B has a namespace of its own; A's are neither readable nor writable ------------------
    ("GET", "/api/v1/secrets"): [Probe("GET", "/api/v1/secrets", 200)],
    ("POST", "/api/v1/secrets"): [Probe("POST", "/api/v1/secrets", 201, json={"name": "BOB_OWN", "value": "bob-v"})],
    ("GET", "/api/v1/secrets/{name}"): [Probe("GET", "/api/v1/secrets/ALICE_SECRET_5E1F", 404)],
    ("PATCH", "/api/v1/secrets/{name}"): [
        Probe("PATCH", "/api/v1/secrets/ALICE_SECRET_5E1F", 404, json={"value": "bob was here"}),
    ],
    ("DELETE", "/api/v1/secrets/{name}"): [Probe("DELETE", "/api/v1/secrets/ALICE_SECRET_5E1F", 404)],
    # The lookup of A's sandbox's secrets: only A's sandbox's own session key (B's is refused, like B's API key).
    ("GET", "/api/v1/sandboxes/{sandbox_id}/settings/secrets"): [
        Probe("GET", "/api/v1/sandboxes/{sandbox}/settings/secrets", 401, who="bob_sandbox"),
        Probe("GET", "/api/v1/sandboxes/{sandbox}/settings/secrets", 401),
    ],
    ("GET", "/api/v1/sandboxes/{sandbox_id}/settings/secrets/{name}"): [
        Probe("GET", "/api/v1/sandboxes/{sandbox}/settings/secrets/ALICE_SECRET_5E1F", 401, who="bob_sandbox"),
        Probe("GET", "/api/v1/sandboxes/{sandbox}/settings/secrets/ALICE_SECRET_5E1F", 401),
    ],
    # -- agent callbacks, with B's sandbox's session key ------------------------------------------
    ("POST", f"{HOOKS}/conversations"): [
        Probe(
            "POST",
            f"{HOOKS}/conversations",
            404,
            who="bob_sandbox",
            json={"id": "{conv:dashed}", "title": "hijacked", "execution_status": "error"},
            like_missing=True,
        ),
        Probe(
            "POST",
            f"{HOOKS}/conversations",
            404,
            who="bob_sandbox",
            json={"id": "{public_conv}", "title": "hijacked"},
            like_missing=True,
        ),
        # B's API key is no session key.
        Probe("POST", f"{HOOKS}/conversations", 401, json={"id": "{conv}", "title": "hijacked"}),
    ],
    ("POST", f"{HOOKS}/events/{{conversation_id}}"): [
        Probe("POST", f"{HOOKS}/events/{{conv}}", 404, who="bob_sandbox", json=[_message("bob")], like_missing=True),
        Probe(
            "POST",
            f"{HOOKS}/events/{{public_conv:dashed}}",
            404,
            who="bob_sandbox",
            json=[_message("bob")],
            like_missing=True,
        ),
        Probe("POST", f"{HOOKS}/events/{{conv}}", 401, json=[_message("bob")]),
    ],
    # -- shared views: A's public conversation is public by design, the private one is not ----------
    ("GET", SHARED): [
        Probe(
            "GET", SHARED, 200, who="anonymous", params={"ids": ["{conv}", "{public_conv}"]}, check=_shared_public_view
        ),
        Probe("GET", SHARED, 200, params={"ids": ["{conv}"]}, check=_equals([None]), like_missing=True),
    ],
    ("GET", f"{SHARED}/{{conversation_id}}/events/search"): [
        Probe("GET", f"{SHARED}/{{conv}}/events/search", 404, who="anonymous", like_missing=True),
        Probe("GET", f"{SHARED}/{{conv}}/events/search", 404, like_missing=True),
        Probe("GET", f"{SHARED}/{{public_conv}}/events/search", 200, who="anonymous", check=_public_events),
    ],
    # -- live streams: only their refusals are probed (an accepted stream never ends by itself) -------
    ("GET", f"{API}/stream"): [Probe("GET", f"{API}/stream", 401, who="anonymous")],
    ("GET", "/api/v1/conversation/{conversation_id}/events/stream"): [
        Probe("GET", "/api/v1/conversation/{conv}/events/stream", 404, like_missing=True),
        Probe("GET", "/api/v1/conversation/{public_conv}/events/stream", 404, like_missing=True),
    ],
    ("GET", f"{SHARED}/{{conversation_id}}/events/stream"): [
        Probe("GET", f"{SHARED}/{{conv}}/events/stream", 404, who="anonymous", like_missing=True),
        Probe("GET", f"{SHARED}/{{conv}}/events/stream", 404, like_missing=True),
    ],
    # -- the web console: pages take the session cookie only (an API key header signs no page in) --------
    ("GET", "/"): [Probe("GET", "/", 303, who="anonymous"), Probe("GET", "/", 303)],
    ("GET", "/conversations"): [Probe("GET", "/conversations", 303, who="anonymous")],
    ("GET", "/conversations/new"): [Probe("GET", "/conversations/new", 303, who="anonymous")],
    ("GET", "/costs"): [Probe("GET", "/costs", 303, who="anonymous")],
    ("GET", "/conversations/{conversation_id}"): [
        Probe("GET", "/conversations/{conv}", 303, who="anonymous", like_missing=True),
        Probe("GET", "/conversations/{conv}", 303, like_missing=True),
    ],
    # A shell that asks the shared API (which says 404 for a private conversation), the same for any id.
    ("GET", "/shared/{conversation_id}"): [Probe("GET", "/shared/{conv}", 200, who="anonymous", like_missing=True)],
    ("GET", "/console/static/{build}/{name}"): [Probe("GET", f"{STATIC_PREFIX}/api.js", 200, who="anonymous")],
    ("GET", "/sign-in"): [Probe("GET", "/sign-in", 200, who="anonymous", view=lambda r: r.status_code)],
    # No sign-in form of this browser (its cookie): refused.
    ("POST", "/sign-in"): [Probe("POST", "/sign-in", 400, who="anonymous", view=lambda r: r.status_code)],
    ("POST", "/sign-out"): [Probe("POST", "/sign-out", 303, who="anonymous")],
}

# The console's forms answer a person: their refusals are HTML pages, not problems.
HTML_FORMS = {"/sign-in"}

# Routes that answer without credentials whoever asks (everything else must answer nobody 401).
PUBLIC = {
    "/",
    "/conversations",
    "/conversations/new",
    "/costs",
    "/conversations/{conversation_id}",
    "/shared/{conversation_id}",
    "/console/static/{build}/{name}",
    "/sign-in",
    "/sign-out",
    f"{SHARED}/{{conversation_id}}/events/stream",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/alive",
    "/health",
    "/ready",
    "/server_info",
    "/metrics",
    SHARED,
    f"{SHARED}/{{conversation_id}}/events/search",
}


def _client(world: World, who: str) -> httpx.Client:
    if who == "bob":
        return world.bob_client
    if who == "anonymous":
        return world.anonymous
    assert who == "bob_sandbox", who
    return httpx.Client(base_url=world.server.base_url, headers={"X-Session-API-Key": world.bob_sandbox_key})


def _send(world: World, probe: Probe, ids: dict[str, str]) -> httpx.Response:
    client = _client(world, probe.who)
    try:
        return client.request(
            probe.method,
            _fill(probe.url, ids),
            json=_fill(probe.json, ids),
            params=_fill(probe.params, ids),
            headers=_fill(probe.headers, ids),
            timeout=60,
        )
    finally:
        if probe.who == "bob_sandbox":
            client.close()


def _sent(probe: Probe, ids: dict[str, str]) -> str:
    return json.dumps([_fill(probe.url, ids), probe.json and _fill(probe.json, ids), _fill(probe.params, ids)])


def _leaks(private: set[str], answer: str, sent: str) -> list[str]:
    """A's values in the answer that B did not send itself. Compared without dashes: an answer may spell
    an id B sent dashed as hex, or the other way round."""
    answer, sent = answer.replace("-", ""), sent.replace("-", "")
    return sorted(s for s in private if s.replace("-", "") in answer and s.replace("-", "") not in sent)


def _normalised(probe: Probe, r: httpx.Response, ids: dict[str, str]) -> tuple[int, str]:
    view = probe.view(r) if probe.view else _body(r)
    text = json.dumps(view, sort_keys=True)
    for name in ID_PLACEHOLDERS:
        text = text.replace(ids[name], f"<{name}>").replace(_dashed(ids[name]), f"<{name}>")
    return r.status_code, text


def _check_probe(world: World, probe: Probe) -> None:
    ids = world.ids
    r = _send(world, probe, ids)
    label = f"{probe.who}: {probe.method} {_fill(probe.url, ids)} {probe.params or ''}"
    assert r.status_code != 403, f"{label}: 403 tells that something is there"
    assert r.status_code == probe.expect, f"{label}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400 and probe.url not in HTML_FORMS:
        assert r.headers["content-type"].startswith("application/problem+json"), label
    # B's own records echo what B sent before (its start tasks keep the ids it asked for).
    world.sent += _sent(probe, ids)
    sent = world.sent
    answer = r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    leaked = _leaks(world.private, answer, sent)
    assert not leaked, f"{label}: the answer holds A's {leaked}:\n{answer[:2000]}"
    if probe.check is not None:
        probe.check(r, world)
    if probe.like_missing:
        missing = dict(ids, **{name: new_id() for name in ID_PLACEHOLDERS})
        other = _send(world, probe, missing)
        assert _normalised(probe, r, ids) == _normalised(probe, other, missing), (
            f"{label}: A's thing and a missing one are told apart:\n{r.text[:1000]}\n---\n{other.text[:1000]}"
        )


# -- the tests ------------------------------------------------------------------------------------


def test_every_route_has_an_entry(server: LiveServer) -> None:
    routes = app_routes(server.app)
    assert ("GET", f"{API}/{{conversation_id}}") in routes and len(routes) > 30
    missing = sorted(routes - set(MATRIX))
    assert not missing, (
        "routes without an isolation entry; add to MATRIX in tests/test_isolation.py how user B exercises "
        "each against user A's resources and what B must see:\n"
        + "\n".join(f'    ("{m}", "{p}"): [Probe("{m}", "{p}", <status>, ...)],' for m, p in missing)
    )
    stale = sorted(set(MATRIX) - routes)
    assert not stale, f"MATRIX entries for routes the app does not have: {stale}"
    assert all(MATRIX[route] for route in MATRIX), "every entry needs at least one probe"


def test_isolation_matrix(world: World) -> None:
    before = world.snapshot()
    for route, probes in MATRIX.items():
        for probe in probes:
            _check_probe(world, probe)
        if route[1] not in PUBLIC:
            method, path = route
            url = re.sub(r"{\w+}", new_id(), path)
            r = world.anonymous.request(method, url, json=MATRIX[route][0].json and {})
            assert r.status_code == 401, f"anonymous {method} {path}: {r.status_code} {r.text[:300]}"
    assert world.snapshot() == before, "a request of B changed something of A's"
