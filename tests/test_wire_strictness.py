"""What black-box attacks found on the wire (issue 15 part C, D5, E1): non-finite numbers, loose coercion,
405 answers, malformed JSON, a trailing slash, and the query form of sandbox deletion. Over HTTP, on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

API = "/api/v1/app-conversations"


def strict_json(response: httpx.Response) -> Any:
    """The body as JSON, refusing NaN and Infinity (which JSON does not have)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"non-JSON constant {name} in {response.text[:300]}")

    return json.loads(response.text, parse_constant=refuse)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = strict_json(response)
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("PATCH", "{conv}", '{"public": 1e999}'),
        ("PATCH", "{conv}", '{"title": NaN}'),
        ("PATCH", "{conv}", '{"tags": {"a": -Infinity}}'),
        ("POST", "{conv}/send-message", '{"content": [{"type": "text", "text": "x"}], "run": NaN}'),
        ("POST", "", '{"pr_number": [1e999]}'),
        ("POST", "", '{"initial_message": {"content": [{"type": "text", "text": "x"}]}, "public": Infinity}'),
    ],
)
def test_non_finite_numbers_are_a_422_problem(
    server: LiveServer, alice: tuple[Any, httpx.Client], method: str, path: str, raw: str
) -> None:
    user, client = alice
    conv = server.conversation(user.id, title="t")["id"]
    url = f"{API}/{path.format(conv=conv)}".rstrip("/")
    body = problem(client.request(method, url, content=raw, headers={"Content-Type": "application/json"}), 422)
    text = json.dumps(body["errors"])
    assert "NaN" in text or "Infinity" in text
    assert client.get(f"{API}/{conv}").json()["title"] == "t"  # nothing stored


def test_405_names_every_allowed_method(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id)["id"]
    body = problem(client.put(f"{API}/{conv}", json={}), 405)
    allowed = {m.strip() for m in client.put(f"{API}/{conv}", json={}).headers["allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed and "PUT" not in allowed
    assert "PATCH" in body["detail"]


def test_booleans_and_date_times_are_strict(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id)["id"]
    for value in ("yes", 0, 1, "true", 1.0):
        problem(client.patch(f"{API}/{conv}", json={"public": value}), 422)
    assert client.get(f"{API}/{conv}").json()["public"] in (False, None)
    assert client.patch(f"{API}/{conv}", json={"public": True}).json()["public"] is True
    for value in ("0.5", "1700000000", "-1", "1e9"):
        body = problem(client.get(f"{API}/search", params={"created_at__gte": value}), 422)
        assert "ISO 8601" in body["detail"]
        problem(client.get(f"/api/v1/conversation/{conv}/events/search", params={"timestamp__gte": value}), 422)
        problem(client.get(f"{API}/start-tasks/search", params={"created_at__gte": value}), 422)
    assert client.get(f"{API}/search", params={"created_at__gte": "2020-01-01T00:00:00Z"}).status_code == 200
    assert client.get(f"{API}/count", params={"updated_at__lt": "2020-01-01"}).json() == 0
    since = {"created_at__gte": "2020-01-01T00:00:00Z"}
    assert client.get(f"{API}/start-tasks/search", params=since).status_code == 200


def test_malformed_json_says_what_and_where(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id)["id"]
    raw = '{"title": "x",, }'
    body = problem(client.patch(f"{API}/{conv}", content=raw, headers={"Content-Type": "application/json"}), 422)
    assert "not valid JSON" in body["detail"] and "character 14" in body["detail"], body["detail"]
    assert "JSON decode error" not in body["detail"]


def test_a_trailing_slash_is_a_problem_not_a_redirect(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    body = problem(client.patch(f"{API}/", json={"title": "x"}), 404)
    assert "without the trailing slash" in body["detail"]
    problem(client.get("/api/v1/nothing-here"), 404)


def test_sandboxes_can_be_deleted_by_query_parameter(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    _, bob_client = bob
    sandbox_id, _ = server.sandbox(user.id, status="PAUSED", backend="bwrap", spec_id="bwrap")
    problem(bob_client.delete("/api/v1/sandboxes", params={"sandbox_id": sandbox_id}), 404)
    problem(client.delete("/api/v1/sandboxes"), 422)
    problem(client.delete("/api/v1/sandboxes", params={"sandbox_id": "not-an-id"}), 404)
    r = client.delete("/api/v1/sandboxes", params={"sandbox_id": sandbox_id})
    assert r.status_code == 200 and r.json() == {"success": True}
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json() == [None]
