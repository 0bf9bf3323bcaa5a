"""Per-user LLM settings: defaults, overrides, clearing, the write-only encrypted key, effective_llm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer
from threadline.core.crypto import SecretBox
from threadline.core.errors import Conflict
from threadline.settings.service import LLMConfig, effective_llm
from threadline.settings.tables import user_settings

API = "/api/v1/settings"
SECRET = "sk-alice-Very-Secret-0123456789"


def _view(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _row(server: LiveServer, user_id: str) -> Any:
    async def run() -> Any:
        async with server.ctx.db.read() as conn:
            return (await conn.execute(select(user_settings).where(user_settings.c.user_id == user_id))).first()

    return server.run(run())


def _effective(server: LiveServer, user_id: str, model_override: str | None = None) -> LLMConfig:
    return server.run(effective_llm(server.ctx.db, server.settings, user_id, model_override=model_override))


@pytest.fixture
def configured(server_factory: Callable[..., LiveServer]) -> LiveServer:
    return server_factory(
        llm_model="openai/default-model",
        llm_api_key="server-key",
        llm_input_cost_per_token=0.5,
        llm_output_cost_per_token=1.5,
    )


def test_no_defaults_anywhere(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    assert _view(client.get(API)) == {
        "llm_model": None,
        "llm_base_url": None,
        "llm_api_key_set": False,
        "llm_model_source": None,
        "llm_base_url_source": None,
        "llm_api_key_source": None,
    }
    assert _effective(server, user.id) == LLMConfig(None, None, None, None, None)


def test_server_defaults_and_per_user_overrides(configured: LiveServer) -> None:
    server = configured
    _, alice_key = server.user("alice")
    _, bob_key = server.user("bob")
    alice, bob = server.client(alice_key), server.client(bob_key)
    default = {
        "llm_model": "openai/default-model",
        "llm_base_url": None,
        "llm_api_key_set": True,
        "llm_model_source": "server",
        "llm_base_url_source": None,
        "llm_api_key_source": "server",
    }
    assert _view(alice.get(API)) == default == _view(bob.get(API))
    changed = _view(alice.post(API, json={"llm_model": "anthropic/alice-model"}))
    assert changed == default | {"llm_model": "anthropic/alice-model", "llm_model_source": "user"}
    assert _view(alice.get(API)) == changed
    # Bob never sees Alice's model, and his change does not touch hers.
    assert _view(bob.get(API)) == default
    assert _view(bob.post(API, json={"llm_model": "bob/model"}))["llm_model"] == "bob/model"
    assert _view(alice.get(API))["llm_model"] == "anthropic/alice-model"
    assert _view(bob.get(API))["llm_model"] == "bob/model"


def test_absent_keeps_and_null_clears(configured: LiveServer) -> None:
    server = configured
    user, key = server.user("alice")
    client = server.client(key)
    full = {"llm_model": "m/one", "llm_base_url": "https://llm.example.com/v1", "llm_api_key": SECRET}
    mine = {
        "llm_model": "m/one",
        "llm_base_url": "https://llm.example.com/v1",
        "llm_api_key_set": True,
        "llm_model_source": "user",
        "llm_base_url_source": "user",
        "llm_api_key_source": "user",
    }
    assert _view(client.post(API, json=full)) == mine
    assert _view(client.post(API, json={})) == mine
    assert _view(client.post(API, json={"llm_model": "m/two"})) == mine | {"llm_model": "m/two"}
    assert _effective(server, user.id).api_key == SECRET
    # Clearing the model falls back to the server's; base URL and key stay.
    cleared = _view(client.post(API, json={"llm_model": None}))
    assert cleared == mine | {"llm_model": "openai/default-model", "llm_model_source": "server"}
    # Clearing the key: the server's key is not sent to a base URL of the user's choosing.
    no_key = _view(client.post(API, json={"llm_api_key": None}))
    assert no_key["llm_api_key_set"] is False and no_key["llm_api_key_source"] is None
    assert _effective(server, user.id).api_key is None
    # Clearing the base URL as well: back to every server default.
    assert _view(client.post(API, json={"llm_base_url": None}))["llm_api_key_source"] == "server"
    assert _effective(server, user.id).api_key == "server-key"
    row = _row(server, user.id)
    assert (row.llm_model, row.llm_base_url, row.llm_api_key_enc) == (None, None, None)


def test_api_key_never_returned_and_encrypted_at_rest(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    responses = [
        client.post(API, json={"llm_api_key": SECRET, "llm_model": "m"}),
        client.get(API),
        client.post(API, json={"llm_model": "m2"}),
        # Rejected bodies must not echo the key either.
        client.post(API, json={"llm_api_key": SECRET, "llm_model": ""}),
        client.post(API, json={"llm_api_key": SECRET + "x" * 4096}),
        client.post(API, json={"llm_apikey": SECRET}),
        client.post(API, json={"llm_api_key": [SECRET]}),
        client.post(API, json=SECRET),
        client.post(API, content=f'{{"llm_api_key": "{SECRET}",}}', headers={"Content-Type": "application/json"}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 422, 422, 422, 422, 422, 422]
    for r in responses:
        assert SECRET not in r.text
        assert "Very-Secret" not in r.text
    assert _view(client.get(API))["llm_api_key_set"] is True
    row = _row(server, user.id)
    assert row is not None and row.llm_api_key_enc
    assert all(SECRET not in str(value) for value in row)
    assert SecretBox(server.settings.resolved_secret_key).decrypt(row.llm_api_key_enc) == SECRET
    assert SECRET not in repr(_effective(server, user.id))
    assert _effective(server, user.id).api_key == SECRET


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"llm_model": ""}, "llm_model"),
        ({"llm_model": "   "}, "llm_model"),
        ({"llm_model": "m" * 257}, "llm_model"),
        ({"llm_model": 5}, "llm_model"),
        ({"llm_base_url": "ftp://llm.example.com"}, "llm_base_url"),
        ({"llm_base_url": "llm.example.com/v1"}, "llm_base_url"),
        ({"llm_base_url": "http://"}, "llm_base_url"),
        ({"llm_base_url": "https://llm.example.com:99999/v1"}, "llm_base_url"),
        ({"llm_base_url": "https://llm.example.com/v 1"}, "llm_base_url"),
        ({"llm_base_url": "https://" + "h" * 1020 + ".com"}, "llm_base_url"),
        ({"llm_api_key": ""}, "llm_api_key"),
        ({"llm_api_key": "k" * 4097}, "llm_api_key"),
        ({"llm_api_key": 12345}, "llm_api_key"),
        ({"unknown": "x"}, "unknown"),
    ],
)
def test_validation_errors(
    server: LiveServer, alice: tuple[Any, httpx.Client], body: dict[str, Any], field: str
) -> None:
    user, client = alice
    r = client.post(API, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 422
    assert [e["loc"] for e in problem["errors"]] == [["body", field]]
    assert field in problem["detail"]
    assert _row(server, user.id) is None  # nothing stored


def test_invalid_bodies_and_limits(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    for content in (b"", b"not json", b"[]", b"null"):
        r = client.post(API, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, content
        assert r.headers["content-type"].startswith("application/problem+json")
    edge = {"llm_model": "m" * 256, "llm_base_url": "HTTP://127.0.0.1:4000", "llm_api_key": "k" * 4096}
    view = _view(client.post(API, json=edge))
    assert view["llm_model"] == "m" * 256 and view["llm_base_url"] == "HTTP://127.0.0.1:4000"
    assert _effective(server, user.id).api_key == "k" * 4096


def test_unauthenticated_is_401(server: LiveServer) -> None:
    for client in (server.client(), server.client("tl_not-a-real-key")):
        for r in (client.get(API), client.post(API, json={"llm_model": "m"}), client.post(API, content=b"junk")):
            assert r.status_code == 401
            assert r.headers["content-type"].startswith("application/problem+json")


def test_effective_llm_precedence(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(
        llm_model="openai/default-model",
        llm_base_url="https://llm.internal/v1",
        llm_api_key="server-key",
        llm_input_cost_per_token=0.25,
        llm_output_cost_per_token=2.0,
    )
    user, key = server.user("alice")
    other, _ = server.user("bob")
    client = server.client(key)
    defaults = LLMConfig("openai/default-model", "https://llm.internal/v1", "server-key", 0.25, 2.0)
    assert _effective(server, user.id) == defaults
    assert _effective(server, user.id, "req/model") == LLMConfig(
        "req/model", "https://llm.internal/v1", "server-key", 0.25, 2.0
    )
    _view(client.post(API, json={"llm_model": "user/model"}))
    assert _effective(server, user.id).model == "user/model"
    assert _effective(server, user.id, "req/model").model == "req/model"
    _view(client.post(API, json={"llm_api_key": "user-key"}))
    assert _effective(server, user.id) == LLMConfig("user/model", "https://llm.internal/v1", "user-key", 0.25, 2.0)
    # The user's own base URL with the server's key withheld, then with their own key.
    _view(client.post(API, json={"llm_api_key": None, "llm_base_url": "https://evil.example/v1"}))
    assert _effective(server, user.id) == LLMConfig("user/model", "https://evil.example/v1", None, 0.25, 2.0)
    _view(client.post(API, json={"llm_api_key": "user-key"}))
    assert _effective(server, user.id).api_key == "user-key"
    # Setting the server's own base URL explicitly keeps the server key usable.
    view = _view(client.post(API, json={"llm_api_key": None, "llm_base_url": "https://llm.internal/v1"}))
    assert view["llm_api_key_source"] == "server" and view["llm_base_url_source"] == "user"
    assert _effective(server, user.id).api_key == "server-key"
    # Another user is untouched throughout.
    assert _effective(server, other.id) == defaults


def test_undecryptable_key_is_a_conflict(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    _view(client.post(API, json={"llm_api_key": SECRET}))
    wrong = SecretBox("another-server-secret").encrypt("other")

    async def replace_key() -> None:
        async with server.ctx.db.write() as conn:
            await conn.execute(
                user_settings.update().where(user_settings.c.user_id == user.id).values(llm_api_key_enc=wrong)
            )

    server.run(replace_key())
    with pytest.raises(Conflict, match="set it again"):
        _effective(server, user.id)
    _view(client.post(API, json={"llm_api_key": "fresh"}))
    assert _effective(server, user.id).api_key == "fresh"


def test_openapi_documents_settings(server: LiveServer) -> None:
    spec = server.client().get("/openapi.json").json()
    post = spec["paths"]["/api/v1/settings"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"llm_model", "llm_base_url", "llm_api_key"}
    assert "llm_api_key" not in spec["components"]["schemas"]["LLMSettings"]["properties"]
    events = spec["paths"]["/api/v1/conversation/{conversation_id}/events/search"]["get"]
    assert {p["name"] for p in events["parameters"]} >= {"kind__eq", "timestamp__gte", "sort_order", "limit"}
