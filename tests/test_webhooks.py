"""Agent-server callbacks: POST /api/v1/webhooks/conversations and POST /api/v1/webhooks/events/{id}.

No agent server runs here: each test inserts sandbox records with a session key it knows and plays the
agent's part over HTTP, with bodies built from the payloads captured in tests/support/samples/.
Stored values are read back through the public API (GET conversation, events search/count) or, for the
stored execution status (the API shows it only for a live sandbox), straight from the conversations table.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import secrets
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.conftest import LiveServer
from tests.support.records import message_event
from threadline.auth.service import User, hash_key
from threadline.conversations.tables import conversations
from threadline.core.ids import new_id
from threadline.events.tables import events
from threadline.sandboxes.tables import sandboxes

SAMPLES = Path(__file__).parent / "support" / "samples"
API = "/api/v1/app-conversations"
HOOKS = "/api/v1/webhooks"
# Agent event timestamps are naive (the agent runs with TZ=UTC); conversation times carry a "Z".
T0 = dt.datetime(2026, 11, 29, 9, 0, 0, 123456)


# -- helpers ------------------------------------------------------------------------------------


def _sample(name: str) -> Any:
    return json.loads((SAMPLES / f"{name}.json").read_text())["body"]


def _dashed(conversation_id: str) -> str:
    return str(uuid.UUID(conversation_id))


def _hex(conversation_id: str) -> str:
    return uuid.UUID(conversation_id).hex


def _z(at: dt.datetime) -> str:
    """An agent ConversationInfo time: UTC with a Z."""
    return at.isoformat() + "Z"


def _aware(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC)


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _add_sandbox(server: LiveServer, user_id: str, status: str = "RUNNING") -> tuple[str, str]:
    """Insert a sandbox record the way the sandbox service does; returns (sandbox id, session key)."""
    return server.sandbox(user_id, status)


def _stored(server: LiveServer, conversation_id: str) -> dict[str, Any]:
    """The conversation's row as stored, every column."""

    async def read() -> dict[str, Any]:
        async with server.ctx.db.read() as conn:
            row = (await conn.execute(select(conversations).where(conversations.c.id == conversation_id))).one()
            return dict(row._mapping)

    return server.run(read())


def _stored_event_count(server: LiveServer, conversation_id: str | None = None) -> int:
    async def read() -> int:
        query = select(func.count()).select_from(events)
        if conversation_id is not None:
            query = query.where(events.c.conversation_id == conversation_id)
        async with server.ctx.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    return server.run(read())


def _set_stored(server: LiveServer, conversation_id: str, **values: Any) -> None:
    async def write() -> None:
        async with server.ctx.db.write() as conn:
            await conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**values))

    server.run(write())


def _agent(server: LiveServer, key: str | None, **headers: str) -> httpx.Client:
    """A client that calls back like the agent server: X-Session-API-Key, no API key."""
    if key is not None:
        headers["X-Session-API-Key"] = key
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def _post_conversation(server: LiveServer, key: str | None, body: Any) -> httpx.Response:
    with _agent(server, key) as client:
        return client.post(f"{HOOKS}/conversations", json=body)


def _post_events(server: LiveServer, key: str | None, conversation_id: str, body: Any) -> httpx.Response:
    with _agent(server, key) as client:
        return client.post(f"{HOOKS}/events/{conversation_id}", json=body)


def _ok(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def _usage(
    model: str,
    cost: float,
    prompt: int = 0,
    completion: int = 0,
    *,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
    context_window: int = 0,
    per_turn: int = 0,
    response_id: str = "",
    budget: float | None = None,
) -> dict[str, Any]:
    """One entry of stats.usage_to_metrics, shaped like the agent's."""
    return {
        "model_name": model,
        "accumulated_cost": cost,
        "max_budget_per_task": budget,
        "accumulated_token_usage": {
            "model": model,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write,
            "reasoning_tokens": reasoning,
            "context_window": context_window,
            "per_turn_token": per_turn,
            "response_id": response_id,
        },
    }


def _info(conversation_id: str, **fields: Any) -> dict[str, Any]:
    """A ConversationInfo (the /conversations webhook body) for this conversation: the captured
    'paused' sample with the given top-level fields replaced."""
    body: dict[str, Any] = copy.deepcopy(_sample("webhook_conversation_paused"))
    body["id"] = _dashed(conversation_id)
    model = fields.pop("model", None)
    if model is not None:
        body["agent"]["llm"]["model"] = model
    body.update(fields)
    return body


def _state(key: str, value: Any, at: dt.datetime, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or str(uuid.uuid4()),
        "timestamp": at.isoformat(),
        "source": "environment",
        "parent_id": None,
        "key": key,
        "value": value,
        "kind": "ConversationStateUpdateEvent",
    }


def _message(text: str, at: dt.datetime, event_id: str | None = None) -> dict[str, Any]:
    return message_event(text, at, event_id)


def _search(client: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/conversation/{conversation_id}/events/search", params={"limit": 100})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_page_id"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


def _count(client: httpx.Client, conversation_id: str) -> int:
    r = client.get(f"/api/v1/conversation/{conversation_id}/events/count")
    assert r.status_code == 200, r.text
    count: int = r.json()
    return count


def _get(client: httpx.Client, conversation_id: str) -> dict[str, Any]:
    r = client.get(f"{API}/{conversation_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _snapshot(server: LiveServer, client: httpx.Client, conversation_id: str) -> tuple[Any, ...]:
    """Everything a callback could change about one conversation."""
    return _stored(server, conversation_id), _get(client, conversation_id), _count(client, conversation_id)


class Owner:
    """A user, their API client and a RUNNING sandbox of theirs with its session key."""

    def __init__(self, server: LiveServer, name: str) -> None:
        self.user: User
        self.user, self.api_key = server.user(name)
        self.client = server.client(self.api_key)
        self.sandbox_id, self.key = _add_sandbox(server, self.user.id)


@pytest.fixture
def alice(server: LiveServer) -> Iterator[Owner]:
    owner = Owner(server, "alice")
    yield owner
    owner.client.close()


@pytest.fixture
def bob(server: LiveServer) -> Iterator[Owner]:
    owner = Owner(server, "bob")
    yield owner
    owner.client.close()


# A delivery that, accepted, would change the conversation on every count: status, title, model,
# metrics, one stored event.
def _changing_info(conversation_id: str) -> dict[str, Any]:
    return _info(
        conversation_id,
        execution_status="error",
        title="Hijacked title",
        model="openai/other-model",
        updated_at=_z(T0),
        stats={"usage_to_metrics": {"agent": _usage("openai/other-model", 9.5, 900, 90)}},
    )


def _changing_events() -> list[dict[str, Any]]:
    return [
        _state("execution_status", "error", T0),
        _state("stats", {"usage_to_metrics": {"agent": _usage("openai/other-model", 9.5, 900, 90)}}, T0),
        _message("hello", T0),
    ]


# -- 1. authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["missing", "empty", "unknown", "api_key", "key_hash", "as_access_token"])
def test_callbacks_need_the_session_key_of_a_sandbox(server: LiveServer, alice: Owner, credential: str) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    headers: dict[str, str] = {
        "missing": {},
        "empty": {"X-Session-API-Key": ""},
        "unknown": {"X-Session-API-Key": secrets.token_urlsafe(32)},
        # The owner's own API key is no session key...
        "api_key": {"X-Session-API-Key": alice.api_key},
        # ...nor is what the database stores about the session key...
        "key_hash": {"X-Session-API-Key": hash_key(alice.key)},
        # ...nor is the session key sent where API keys go.
        "as_access_token": {"X-Access-Token": alice.key, "Authorization": f"Bearer {alice.key}"},
    }[credential]
    assert credential != "api_key" or alice.api_key.startswith("tl_")
    before = _snapshot(server, alice.client, cid)

    with _agent(server, None, **headers) as agent:
        _problem(agent.post(f"{HOOKS}/conversations", json=_changing_info(cid)), 401)
        for path_id in (_hex(cid), _dashed(cid)):
            _problem(agent.post(f"{HOOKS}/events/{path_id}", json=_changing_events()), 401)

    assert _snapshot(server, alice.client, cid) == before
    assert _stored_event_count(server) == 0

    # The same deliveries with the sandbox's key do change things: the refusals above were the key's doing.
    _ok(_post_conversation(server, alice.key, _changing_info(cid)))
    _ok(_post_events(server, alice.key, _hex(cid), _changing_events()))
    assert _get(alice.client, cid)["title"] == "Hijacked title"
    assert _stored(server, cid)["execution_status"] == "error"
    assert _count(alice.client, cid) == 3


def test_a_deleted_sandbox_key_no_longer_authenticates(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    _ok(_post_events(server, alice.key, _hex(conv["id"]), [_message("first", T0)]))

    async def delete_sandbox() -> None:
        async with server.ctx.db.write() as conn:
            await conn.execute(sandboxes.delete().where(sandboxes.c.id == alice.sandbox_id))

    server.run(delete_sandbox())
    before = _snapshot(server, alice.client, conv["id"])
    _problem(_post_conversation(server, alice.key, _changing_info(conv["id"])), 401)
    _problem(_post_events(server, alice.key, _hex(conv["id"]), _changing_events()), 401)
    assert _snapshot(server, alice.client, conv["id"]) == before


# -- 2. a sandbox reaches only its own conversations ------------------------------------------------


def test_a_sandbox_cannot_touch_conversations_of_another_sandbox(server: LiveServer, alice: Owner, bob: Owner) -> None:
    mine = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    other_sandbox_id, other_key = _add_sandbox(server, alice.user.id)
    same_user = server.conversation(alice.user.id, sandbox_id=other_sandbox_id, title="Same user")
    other_user = server.conversation(bob.user.id, sandbox_id=bob.sandbox_id, title="Other user")
    targets = [(same_user, alice.client), (other_user, bob.client)]
    before = {c["id"]: _snapshot(server, client, c["id"]) for c, client in targets}

    for conv, _ in targets:
        cid = conv["id"]
        # Exactly what a missing conversation gets: 404, no hint that it exists elsewhere.
        body = _problem(_post_conversation(server, alice.key, _changing_info(cid)), 404)
        assert "sandbox" not in body["detail"].lower()
        for path_id in (_hex(cid), _dashed(cid)):
            _problem(_post_events(server, alice.key, path_id, _changing_events()), 404)

    for conv, client in targets:
        assert _snapshot(server, client, conv["id"]) == before[conv["id"]]
    assert _stored_event_count(server) == 0

    # Each sandbox can still update its own conversation.
    _ok(_post_conversation(server, alice.key, _changing_info(mine["id"])))
    _ok(_post_events(server, other_key, _hex(same_user["id"]), [_message("own", T0)]))
    _ok(_post_events(server, bob.key, _hex(other_user["id"]), [_message("own", T0)]))
    assert _get(alice.client, mine["id"])["title"] == "Hijacked title"
    assert _count(alice.client, same_user["id"]) == 1
    assert _count(bob.client, other_user["id"]) == 1
    assert _count(alice.client, mine["id"]) == 0


def test_unknown_conversation_is_404(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    before = _snapshot(server, alice.client, conv["id"])
    unknown = new_id()
    _problem(_post_conversation(server, alice.key, _changing_info(unknown)), 404)
    _problem(_post_events(server, alice.key, unknown, _changing_events()), 404)
    _problem(_post_events(server, alice.key, _dashed(unknown), _changing_events()), 404)
    assert _snapshot(server, alice.client, conv["id"]) == before
    assert _stored_event_count(server) == 0


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _short_id(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:12]}...len{len(text)}"


@pytest.mark.parametrize(
    "bad_id",
    [
        _MISSING,
        None,
        42,
        4.5,
        True,
        [],
        {},
        ["10e17e39-0f90-4763-a4bb-c8af78da198d"],
        "",
        " ",
        "not-a-uuid",
        "g" * 32,
        "0" * 31,
        "0" * 33,
        "x" * 36,
        "10e17e39-0f90-4763-a4bb-c8af78da198",
        "10e17e39-0f90-4763-a4bb-c8af78da198dd",
        "1" * 5000,
        "\x00" * 32,
    ],
    ids=_short_id,
)
def test_malformed_conversation_id_in_body_is_404(server: LiveServer, alice: Owner, bad_id: Any) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    before = _snapshot(server, alice.client, conv["id"])
    body = _changing_info(conv["id"])
    if bad_id is _MISSING:
        del body["id"]
    else:
        body["id"] = bad_id
    _problem(_post_conversation(server, alice.key, body), 404)
    assert _snapshot(server, alice.client, conv["id"]) == before


@pytest.mark.parametrize(
    "bad_path",
    [
        "not-a-uuid",
        "g" * 32,
        "0" * 31,
        "0" * 33,
        "x" * 36,
        "10e17e39-0f90-4763-a4bb-c8af78da198dd",
        "1" * 5000,
        "%00" * 32,
        "%20" * 32,
        "%F0%9F%98%80",
        "None",
    ],
    ids=_short_id,
)
def test_malformed_conversation_id_in_path_is_404(server: LiveServer, alice: Owner, bad_path: str) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    before = _snapshot(server, alice.client, conv["id"])
    with _agent(server, alice.key) as agent:
        r = agent.post(f"{HOOKS}/events/{bad_path}", json=_changing_events())
    _problem(r, 404)
    assert _snapshot(server, alice.client, conv["id"]) == before
    assert _stored_event_count(server) == 0


# -- 3. what a conversation update stores --------------------------------------------------------------


def test_conversation_update_stores_status_title_model_and_summed_metrics(server: LiveServer, alice: Owner) -> None:
    untitled = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    titled = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id, title="Mine")
    usage = {
        "agent": _usage(
            "openai/agent-model",
            0.25,
            1000,
            100,
            cache_read=10,
            cache_write=20,
            reasoning=30,
            context_window=8000,
            per_turn=1100,
            response_id="chatcmpl-agent",
            budget=5.0,
        ),
        "condenser": _usage(
            "openai/condenser-model",
            0.125,
            200,
            20,
            cache_read=1,
            cache_write=2,
            reasoning=3,
            context_window=16000,
            per_turn=7,
            response_id="chatcmpl-condenser",
            budget=1.0,
        ),
        "title_llm": _usage("openai/title-model", 0.0625, 50, 5, context_window=4000, per_turn=55),
    }
    for conv in (untitled, titled):
        body = _info(
            conv["id"],
            execution_status="waiting_for_confirmation",
            title="Agent title",
            model="openai/agent-model",
            updated_at=_z(T0),
            stats={"usage_to_metrics": usage},
        )
        _ok(_post_conversation(server, alice.key, body))

    expected_metrics = {
        # Model, budget, per-turn count and response id are the agent's; costs and counts are summed
        # over all usage ids; the context window is the largest.
        "model_name": "openai/agent-model",
        "accumulated_cost": 0.4375,
        "max_budget_per_task": 5.0,
        "accumulated_token_usage": {
            "model": "openai/agent-model",
            "prompt_tokens": 1250,
            "completion_tokens": 125,
            "cache_read_tokens": 11,
            "cache_write_tokens": 22,
            "reasoning_tokens": 33,
            "context_window": 16000,
            "per_turn_token": 1100,
            "response_id": "chatcmpl-agent",
        },
    }
    got_untitled = _get(alice.client, untitled["id"])
    got_titled = _get(alice.client, titled["id"])
    assert got_untitled["title"] == "Agent title"
    assert got_titled["title"] == "Mine"
    for got, conv in ((got_untitled, untitled), (got_titled, titled)):
        assert got["llm_model"] == "openai/agent-model"
        assert got["metrics"] == expected_metrics
        stored = _stored(server, conv["id"])
        assert stored["execution_status"] == "waiting_for_confirmation"
        assert stored["execution_status_at"] == _aware(T0)
    assert _stored(server, untitled["id"])["title_set_by_user"] is False
    assert _stored(server, titled["id"])["title_set_by_user"] is True

    # A later automatic title replaces an automatic one, never the user's.
    for conv in (untitled, titled):
        _ok(_post_conversation(server, alice.key, _info(conv["id"], title="Better title", updated_at=_z(T0))))
    assert _get(alice.client, untitled["id"])["title"] == "Better title"
    assert _get(alice.client, titled["id"])["title"] == "Mine"


def test_captured_paused_webhook_is_stored_as_sent(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    sample = _sample("webhook_conversation_paused")
    sample["id"] = _dashed(conv["id"])
    _ok(_post_conversation(server, alice.key, sample))

    got = _get(alice.client, conv["id"])
    assert got["title"] == "Fake title"
    assert got["llm_model"] == "openai/fake-model"
    assert got["metrics"] == {
        "model_name": "openai/fake-model",
        "accumulated_cost": 0.01245,
        "max_budget_per_task": None,
        "accumulated_token_usage": {
            "model": "openai/fake-model",
            "prompt_tokens": 12410,
            "completion_tokens": 20,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "context_window": 0,
            "per_turn_token": 4123,
            "response_id": "",
        },
    }
    stored = _stored(server, conv["id"])
    assert stored["execution_status"] == "paused"
    assert stored["execution_status_at"] == _ts("2026-11-29T09:23:50.994597Z")
    # The conversation body carries no events.
    assert _count(alice.client, conv["id"]) == 0


def test_body_id_may_be_hex_and_path_id_may_be_dashed(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    body = _info(conv["id"], title="From hex id", updated_at=_z(T0))
    body["id"] = _hex(conv["id"]).upper()
    _ok(_post_conversation(server, alice.key, body))
    _ok(_post_events(server, alice.key, _dashed(conv["id"]), [_message("dashed", T0)]))
    assert _get(alice.client, conv["id"])["title"] == "From hex id"
    assert _count(alice.client, conv["id"]) == 1


# -- 4. fields the user owns ------------------------------------------------------------------------


USER_FIELDS = (
    "title",
    "public",
    "tags",
    "created_at",
    "selected_repository",
    "selected_branch",
    "git_provider",
    "trigger",
    "pr_number",
    "parent_conversation_id",
    "sub_conversation_ids",
    "created_by_user_id",
    "sandbox_id",
    "agent_kind",
)


def test_callbacks_never_reset_fields_the_user_set(server: LiveServer, alice: Owner) -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    conv = server.conversation(
        alice.user.id,
        sandbox_id=alice.sandbox_id,
        title="Mine",
        public=True,
        tags={"team": "core", "env": "dev"},
        selected_repository="acme/widgets",
        selected_branch="main",
        git_provider="github",
        trigger="gui",
        pr_number=[7],
        created_at=created,
    )
    cid = conv["id"]
    before = _get(alice.client, cid)
    assert before["created_at"] == "2026-01-02T03:04:05.678901Z"

    # Bodies full of other values for the user's fields, as an agent (or a buggy one) might send.
    body = _info(
        cid,
        title="Agent title",
        tags={"owner": "agent", "team": "other"},
        created_at="2026-11-29T09:22:53.674347Z",
        updated_at=_z(T0),
        execution_status="finished",
        public=False,
        selected_repository="evil/repo",
        selected_branch="other",
        git_provider="gitlab",
        trigger="slack",
        pr_number=[1, 2],
        parent_conversation_id=str(uuid.uuid4()),
        sub_conversation_ids=[str(uuid.uuid4())],
        stats={"usage_to_metrics": {"agent": _usage("openai/fake-model", 0.5, 500, 50)}},
    )
    _ok(_post_conversation(server, alice.key, body))
    full_state = copy.deepcopy(body)
    full_state["title"] = "Full state title"
    batch = [
        _state("tags", {"owner": "agent"}, T0 + dt.timedelta(seconds=1)),
        _state("title", "Event title", T0 + dt.timedelta(seconds=2)),
        _state("full_state", full_state, T0 + dt.timedelta(seconds=3)),
        _state("created_at", "2026-11-29T09:22:53Z", T0 + dt.timedelta(seconds=4)),
        _state("public", False, T0 + dt.timedelta(seconds=4)),
    ]
    _ok(_post_events(server, alice.key, _hex(cid), batch))

    after = _get(alice.client, cid)
    for field in USER_FIELDS:
        assert after[field] == before[field], field
    stored = _stored(server, cid)
    assert stored["title_set_by_user"] is True
    assert stored["created_at"] == created
    # Not vacuous: the deliveries were applied where they may be.
    assert stored["execution_status"] == "finished"
    assert after["metrics"]["accumulated_cost"] == 0.5
    assert _count(alice.client, cid) == len(batch)


def test_a_title_the_user_patched_survives_callbacks(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    _ok(_post_conversation(server, alice.key, _info(cid, title="Agent title", updated_at=_z(T0))))
    assert _get(alice.client, cid)["title"] == "Agent title"

    r = alice.client.patch(f"{API}/{cid}", json={"title": "Renamed by me"})
    assert r.status_code == 200, r.text
    _ok(_post_conversation(server, alice.key, _info(cid, title="Agent title 2", updated_at=_z(T0))))
    _ok(_post_events(server, alice.key, _hex(cid), [_state("title", "Agent title 3", T0)]))
    assert _get(alice.client, cid)["title"] == "Renamed by me"


# -- 5. metrics: concurrency and stale snapshots ---------------------------------------------------


def _snapshot_usage(i: int) -> dict[str, Any]:
    """Cumulative stats after step i: every counter grows with i (costs are exact binary fractions)."""
    return {
        "agent": _usage(
            "openai/fake-model",
            i / 64,
            1000 * i,
            10 * i,
            cache_read=i,
            cache_write=2 * i,
            reasoning=3 * i,
            context_window=100 * i,
            per_turn=7 * i,
            response_id=f"resp-{i}",
        ),
        "condenser": _usage("openai/fake-model", i / 128, 100 * i, i, context_window=50 * i),
    }


def _expected_metrics(i: int) -> dict[str, Any]:
    return {
        "model_name": "openai/fake-model",
        "accumulated_cost": 3 * i / 128,
        "max_budget_per_task": None,
        "accumulated_token_usage": {
            "model": "openai/fake-model",
            "prompt_tokens": 1100 * i,
            "completion_tokens": 11 * i,
            "cache_read_tokens": i,
            "cache_write_tokens": 2 * i,
            "reasoning_tokens": 3 * i,
            "context_window": 100 * i,
            "per_turn_token": 7 * i,
            "response_id": f"resp-{i}",
        },
    }


def _stats_delivery(server: LiveServer, key: str, cid: str, i: int, event_id: str | None = None) -> httpx.Response:
    """Snapshot i, through the events path for even i and the conversation path for odd i."""
    at = T0 + dt.timedelta(seconds=i)
    if i % 2:
        body = _info(cid, title=None, execution_status="running", updated_at=_z(at))
        body["stats"] = {"usage_to_metrics": _snapshot_usage(i)}
        return _post_conversation(server, key, body)
    event = _state("stats", {"usage_to_metrics": _snapshot_usage(i)}, at, event_id)
    return _post_events(server, key, _hex(cid), [event])


def test_concurrent_stats_snapshots_keep_the_maximum(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    n = 20
    order = list(range(1, n + 1))
    random.shuffle(order)
    barrier = threading.Barrier(n)
    done = threading.Event()
    seen: list[float] = []

    def deliver(i: int) -> tuple[int, int, str]:
        with _agent(server, alice.key) as agent:
            at = T0 + dt.timedelta(seconds=i)
            if i % 2:
                body = _info(cid, title=None, execution_status="running", updated_at=_z(at))
                body["stats"] = {"usage_to_metrics": _snapshot_usage(i)}
                request = agent.build_request("POST", f"{HOOKS}/conversations", json=body)
            else:
                event = _state("stats", {"usage_to_metrics": _snapshot_usage(i)}, at)
                request = agent.build_request("POST", f"{HOOKS}/events/{_hex(cid)}", json=[event])
            barrier.wait(timeout=60)
            r = agent.send(request)
            return i, r.status_code, r.text

    def watch() -> None:
        # Reads between the writes: the stored cost must never be seen going down.
        with server.client(alice.api_key) as reader:
            while True:  # at least one read, the last one after every delivery was answered
                finished = done.is_set()
                r = reader.get(f"{API}/{cid}")
                metrics = r.json()["metrics"] if r.status_code == 200 else {"accumulated_cost": -1.0}
                seen.append(metrics["accumulated_cost"] if metrics else 0.0)
                if finished:
                    return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(deliver, order))
    finally:
        done.set()
        watcher.join(timeout=60)
    assert [(i, status) for i, status, _ in results if status != 200] == [], results

    got = _get(alice.client, cid)
    assert got["metrics"] == _expected_metrics(n)
    assert seen == sorted(seen) and seen[0] >= 0.0 and seen[-1] == 3 * n / 128, seen
    stored = _stored(server, cid)
    assert stored["accumulated_cost"] == 3 * n / 128
    assert stored["prompt_tokens"] == 1100 * n
    # Every events delivery stored its one event, once.
    assert _count(alice.client, cid) == n // 2

    # A late, older snapshot after all that lowers nothing, on either path.
    before = _snapshot(server, alice.client, cid)
    for i in (1, 2, n - 1, n - 2):
        _ok(_stats_delivery(server, alice.key, cid, i))
    after = _snapshot(server, alice.client, cid)
    assert after[0] == before[0]
    assert after[1] == before[1]


def test_a_stale_snapshot_after_a_newer_one_lowers_nothing(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    _ok(_stats_delivery(server, alice.key, cid, 9))
    newer = _get(alice.client, cid)
    assert newer["metrics"] == _expected_metrics(9)
    stored = _stored(server, cid)
    assert stored["execution_status"] == "running"

    # Older snapshots on both paths (odd: the conversation path, with an older status stamp too).
    for i in (8, 7, 2, 1):
        _ok(_stats_delivery(server, alice.key, cid, i))
    assert _get(alice.client, cid) == newer
    after = _stored(server, cid)
    # Nothing at all moved: not a counter, not the version, not updated_at.
    assert after == stored

    # The next real increase applies on top.
    _ok(_stats_delivery(server, alice.key, cid, 10))
    assert _get(alice.client, cid)["metrics"] == _expected_metrics(10)


def test_a_duplicated_stats_event_is_not_counted_twice(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    event_id = str(uuid.uuid4())
    for _ in range(3):
        _ok(_stats_delivery(server, alice.key, cid, 4, event_id))
    assert _get(alice.client, cid)["metrics"] == _expected_metrics(4)
    assert _count(alice.client, cid) == 1


def test_captured_stats_batches_in_either_order_keep_the_latest(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    # The stats sent after the title call (0.004286) was delivered before the finish batch (0.003941).
    _ok(_post_events(server, alice.key, _hex(cid), _sample("webhook_events_stats_after_title")))
    _ok(_post_events(server, alice.key, _hex(cid), _sample("webhook_events_finished")))
    metrics = _get(alice.client, cid)["metrics"]
    assert metrics["accumulated_cost"] == 0.004286
    assert metrics["accumulated_token_usage"]["prompt_tokens"] == 4270
    assert metrics["accumulated_token_usage"]["completion_tokens"] == 8
    assert metrics["accumulated_token_usage"]["per_turn_token"] == 343
    assert _stored(server, cid)["execution_status"] == "finished"


def test_stats_snapshots_in_one_batch_keep_the_newest_whatever_the_time_notation(
    server: LiveServer, alice: Owner
) -> None:
    # Two snapshots in one batch, the newer listed last; the older one's timestamp is written with a UTC
    # offset (valid ISO-8601, stored and ordered correctly as an event) and so sorts after the newer one as
    # text. The stored metrics must be the newer snapshot's: cumulative counters never lose an increment.
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    older = _state("stats", {"usage_to_metrics": _snapshot_usage(3)}, T0)
    older["timestamp"] = T0.replace(hour=T0.hour + 1).isoformat() + "+01:00"  # the same instant as T0
    newer = _state("stats", {"usage_to_metrics": _snapshot_usage(5)}, T0 + dt.timedelta(seconds=30))
    _ok(_post_events(server, alice.key, _hex(cid), [older, newer]))
    # The events themselves are ordered by instant.
    assert [e["id"] for e in _search(alice.client, cid)] == [older["id"], newer["id"]]
    assert _get(alice.client, cid)["metrics"] == _expected_metrics(5)


def test_agent_text_the_database_cannot_store_never_fails_a_delivery(server: LiveServer, alice: Owner) -> None:
    # Titles come from an LLM: a NUL character in one must not abort the delivery (PostgreSQL text cannot
    # hold NUL; the event store replaces it for the same reason), least of all an events batch, whose
    # events would be lost with it.
    by_body = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    by_event = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    body = _info(by_body["id"], title="Agent\x00title", model="openai/fake\x00model", updated_at=_z(T0))
    r1 = _post_conversation(server, alice.key, body)
    message = _message("kept", T0)
    batch = [message, _state("title", "Event\x00title", T0 + dt.timedelta(seconds=1))]
    r2 = _post_events(server, alice.key, _hex(by_event["id"]), batch)
    _ok(r1)
    _ok(r2)
    for cid, prefix in ((by_body["id"], "Agent"), (by_event["id"], "Event")):
        title = _get(alice.client, cid)["title"]
        # Stored as sent or with the NUL replaced (as the event store does): either way, stored.
        assert title in (f"{prefix}\x00title", f"{prefix}\ufffdtitle"), title
    assert [e["id"] for e in _search(alice.client, by_event["id"])] == [e["id"] for e in batch]


# -- 6. execution status ordering ---------------------------------------------------------------------


def test_an_older_execution_status_never_overwrites_a_newer_one(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    t1, t2, t3, t4, t5, t6 = (T0 + dt.timedelta(seconds=s) for s in range(1, 7))

    def status() -> tuple[str | None, dt.datetime | None]:
        row = _stored(server, cid)
        return row["execution_status"], row["execution_status_at"]

    _ok(_post_events(server, alice.key, _hex(cid), [_state("execution_status", "running", t2)]))
    assert status() == ("running", _aware(t2))

    # Delivered later, stamped earlier: ignored, through either path.
    _ok(_post_events(server, alice.key, _hex(cid), [_state("execution_status", "idle", t1)]))
    assert status() == ("running", _aware(t2))
    _ok(_post_conversation(server, alice.key, _info(cid, execution_status="idle", updated_at=_z(t1))))
    assert status() == ("running", _aware(t2))

    # Newer: applies.
    _ok(_post_events(server, alice.key, _hex(cid), [_state("execution_status", "finished", t3)]))
    assert status() == ("finished", _aware(t3))

    # One batch listed out of order: the newest status in it wins.
    batch = [_state("execution_status", "running", t5), _state("execution_status", "idle", t4)]
    _ok(_post_events(server, alice.key, _hex(cid), batch))
    assert status() == ("running", _aware(t5))
    # Times are compared as instants, not as text: "10:00:04.5+01:00" is 09:00:04.5 UTC, older than t5
    # although its text sorts after it.
    older = _state("execution_status", "idle", t5)
    older["timestamp"] = (t5 - dt.timedelta(seconds=0.5)).replace(hour=t5.hour + 1).isoformat() + "+01:00"
    newer = _state("execution_status", "stuck", t5 + dt.timedelta(seconds=0.25))
    _ok(_post_events(server, alice.key, _hex(cid), [older, newer]))
    assert status() == ("stuck", _aware(t5 + dt.timedelta(seconds=0.25)))
    _ok(_post_events(server, alice.key, _hex(cid), [older]))
    assert status() == ("stuck", _aware(t5 + dt.timedelta(seconds=0.25)))

    # The conversation path, newer than everything: applies.
    _ok(_post_conversation(server, alice.key, _info(cid, execution_status="paused", updated_at=_z(t6))))
    assert status() == ("paused", _aware(t6))
    # An unknown status value is ignored.
    _ok(_post_events(server, alice.key, _hex(cid), [_state("execution_status", "exploded", t6 + dt.timedelta(1))]))
    assert status() == ("paused", _aware(t6))


def test_captured_batches_delivered_in_reverse_end_finished(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    created = _sample("webhook_conversation_created")
    created["id"] = _dashed(cid)
    # Retried deliveries can arrive in any order: finish, then start, then the create callback.
    _ok(_post_events(server, alice.key, _hex(cid), _sample("webhook_events_finished")))
    _ok(_post_events(server, alice.key, _hex(cid), _sample("webhook_events_started")))
    _ok(_post_conversation(server, alice.key, created))
    stored = _stored(server, cid)
    assert stored["execution_status"] == "finished"
    assert stored["execution_status_at"] == _aware(dt.datetime(2026, 11, 29, 9, 22, 54, 186898))
    assert _get(alice.client, cid)["metrics"]["accumulated_cost"] == 0.003941
    assert _count(alice.client, cid) == 10


# -- 7. events: stored once, junk skipped, bodies checked -------------------------------------------


def test_events_are_stored_once_and_read_back_as_sent(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    started = _sample("webhook_events_started")
    finished = _sample("webhook_events_finished")

    _ok(_post_events(server, alice.key, _hex(cid), started))
    _ok(_post_events(server, alice.key, _hex(cid), started))
    assert _count(alice.client, cid) == len(started) == 5
    assert _search(alice.client, cid) == started  # already in timestamp order

    # A batch overlapping what is stored adds only the new events; the stored copy is not replaced.
    changed_copy = copy.deepcopy(started[2])
    changed_copy["llm_message"] = {"role": "user", "content": [{"type": "text", "text": "rewritten"}]}
    _ok(_post_events(server, alice.key, _dashed(cid), [changed_copy, *finished]))
    assert _count(alice.client, cid) == len(started) + len(finished)
    items = _search(alice.client, cid)
    assert items == started + finished
    assert _stored_event_count(server) == 10


def test_events_without_id_kind_or_timestamp_are_skipped(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    good = _message("kept", T0)
    at = T0.isoformat()
    junk: list[Any] = [
        {"kind": "MessageEvent", "timestamp": at},
        {"id": str(uuid.uuid4()), "timestamp": at},
        {"id": str(uuid.uuid4()), "kind": "MessageEvent"},
        {"id": None, "kind": "MessageEvent", "timestamp": at},
        {"id": "", "kind": "MessageEvent", "timestamp": at},
        {"id": 12345, "kind": "MessageEvent", "timestamp": at},
        {"id": str(uuid.uuid4()), "kind": "", "timestamp": at},
        {"id": str(uuid.uuid4()), "kind": ["MessageEvent"], "timestamp": at},
        {"id": str(uuid.uuid4()), "kind": "MessageEvent", "timestamp": "yesterday"},
        {"id": str(uuid.uuid4()), "kind": "MessageEvent", "timestamp": 1795944174.16},
        {"id": str(uuid.uuid4()), "kind": "MessageEvent", "timestamp": None},
        {"id": "x" * 65, "kind": "MessageEvent", "timestamp": at},
        {"id": str(uuid.uuid4()), "kind": "K" * 65, "timestamp": at},
        {},
        1,
        "text",
        None,
        [],
        [good],
    ]
    _ok(_post_events(server, alice.key, _hex(cid), [*junk, good, *junk]))
    assert _search(alice.client, cid) == [good]
    _ok(_post_events(server, alice.key, _hex(cid), junk))
    _ok(_post_events(server, alice.key, _hex(cid), []))
    assert _count(alice.client, cid) == 1
    assert _stored_event_count(server) == 1


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"id": "5ff1c3a6-22f7-40ce-b463-9d8ba18c1b46", "kind": "MessageEvent"}),
        json.dumps("events"),
        json.dumps(42),
        json.dumps(None),
        "",
        '[{"id": "5ff1c3a6-22f7-40ce-b463-9d8ba18c1b46"',
    ],
    ids=["object", "string", "number", "null", "empty", "truncated"],
)
def test_a_body_that_is_not_a_list_is_422(server: LiveServer, alice: Owner, content: str) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    before = _snapshot(server, alice.client, conv["id"])
    with _agent(server, alice.key, **{"Content-Type": "application/json"}) as agent:
        r = agent.post(f"{HOOKS}/events/{_hex(conv['id'])}", content=content)
    body = _problem(r, 422)
    assert isinstance(body.get("errors"), list) and body["errors"]
    assert _snapshot(server, alice.client, conv["id"]) == before
    assert _stored_event_count(server) == 0


@pytest.mark.parametrize(
    "content", [json.dumps([]), json.dumps("info"), json.dumps(None), "{"], ids=["list", "string", "null", "truncated"]
)
def test_a_conversation_body_that_is_not_an_object_is_422(server: LiveServer, alice: Owner, content: str) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    before = _snapshot(server, alice.client, conv["id"])
    with _agent(server, alice.key, **{"Content-Type": "application/json"}) as agent:
        r = agent.post(f"{HOOKS}/conversations", content=content)
    _problem(r, 422)
    assert _snapshot(server, alice.client, conv["id"]) == before


# -- 8. updated_at --------------------------------------------------------------------------------


def test_updated_at_moves_only_when_something_visible_changes(server: LiveServer, alice: Owner) -> None:
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]

    def updated_at() -> str:
        value: str = _get(alice.client, cid)["updated_at"]
        assert _stored(server, cid)["updated_at"] == _ts(value)
        return value

    u0 = updated_at()
    assert u0 == conv["updated_at"]

    def step(name: str, deliver: Any, moves: bool) -> None:
        nonlocal u0
        before_row = _stored(server, cid)
        _ok(deliver())
        now = updated_at()
        if moves:
            assert _ts(now) > _ts(u0), name
            assert _stored(server, cid)["version"] == before_row["version"] + 1, name
        else:
            assert now == u0, name
            assert _stored(server, cid)["version"] == before_row["version"], name
        u0 = now

    t = [T0 + dt.timedelta(seconds=s) for s in range(10)]
    titled = _info(cid, title="Agent title", execution_status="running", updated_at=_z(t[1]))
    titled["stats"] = {"usage_to_metrics": _snapshot_usage(1)}
    step("title, status, metrics", lambda: _post_conversation(server, alice.key, titled), True)
    step("same body again", lambda: _post_conversation(server, alice.key, titled), False)

    same_status_later = _info(cid, title="Agent title", execution_status="running", updated_at=_z(t[2]))
    same_status_later["stats"] = {"usage_to_metrics": _snapshot_usage(1)}
    step("same status, newer stamp", lambda: _post_conversation(server, alice.key, same_status_later), False)
    # ...though the stamp itself was recorded.
    assert _stored(server, cid)["execution_status_at"] == _aware(t[2])

    batch = [_state("execution_status", "running", t[3])]
    step("same status by event", lambda: _post_events(server, alice.key, _hex(cid), batch), False)
    step("same batch again", lambda: _post_events(server, alice.key, _hex(cid), batch), False)
    step(
        "stale status",
        lambda: _post_events(server, alice.key, _hex(cid), [_state("execution_status", "idle", t[0])]),
        False,
    )
    step("stale stats", lambda: _stats_delivery(server, alice.key, cid, 0), False)

    step("stats grow", lambda: _stats_delivery(server, alice.key, cid, 2), True)
    step(
        "status changes",
        lambda: _post_events(server, alice.key, _hex(cid), [_state("execution_status", "finished", t[4])]),
        True,
    )
    model = _info(cid, title="Agent title", execution_status="finished", updated_at=_z(t[4]), model="openai/new-model")
    model["stats"] = {"usage_to_metrics": _snapshot_usage(2)}
    step("model changes", lambda: _post_conversation(server, alice.key, model), True)
    step(
        "title changes", lambda: _post_events(server, alice.key, _hex(cid), [_state("title", "New title", t[5])]), True
    )
    assert _get(alice.client, cid)["title"] == "New title"
    assert _get(alice.client, cid)["llm_model"] == "openai/new-model"


def test_updated_at_moves_even_when_the_clock_is_not_past_the_stored_value(server: LiveServer, alice: Owner) -> None:
    # A visible change must move updated_at strictly forward even if the clock reads no later than the
    # stored value (two writes in one clock tick, a clock stepped back): PATCH guarantees this with one
    # microsecond, so the two writers agree on what "updated" means.
    conv = server.conversation(alice.user.id, sandbox_id=alice.sandbox_id)
    cid = conv["id"]
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10)
    _set_stored(server, cid, updated_at=ahead)

    r = alice.client.patch(f"{API}/{cid}", json={"public": True})
    assert r.status_code == 200, r.text
    after_patch = _ts(r.json()["updated_at"])
    assert after_patch > ahead

    _ok(_post_conversation(server, alice.key, _info(cid, title="Agent title", updated_at=_z(T0))))
    got = _get(alice.client, cid)
    assert got["title"] == "Agent title"
    assert _ts(got["updated_at"]) > after_patch
