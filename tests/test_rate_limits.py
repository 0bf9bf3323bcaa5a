"""Rate limits per API key: token buckets, 429 with Retry-After, IETF draft RateLimit headers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from threadline.auth import service as auth

ME = "/api/v1/users/me"
API = "/api/v1/app-conversations"
SANDBOXES = "/api/v1/sandboxes"
RATE_LIMITED = "https://threadline.dev/problems/rate-limited"


@pytest.fixture
def limited(starter: Callable[..., LiveServer]) -> Callable[..., LiveServer]:
    """A server with small limits that barely refill during a test (unless overridden)."""

    def make(**overrides: Any) -> LiveServer:
        values: dict[str, Any] = {
            "rate_limit_per_second": 0.1,
            "rate_limit_burst": 3,
            "start_rate_limit_per_second": 0.01,
            "start_rate_limit_burst": 2,
        }
        values.update(overrides)
        return starter(**values)

    return make


def _remaining(r: httpx.Response) -> tuple[str, int, int]:
    match = re.fullmatch(r'"(\w+)";r=(\d+);t=(\d+)', r.headers["RateLimit"])
    assert match, r.headers["RateLimit"]
    return match[1], int(match[2]), int(match[3])


def _exhaust(client: httpx.Client) -> httpx.Response:
    """Request until refused; returns the 429."""
    for _ in range(1000):
        r = client.get(ME)
        if r.status_code != 200:
            return r
    raise AssertionError("never rate limited")


def _assert_limited(r: httpx.Response, policy: str) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == RATE_LIMITED
    assert int(r.headers["Retry-After"]) >= 1
    assert _remaining(r)[:2] == (policy, 0)


def test_429_with_headers(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    _, key = server.user("alice")
    with server.client(key) as client:
        answers = [client.get(ME) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200]
        for r in answers:
            assert r.headers["RateLimit-Policy"] == '"default";q=3;w=30'
            assert "Retry-After" not in r.headers
        assert [_remaining(r)[1] for r in answers] == [2, 1, 0]
        assert 10 <= _remaining(answers[0])[2] <= 30  # seconds until the bucket is full again
        over = client.get(ME)
        _assert_limited(over, "default")
        assert over.headers["RateLimit-Policy"] == '"default";q=3;w=30'
        assert 1 <= int(over.headers["Retry-After"]) <= 10  # one token comes back every 10 s


def test_headers_on_every_authenticated_answer(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_limit_burst=100)
    _, key = server.user("alice")
    with server.client(key) as client:
        missing = client.get(f"{API}/{'0' * 32}")
        assert missing.status_code == 404 and missing.headers["RateLimit"].startswith('"default";r=')
        invalid = client.get(f"{API}/search", params={"limit": 0})
        assert invalid.status_code == 422 and "RateLimit-Policy" in invalid.headers
        streamed = client.post(f"{API}/stream-start", json={})
        assert streamed.status_code == 200 and streamed.headers["RateLimit-Policy"] == '"start";q=2;w=200'


def test_the_bucket_refills(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_limit_per_second=5.0, rate_limit_burst=2)
    _, key = server.user("alice")
    with server.client(key) as client:
        r = _exhaust(client)
        _assert_limited(r, "default")
        assert r.headers["Retry-After"] == "1"
        wait_for(lambda: client.get(ME).status_code == 200, timeout=5, interval=0.05, what="a token")


def test_start_bucket_is_separate(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    user, key = server.user("alice")
    with server.client(key) as client:
        # Starts take from their own bucket ...
        for _ in range(2):
            r = client.post(SANDBOXES)
            assert r.status_code == 200 and r.headers["RateLimit-Policy"] == '"start";q=2;w=200'
        for over in (client.post(SANDBOXES), client.post(API, json={}), client.post(f"{API}/stream-start", json={})):
            _assert_limited(over, "start")
        # ... and an empty start bucket leaves the default one alone,
        assert client.get(f"{API}/start-tasks/count").json() == 0
        answers = [client.get(ME) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        _assert_limited(answers[-1], "default")
    # ... and the other way round.
    _, fresh_key = server.run(auth.create_key(server.ctx.db, user.id))
    with server.client(fresh_key) as client:
        for _ in range(3):
            assert client.get(ME).status_code == 200
        assert client.get(ME).status_code == 429
        assert client.post(SANDBOXES).status_code == 200


def test_buckets_are_per_key(limited: Callable[..., LiveServer]) -> None:
    server = limited()
    user, key = server.user("alice")
    _, second_key = server.run(auth.create_key(server.ctx.db, user.id))
    _, bob_key = server.user("bob")
    with server.client(key) as first:
        _exhaust(first)
    for other in (second_key, bob_key):
        with server.client(other) as client:
            r = client.get(ME)
            assert r.status_code == 200 and _remaining(r)[1] == 2


def test_what_is_not_limited(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_limit_burst=1)
    with server.client() as client:
        for _ in range(5):
            for path in ("/alive", "/health", "/ready", "/server_info"):
                r = client.get(path)
                assert r.status_code == 200 and "RateLimit" not in r.headers, path
            # Agent callbacks authenticate by session key, not API key: never rate limited.
            hook = client.post("/api/v1/webhooks/conversations", json={})
            assert hook.status_code == 401 and "RateLimit" not in hook.headers
            # No key, no bucket: a 401.
            assert client.get(ME).status_code == 401


def test_limits_are_divided_between_replicas(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_limit_per_second=20.0, rate_limit_burst=40, rate_limit_replicas=2)
    _, key = server.user("alice")
    with server.client(key) as client:
        r = client.get(ME)
        assert r.headers["RateLimit-Policy"] == '"default";q=20;w=2'
        assert _remaining(r)[1] == 19


def test_limits_can_be_switched_off(limited: Callable[..., LiveServer]) -> None:
    server = limited(rate_limits_enabled=False, rate_limit_burst=1)
    _, key = server.user("alice")
    with server.client(key) as client:
        for _ in range(5):
            r = client.get(ME)
            assert r.status_code == 200 and "RateLimit" not in r.headers


def test_anonymous_shared_views_are_limited_per_client_address(limited: Callable[..., LiveServer]) -> None:
    server = limited(anonymous_rate_limit_per_second=0.01, anonymous_rate_limit_burst=2)
    user, key = server.user("alice")
    shared = server.conversation(user.id, title="shown to everyone", public=True)["id"]
    url = "/api/v1/shared-conversations"
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        first = anonymous.get(url, params={"ids": shared})
        assert first.status_code == 200 and first.json()[0]["title"] == "shown to everyone", first.text
        assert _remaining(first)[:2] == ("anonymous", 1)
        assert anonymous.get(f"{url}/{shared}/events/search").status_code == 200
        refused = anonymous.get(url, params={"ids": shared})
        _assert_limited(refused, "anonymous")
        assert "client address" in refused.json()["detail"]
    # Another address has its own bucket (all of 127.0.0.0/8 is loopback), and the owner's key its own.
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=server.base_url, transport=other, timeout=30) as neighbour:
        assert neighbour.get(url, params={"ids": shared}).status_code == 200
    with server.client(key) as owner:
        assert owner.get(f"{API}/{shared}").status_code == 200
