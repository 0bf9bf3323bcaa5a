"""ETag, If-Match and If-None-Match on conversations: optimistic concurrency over real HTTP."""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from threadline.webhooks import service as webhooks

API = "/api/v1/app-conversations"


@pytest.fixture
def conv(server: LiveServer, alice: tuple[Any, httpx.Client]) -> dict[str, Any]:
    user, _ = alice
    return server.conversation(user.id, title="Original", sandbox_id="sbx-etag", tags={"team": "core"})


def _etag(client: httpx.Client, conversation_id: str) -> str:
    r = client.get(f"{API}/{conversation_id}")
    assert r.status_code == 200, r.text
    return r.headers["etag"]


def _assert_412(r: httpx.Response, current: str) -> None:
    assert r.status_code == 412, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["etag"] == current
    body = r.json()
    assert body["status"] == 412 and body["etag"] == current


def test_every_response_carries_the_same_strong_etag(
    server: LiveServer, alice: tuple[Any, httpx.Client], conv: dict[str, Any]
) -> None:
    user, client = alice
    url = f"{API}/{conv['id']}"
    got = client.get(url)
    etag = got.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert got.json()["etag"] == etag == conv["etag"]
    assert client.get(f"{API}/search").json()["items"][0]["etag"] == etag
    assert client.get(API, params={"ids": [conv["id"]]}).json()[0]["etag"] == etag
    # Another conversation at the same version has another tag.
    other = server.conversation(user.id, title="other")
    assert other["etag"] != etag

    patched = client.patch(url, json={"title": "New"})
    assert patched.status_code == 200
    new = patched.headers["etag"]
    assert new != etag and patched.json()["etag"] == new == _etag(client, conv["id"])
    # No real change, no new version.
    same = client.patch(url, json={"title": "New"})
    assert same.headers["etag"] == new and same.json()["etag"] == new

    deleted = client.delete(url)
    assert deleted.status_code == 200 and deleted.headers["etag"] == new


def test_if_none_match_on_get(alice: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    etag = _etag(client, conv["id"])
    for header in (etag, "*", f"W/{etag}", f'"nope", {etag}', f'"x" , W/"y",{etag}'):
        r = client.get(url, headers={"If-None-Match": header})
        assert r.status_code == 304, header
        assert r.content == b"" and r.headers["etag"] == etag
    for header in ('"1-0000"', "", "garbage", f'{etag[:-1]}x"'):
        r = client.get(url, headers={"If-None-Match": header})
        assert r.status_code == 200, header
        assert r.json()["id"] == conv["id"]
    client.patch(url, json={"title": "changed"})
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.json()["title"] == "changed" and r.headers["etag"] != etag


def test_if_match_on_patch(alice: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    v1 = _etag(client, conv["id"])
    ok = client.patch(url, json={"title": "v2"}, headers={"If-Match": v1})
    assert ok.status_code == 200 and ok.json()["title"] == "v2"
    v2 = ok.headers["etag"]
    # Stale, weak (never matches If-Match), and garbage: 412 naming the current tag; nothing stored.
    for header in (v1, f"W/{v2}", '"other"', "nonsense, W/x", ""):
        _assert_412(client.patch(url, json={"title": "lost"}, headers={"If-Match": header}), v2)
    assert client.get(url).json()["title"] == "v2"
    # A list holding the current tag, '*', and the tag without its quotes all match.
    current = v2
    for i, make_header in enumerate((lambda tag: f'"x", {v1}, {tag}', lambda tag: "*", lambda tag: tag.strip('"'))):
        header = make_header(current)
        r = client.patch(url, json={"title": f"v{3 + i}"}, headers={"If-Match": header})
        assert r.status_code == 200, header
        assert r.headers["etag"] != current
        current = r.headers["etag"]
    assert client.get(url).json()["title"] == "v5"


def test_if_match_on_delete(alice: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    v1 = _etag(client, conv["id"])
    v2 = client.patch(url, json={"title": "v2"}).headers["etag"]
    _assert_412(client.delete(url, headers={"If-Match": v1}), v2)
    assert client.get(url).status_code == 200
    r = client.delete(url, headers={"If-Match": v2})
    assert r.status_code == 200 and r.headers["etag"] == v2
    # Gone: a precondition on a missing conversation is a plain 404.
    assert client.delete(url, headers={"If-Match": "*"}).status_code == 404
    assert client.patch(url, json={"title": "x"}, headers={"If-Match": v2}).status_code == 404


def test_if_match_on_someone_elses_conversation_is_404(bob: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = bob
    for method in ("PATCH", "DELETE"):
        r = client.request(
            method,
            f"{API}/{conv['id']}",
            json={"title": "x"} if method == "PATCH" else None,
            headers={"If-Match": conv["etag"]},
        )
        assert r.status_code == 404, method
        assert "etag" not in r.headers and "etag" not in r.json()
    assert client.get(f"{API}/{conv['id']}", headers={"If-None-Match": "*"}).status_code == 404


def test_concurrent_patches_with_the_same_if_match_have_one_winner(
    alice: tuple[Any, httpx.Client], conv: dict[str, Any]
) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    etag = _etag(client, conv["id"])
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        for round_no in range(3):

            def attempt(i: int, expected: str = etag, round_no: int = round_no) -> httpx.Response:
                return client.patch(url, json={"title": f"r{round_no}-{i}"}, headers={"If-Match": expected})

            results = list(pool.map(attempt, range(20)))
            winners = [(i, r) for i, r in enumerate(results) if r.status_code == 200]
            assert len(winners) == 1, [r.status_code for r in results]
            (winner, won), new = winners[0], winners[0][1].headers["etag"]
            assert new != etag
            for r in results:
                if r is not won:
                    _assert_412(r, new)
            current = client.get(url)
            assert current.json()["title"] == f"r{round_no}-{winner}"
            assert current.headers["etag"] == new
            etag = new


def test_concurrent_patch_and_delete_with_the_same_if_match(
    alice: tuple[Any, httpx.Client], conv: dict[str, Any]
) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    etag = _etag(client, conv["id"])

    def attempt(i: int) -> httpx.Response:
        if i == 5:
            return client.delete(url, headers={"If-Match": etag})
        return client.patch(url, json={"title": f"t{i}"}, headers={"If-Match": etag})

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(attempt, range(10)))
    codes = [r.status_code for r in results]
    assert codes.count(200) == 1, codes
    if codes[5] == 200:
        # The delete won: the others lost the race to it (412) or came after it (404).
        assert set(codes[:5] + codes[6:]) <= {404, 412}
        assert client.get(url).status_code == 404
    else:
        assert set(codes) == {200, 412}
        assert client.get(url).status_code == 200


def test_without_if_match_the_last_write_wins(alice: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    stale = _etag(client, conv["id"])
    assert client.patch(url, json={"title": "a"}).status_code == 200
    assert client.patch(url, json={"title": "b"}).status_code == 200
    assert client.get(url).json()["title"] == "b"
    assert client.get(url).headers["etag"] != stale


def test_agent_callbacks_move_the_etag(
    server: LiveServer, alice: tuple[Any, httpx.Client], conv: dict[str, Any]
) -> None:
    _, client = alice
    url = f"{API}/{conv['id']}"
    before = _etag(client, conv["id"])
    server.run(
        webhooks.on_conversation_update(
            server.ctx.db,
            sandbox_id="sbx-etag",
            info={"id": conv["id"], "execution_status": "running", "title": "Auto title"},
        )
    )
    after = client.get(url, headers={"If-None-Match": before})
    assert after.status_code == 200
    # The user's title stays; the callback's change still makes a new version.
    assert after.json()["title"] == "Original"
    assert after.headers["etag"] != before
    # A PATCH prepared against the version before the callback does not overwrite blindly.
    _assert_412(client.patch(url, json={"title": "mine"}, headers={"If-Match": before}), after.headers["etag"])
    assert client.patch(url, json={"title": "mine"}, headers={"If-Match": after.headers["etag"]}).status_code == 200


def test_sub_conversations_move_the_parents_etag(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    parent = server.conversation(user.id, title="parent")
    url = f"{API}/{parent['id']}"
    v1 = _etag(client, parent["id"])
    kid = server.conversation(user.id, title="kid", parent_conversation_id=parent["id"])
    r = client.get(url, headers={"If-None-Match": v1})
    assert r.status_code == 200 and r.json()["sub_conversation_ids"] == [kid["id"]]
    v2 = r.headers["etag"]
    assert v2 != v1
    assert client.delete(f"{API}/{kid['id']}").status_code == 200
    r = client.get(url, headers={"If-None-Match": v2})
    assert r.status_code == 200 and r.json()["sub_conversation_ids"] == []
    _assert_412(client.patch(url, json={"title": "p"}, headers={"If-Match": v2}), r.headers["etag"])


def test_dashed_id_and_etag_agree(alice: tuple[Any, httpx.Client], conv: dict[str, Any]) -> None:
    _, client = alice
    dashed = str(uuid.UUID(conv["id"]))
    assert _etag(client, dashed) == _etag(client, conv["id"])
    r = client.patch(f"{API}/{dashed}", json={"title": "d"}, headers={"If-Match": conv["etag"]})
    assert r.status_code == 200
