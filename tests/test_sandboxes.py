"""The sandboxes listing without agent servers: keyset pages over records (ties included), only the caller's."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from tests.conftest import LiveServer
from threadline.auth.service import User


def test_sandbox_pages_are_in_order_and_never_skip_or_repeat(
    server: LiveServer, alice: tuple[User, httpx.Client], bob: tuple[User, httpx.Client]
) -> None:
    (user, client), (other, _) = alice, bob
    base = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)
    # Three share one creation time: the id orders them, and a page boundary may fall between them.
    times = [base, base, base, base + dt.timedelta(seconds=1), base - dt.timedelta(seconds=1)]
    mine = [server.sandbox(user.id, "PAUSED", created_at=at)[0] for at in times]
    server.sandbox(other.id, "PAUSED", created_at=base)
    expected = [sid for _, sid in sorted(zip(times, mine, strict=True), key=lambda p: (p[0], p[1]), reverse=True)]

    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        r = client.get("/api/v1/sandboxes/search", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2
        seen += [s["id"] for s in body["items"]]
        if not body["next_page_id"]:
            break
        params["page_id"] = body["next_page_id"]
    assert seen == expected

    r = client.get("/api/v1/sandboxes/search", params={"page_id": "garbled"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
