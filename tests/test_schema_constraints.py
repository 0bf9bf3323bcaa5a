"""The published OpenAPI states what the server enforces (issue 15 C4): for each constraint named in the
issue, the served /openapi.json refuses the value the server refuses, and admits the value it accepts.
Schemas are checked with jsonschema_rs (ECMA 262 regular expressions, as OpenAPI tools use)."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema_rs

from tests.conftest import LiveServer

API = "/api/v1/app-conversations"


def _spec(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec: dict[str, Any] = r.json()
    return spec


def _param(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    (found,) = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == name]
    schema: dict[str, Any] = found["schema"]
    return schema


def _admits(schema: dict[str, Any], value: Any, spec: dict[str, Any]) -> bool:
    # The components travel along, so a $ref inside the schema resolves.
    document = {**schema, "components": spec.get("components", {})}
    return bool(jsonschema_rs.validator_for(document).is_valid(value))


def test_empty_ids_are_outside_the_schema_and_refused(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    spec = _spec(client)
    valid = "0" * 31 + "1"
    for path, name in (
        (API, "ids"),
        (f"{API}/start-tasks", "ids"),
        ("/api/v1/sandboxes", "id"),
        ("/api/v1/shared-conversations", "ids"),
    ):
        schema = _param(spec, path, name)
        assert not _admits(schema, [""], spec), (path, schema)
        assert not _admits(schema, ["not-an-id"], spec), (path, schema)
        assert _admits(schema, [valid], spec) and _admits(schema, ["00000000-0000-0000-0000-000000000001"], spec)
        assert not _admits(schema, [valid] * 101, spec), "the batch limit is stated too"
        r = client.get(path, params={name: ""})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
        assert r.json()["errors"][0]["loc"] == ["query", name]
        r = client.get(path, params={name: valid})
        assert r.status_code == 200 and r.json() == [None], r.text


def test_empty_selected_branch_is_outside_the_schema_and_refused(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    spec = _spec(client)
    schemas = spec["components"]["schemas"]
    conv = server.conversation(user.id, title="t")
    for model in ("AppConversationStartRequest", "AppConversationUpdateRequest"):
        branch = schemas[model]["properties"]["selected_branch"]
        assert not _admits(branch, "", spec), model
        assert not _admits(branch, "a..b", spec) and not _admits(branch, "-x", spec), model
        assert _admits(branch, "feature/x-1", spec) and _admits(branch, None, spec), model
        repository = schemas[model]["properties"]["selected_repository"]
        assert not _admits(repository, "", spec) and not _admits(repository, "no-slash", spec), model
        assert _admits(repository, "acme/widgets", spec), model
    for body in ({"selected_branch": ""}, {"selected_repository": ""}):
        r = client.post(API, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["body", next(iter(body))]
        r = client.patch(f"{API}/{conv['id']}", json=body)
        assert r.status_code == 422, r.text
    r = client.patch(f"{API}/{conv['id']}", json={"selected_branch": "feature/x-1", "selected_repository": "a/b"})
    assert r.status_code == 200 and r.json()["selected_branch"] == "feature/x-1", r.text


def test_llm_base_url_must_be_an_http_url_in_schema_and_server(alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    spec = _spec(client)
    body_schema = spec["paths"]["/api/v1/settings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    base_url = body_schema["properties"]["llm_base_url"]
    for refused in ("0", "", "ftp://llm.example", "http://", "http://:8080", "http://x:99999", "http://a b"):
        assert not _admits(base_url, refused, spec), refused
        r = client.post("/api/v1/settings", json={"llm_base_url": refused})
        assert r.status_code == 422, (refused, r.text)
        assert r.json()["errors"][0]["loc"] == ["body", "llm_base_url"], r.text
    for accepted in ("http://localhost:11434/v1", "https://llm.example.com", "https://u:p@h.example:443/x?y#z"):
        assert _admits(base_url, accepted, spec), accepted
        r = client.post("/api/v1/settings", json={"llm_base_url": accepted})
        assert r.status_code == 200 and r.json()["llm_base_url"] == accepted, r.text
    model = body_schema["properties"]["llm_model"]
    assert not _admits(model, "   ", spec) and _admits(model, "openai/gpt-5", spec)
    assert client.post("/api/v1/settings", json={"llm_model": "   "}).status_code == 422


def test_page_id_format_is_stated_and_tokens_the_server_issues_have_it(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    spec = _spec(client)
    for i in range(3):
        server.conversation(user.id, title=f"c{i}")
    token = client.get(f"{API}/search", params={"limit": 1}).json()["next_page_id"]
    assert token
    for path in (
        f"{API}/search",
        f"{API}/start-tasks/search",
        "/api/v1/sandboxes/search",
        "/api/v1/conversation/{conversation_id}/events/search",
    ):
        schema = _param(spec, path, "page_id")
        assert _admits(schema, token, spec), path
        assert not _admits(schema, "not a token!", spec) and not _admits(schema, "a/b", spec), path
    # Outside the stated form, and of the form but not issued here: 400, the page token problem.
    for garbled in ("not a token!", token[:-2] + ("AA" if not token.endswith("AA") else "BB")):
        r = client.get(f"{API}/search", params={"limit": 1, "page_id": garbled})
        assert r.status_code == 400 and r.json()["type"].endswith("/bad-page-token"), r.text
    r = client.get(f"{API}/search", params={"limit": 1, "page_id": token})
    assert r.status_code == 200 and len(r.json()["items"]) == 1, r.text
