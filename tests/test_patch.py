"""PATCH /api/v1/app-conversations/{id}: merge semantics, validation, updated_at, isolation."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

API = "/api/v1/app-conversations"


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def conv(server: LiveServer, alice: tuple[Any, httpx.Client]) -> dict[str, Any]:
    user, _ = alice
    return server.conversation(
        user.id,
        title="Original",
        selected_repository="acme/widgets",
        selected_branch="main",
        git_provider="github",
        public=False,
        tags={"team": "core", "env": "dev"},
        trigger="gui",
        pr_number=[7],
    )


def test_absent_fields_keep_values_and_sent_fields_change(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    r = client.patch(f"{API}/{conv['id']}", json={"public": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["public"] is True
    for field in (
        "title",
        "selected_repository",
        "selected_branch",
        "git_provider",
        "tags",
        "trigger",
        "pr_number",
    ):
        assert body[field] == conv[field], field
    assert _ts(body["updated_at"]) > _ts(conv["updated_at"])
    assert body["created_at"] == conv["created_at"]
    # The change is stored, not just echoed.
    assert client.get(f"{API}/{conv['id']}").json() == body


def test_null_clears_a_field(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    body = client.patch(f"{API}/{conv['id']}", json={"title": None, "public": None}).json()
    assert body["title"] is None
    assert body["public"] is None
    assert body["selected_repository"] == "acme/widgets"


def test_clearing_repository_clears_branch_and_provider(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    body = client.patch(f"{API}/{conv['id']}", json={"selected_repository": None}).json()
    assert (body["selected_repository"], body["selected_branch"], body["git_provider"]) == (None, None, None)


def test_clearing_repository_keeps_branch_and_provider_sent_in_same_request(
    alice: tuple[Any, httpx.Client], conv: dict
) -> None:
    _, client = alice
    r = client.patch(
        f"{API}/{conv['id']}",
        json={"selected_repository": None, "selected_branch": "dev", "git_provider": "gitlab"},
    )
    body = r.json()
    assert (body["selected_repository"], body["selected_branch"], body["git_provider"]) == (
        None,
        "dev",
        "gitlab",
    )


def test_the_tag_index_follows_every_kind_of_tag_change(
    server: LiveServer, alice: tuple[Any, httpx.Client], conv: dict
) -> None:
    """The tag filters read `conversation_tags`, which a PATCH changes tag by tag (only what went or changed):
    after each change its rows are exactly the conversation's tags, with its owner."""
    from sqlalchemy import select

    from threadline.conversations.tables import conversation_tags

    user, client = alice

    def indexed() -> dict[str, str]:
        async def read() -> list[Any]:
            async with server.ctx.db.read() as conn:
                query = select(conversation_tags).where(conversation_tags.c.conversation_id == conv["id"])
                return list((await conn.execute(query)).all())

        rows = server.run(read())
        assert {row.user_id for row in rows} <= {user.id}
        return {row.key: row.value for row in rows}

    steps: list[Any] = [
        {"owner": "ana"},  # added
        {"team": "infra"},  # changed
        {"env": None},  # removed
        {"env": "prod", "team": None, "owner": "bo"},  # added, removed and changed at once
        {"owner": "bo"},  # the same value: nothing to write
        {"missing": None},  # removing what is not there
        None,  # all removed
        {"fresh": "1", "other": "2"},  # from none
        {"fresh": None, "other": None},  # removed one by one down to none
    ]
    for step in steps:
        r = client.patch(f"{API}/{conv['id']}", json={"tags": step})
        assert r.status_code == 200, r.text
        assert indexed() == r.json()["tags"], step
        for key, value in r.json()["tags"].items():
            found = client.get(f"{API}/search", params={"tag": f"{key}:{value}"}).json()["items"]
            assert [c["id"] for c in found] == [conv["id"]]


def test_tags_merge_patch(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    body = client.patch(f"{API}/{conv['id']}", json={"tags": {"env": None, "owner": "ana", "team": "infra"}}).json()
    assert body["tags"] == {"team": "infra", "owner": "ana"}
    body = client.patch(f"{API}/{conv['id']}", json={"tags": {"missing": None}}).json()
    assert body["tags"] == {"team": "infra", "owner": "ana"}
    body = client.patch(f"{API}/{conv['id']}", json={"tags": None}).json()
    assert body["tags"] == {}


def test_tag_limits(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    # conv already has 2 tags: 48 more is exactly the limit of 50.
    ok = client.patch(url, json={"tags": {f"k{i}": "v" for i in range(48)}})
    assert ok.status_code == 200 and len(ok.json()["tags"]) == 50
    too_many = client.patch(url, json={"tags": {"one-more": "v"}})
    assert too_many.status_code == 422
    assert "tags" in too_many.json()["detail"]
    assert client.patch(url, json={"tags": {"k" * 64: "v" * 512, "k0": None}}).status_code == 200
    for bad in ({"k" * 65: "v"}, {"key": "v" * 513}, {"": "v"}, {"key": 5}):
        r = client.patch(url, json={"tags": bad})
        assert r.status_code == 422, bad
        assert r.headers["content-type"].startswith("application/problem+json")
    # Nothing of the rejected requests was stored.
    assert len(client.get(url).json()["tags"]) == 50


def test_updated_at_moves_only_on_real_change(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    same = client.patch(url, json={"title": "Original", "tags": {"team": "core"}, "public": False}).json()
    assert same["updated_at"] == conv["updated_at"]
    empty = client.patch(url, json={}).json()
    assert empty["updated_at"] == conv["updated_at"]
    stamps = [conv["updated_at"]]
    for i in range(5):
        stamps.append(client.patch(url, json={"title": f"t{i}"}).json()["updated_at"])
    assert all(_ts(a) < _ts(b) for a, b in itertools.pairwise(stamps))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"unknown_field": 1}, "unknown_field"),
        ({"git_provider": "sourcehut"}, "git_provider"),
        ({"public": "maybe"}, "public"),
        ({"title": 5}, "title"),
        ({"selected_repository": "noslash"}, "selected_repository"),
        ({"selected_repository": "owner/na me"}, "selected_repository"),
        ({"selected_repository": "owner/../etc"}, "selected_repository"),
        ({"selected_repository": "owner/name;rm -rf"}, "selected_repository"),
        ({"selected_repository": "owner/$(id)"}, "selected_repository"),
        ({"selected_repository": "/owner/name"}, "selected_repository"),
        ({"selected_repository": "owner/name/"}, "selected_repository"),
        ({"selected_repository": ""}, "selected_repository"),
        ({"selected_branch": "has space"}, "selected_branch"),
        ({"selected_branch": "a..b"}, "selected_branch"),
        ({"selected_branch": "feature~1"}, "selected_branch"),
        ({"selected_branch": "x^"}, "selected_branch"),
        ({"selected_branch": "a:b"}, "selected_branch"),
        ({"selected_branch": "wh?"}, "selected_branch"),
        ({"selected_branch": "st*r"}, "selected_branch"),
        ({"selected_branch": "br[acket"}, "selected_branch"),
        ({"selected_branch": "back\\slash"}, "selected_branch"),
        ({"selected_branch": "ends.lock"}, "selected_branch"),
        ({"selected_branch": "dir/.hidden"}, "selected_branch"),
        ({"selected_branch": "trailing."}, "selected_branch"),
        ({"selected_branch": "trailing/"}, "selected_branch"),
        ({"selected_branch": "/leading"}, "selected_branch"),
        ({"selected_branch": "double//slash"}, "selected_branch"),
        ({"selected_branch": "at@{brace"}, "selected_branch"),
        ({"selected_branch": "@"}, "selected_branch"),
        ({"selected_branch": "-dash"}, "selected_branch"),
        ({"selected_branch": "ctl\x01"}, "selected_branch"),
        ({"selected_branch": ""}, "selected_branch"),
        ({"tags": ["a"]}, "tags"),
    ],
)
def test_invalid_patch_is_422_naming_the_field(
    alice: tuple[Any, httpx.Client], conv: dict, payload: dict, field: str
) -> None:
    _, client = alice
    r = client.patch(f"{API}/{conv['id']}", json=payload)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 422
    assert field in problem["detail"]
    assert any(field in [str(p) for p in e["loc"]] for e in problem["errors"])
    assert client.get(f"{API}/{conv['id']}").json() == conv


@pytest.mark.parametrize("repository", ["owner/name", "group/sub/name", "a-b/c_d.e", "Org/Repo.git", "o/n/x/y/z"])
def test_valid_repositories(alice: tuple[Any, httpx.Client], conv: dict, repository: str) -> None:
    _, client = alice
    r = client.patch(f"{API}/{conv['id']}", json={"selected_repository": repository})
    assert r.status_code == 200, r.text
    assert r.json()["selected_repository"] == repository


@pytest.mark.parametrize("branch", ["main", "feature/x-1", "release/2024.01", "a@b", "UPPER_case", "v1.2.3"])
def test_valid_branches(alice: tuple[Any, httpx.Client], conv: dict, branch: str) -> None:
    _, client = alice
    r = client.patch(f"{API}/{conv['id']}", json={"selected_branch": branch})
    assert r.status_code == 200, r.text
    assert r.json()["selected_branch"] == branch


@pytest.mark.parametrize(
    "provider",
    ["github", "gitlab", "bitbucket", "bitbucket_data_center", "forgejo", "azure_devops", "enterprise_sso"],
)
def test_every_provider_accepted(alice: tuple[Any, httpx.Client], conv: dict, provider: str) -> None:
    _, client = alice
    assert client.patch(f"{API}/{conv['id']}", json={"git_provider": provider}).json()["git_provider"] == provider


def test_dashed_and_hex_ids_both_work(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    dashed = str(uuid.UUID(conv["id"]))
    r = client.patch(f"{API}/{dashed.upper()}", json={"title": "dashed"})
    assert r.status_code == 200
    assert r.json()["id"] == conv["id"]


@pytest.mark.parametrize("bad_id", ["not-an-id", "1234", "g" * 32, "%00", "' OR 1=1 --", "x" * 300])
def test_malformed_id_is_a_clean_4xx(alice: tuple[Any, httpx.Client], bad_id: str) -> None:
    _, client = alice
    for method in ("GET", "PATCH", "DELETE"):
        r = client.request(method, f"{API}/{bad_id}", json={"title": "x"} if method == "PATCH" else None)
        assert r.status_code in (404, 422), (method, r.status_code)
        assert r.headers["content-type"].startswith("application/problem+json")


def test_other_users_conversation_is_missing(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client], conv: dict
) -> None:
    _, bob_client = bob
    missing = uuid.uuid4().hex
    for target in (conv["id"], missing):
        patch = bob_client.patch(f"{API}/{target}", json={"title": "mine now"})
        get = bob_client.get(f"{API}/{target}")
        delete = bob_client.delete(f"{API}/{target}")
        assert (patch.status_code, get.status_code, delete.status_code) == (404, 404, 404)
    # Same answer, word for word apart from the id, for someone else's and for a missing conversation.
    a = bob_client.get(f"{API}/{conv['id']}").json()
    b = bob_client.get(f"{API}/{missing}").json()
    assert a["detail"].replace(conv["id"], "X") == b["detail"].replace(missing, "X")
    _, alice_client = alice
    assert alice_client.get(f"{API}/{conv['id']}").json()["title"] == "Original"


def test_patch_requires_auth(server: LiveServer, conv: dict) -> None:
    with server.client() as anonymous:
        r = anonymous.patch(f"{API}/{conv['id']}", json={"title": "x"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")


def test_malformed_json_body(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    _, client = alice
    r = client.patch(f"{API}/{conv['id']}", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.patch(f"{API}/{conv['id']}", json=[1, 2])
    assert r.status_code == 422


def test_concurrent_patches_of_different_fields_all_land(alice: tuple[Any, httpx.Client], conv: dict) -> None:
    import concurrent.futures

    _, client = alice
    url = f"{API}/{conv['id']}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.patch(url, json={"tags": {f"c{i}": str(i)}}), range(16)))
    assert all(r.status_code == 200 for r in results)
    tags = client.get(url).json()["tags"]
    assert all(tags[f"c{i}"] == str(i) for i in range(16))
