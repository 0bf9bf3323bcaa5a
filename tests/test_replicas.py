"""Two replicas side by side (issue 7, point 6): two `threadline serve` processes on one database, sharing
nothing else. Conditional PATCHes, idempotent starts and agent callbacks arrive at either process; the
background work (closing start tasks and adopting sandboxes of a process that went away) is done once.

On PostgreSQL, the deployment the issue names, and on SQLite (two processes on one file, one host).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.conftest import Database, wait_for
from tests.support.process_server import ProcessServer, insert_conversations, with_database
from tests.support.records import message_event, sandbox_values, stats_event
from threadline.conversations.tables import start_tasks
from threadline.core.ids import new_id
from threadline.db.engine import Database as Engine
from threadline.sandboxes.tables import instances, sandboxes

API = "/api/v1/app-conversations"
HOOKS = "/api/v1/webhooks"
T = TypeVar("T")


def _db(database: Database, action: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run `action` in a write transaction on the test's database."""

    async def in_transaction(db: Engine) -> T:
        async with db.write() as conn:
            return await action(conn)

    return with_database(database.url, database.schema, in_transaction)


def _together(
    servers: list[ProcessServer], count: int, send: Callable[[httpx.Client, int], httpx.Response], key: str | None
) -> list[httpx.Response]:
    """`count` requests released at once, alternating between the replicas."""
    barrier = threading.Barrier(count)

    def one(i: int) -> httpx.Response:
        with servers[i % len(servers)].client(key) as client:
            barrier.wait(30)
            return send(client, i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _instance_of(database: Database, server: ProcessServer) -> str:
    async def read(conn: AsyncConnection) -> str:
        row = (await conn.execute(select(instances.c.id).where(instances.c.pid == server.pid))).one()
        return str(row.id)

    return _db(database, read)


def test_two_replicas_side_by_side(process_server_factory: Callable[..., ProcessServer], database: Database) -> None:
    common = {
        "instance_heartbeat_seconds": 0.5,
        "instance_lease_ttl_seconds": 3,
        # No agent runtime: a start fails at once (this test is about the records, not agent servers).
        "runtime_dir": "/nonexistent/threadline-runtime",
        "llm_model": "openai/fake-model",
    }
    a = process_server_factory(**common)
    b = process_server_factory(**common)
    replicas = [a, b]
    key = a.admin_key
    assert key
    with a.client(key) as client:
        user_id = client.get("/api/v1/users/me").json()["id"]

    # 1. If-Match across processes: one tag, twelve PATCHes through both: exactly one wins.
    (cid,) = insert_conversations(database.url, database.schema, user_id, 1, title="first")
    with a.client(key) as client:
        etag = client.get(f"{API}/{cid}").headers["etag"]
    answers = _together(
        replicas,
        12,
        lambda c, i: c.patch(f"{API}/{cid}", json={"title": f"writer {i}"}, headers={"If-Match": etag}),
        key,
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] + [412] * 11, [r.text for r in answers]
    winner = next(r.json()["title"] for r in answers if r.status_code == 200)
    with a.client(key) as ca, b.client(key) as cb:
        ra, rb = ca.get(f"{API}/{cid}"), cb.get(f"{API}/{cid}")
        assert ra.json()["title"] == rb.json()["title"] == winner
        assert ra.headers["etag"] == rb.headers["etag"] != etag

    # Unconditional PATCHes of different tags through both: every one lands.
    answers = _together(replicas, 12, lambda c, i: c.patch(f"{API}/{cid}", json={"tags": {f"k{i}": str(i)}}), key)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    with b.client(key) as client:
        assert client.get(f"{API}/{cid}").json()["tags"] == {f"k{i}": str(i) for i in range(12)}

    # 2. One Idempotency-Key sent to both processes at once: one start task.
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    answers = _together(replicas, 10, lambda c, i: c.post(API, json={"title": "raced"}, headers=idem), key)
    ok = [r for r in answers if r.status_code == 200]
    assert ok, [r.text for r in answers]
    assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]
    assert len({r.json()["id"] for r in ok}) == 1
    with a.client(key) as client:
        assert client.get(f"{API}/start-tasks/count").json() == 1

    # 3. Callbacks of one sandbox arriving at either process (each batch at both): stored once, max kept.
    owner_a = _instance_of(database, a)
    row, session_key = sandbox_values(user_id, a.env["THREADLINE_SECRET_KEY"], owner_instance=owner_a)
    _db(database, lambda conn: conn.execute(sandboxes.insert().values(**row)))
    (called,) = insert_conversations(database.url, database.schema, user_id, 1, sandbox_id=row["id"])
    batches = [_batch(i) for i in range(1, 21)]
    answers = _together(
        replicas,
        40,
        lambda c, i: c.post(
            f"{HOOKS}/events/{called}", json=batches[i // 2], headers={"X-Session-API-Key": session_key}
        ),
        None,
    )
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    with b.client(key) as client:
        assert client.get(f"/api/v1/conversation/{called}/events/count").json() == 40
        assert client.get(f"{API}/{called}").json()["metrics"]["accumulated_cost"] == 20 / 64

    # 4. A third process went away, leaving sandboxes and start tasks: both replicas race to clean up
    # every heartbeat; each item is taken over exactly once.
    gone = new_id()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    # Records of the backend the replicas run (the default, bwrap): a replica adopts only its own kind.
    orphans = [
        sandbox_values(user_id, a.env["THREADLINE_SECRET_KEY"], owner_instance=gone, backend="bwrap", spec_id="bwrap")[
            0
        ]
        for _ in range(10)
    ]
    tasks = [
        {
            "id": new_id(),
            "user_id": user_id,
            "status": "WAITING_FOR_SANDBOX",
            "request": {},
            "history": [{"status": "WORKING", "at": long_ago.isoformat()}],
            "created_at": long_ago,
            "updated_at": long_ago,
            "owner_instance": gone,
        }
        for _ in range(10)
    ]

    async def leave_behind(conn: AsyncConnection) -> None:
        await conn.execute(
            instances.insert().values(id=gone, hostname="gone", pid=1, started_at=long_ago, heartbeat_at=long_ago)
        )
        await conn.execute(sandboxes.insert(), orphans)
        await conn.execute(start_tasks.insert(), tasks)

    _db(database, leave_behind)

    def cleaned_up() -> Any:
        async def read(conn: AsyncConnection) -> Any:
            boxes = (await conn.execute(select(sandboxes).where(sandboxes.c.id.in_([o["id"] for o in orphans])))).all()
            rows = (await conn.execute(select(start_tasks).where(start_tasks.c.id.in_([t["id"] for t in tasks])))).all()
            done = all(s.status == "MISSING" for s in boxes) and all(t.status == "ERROR" for t in rows)
            return (boxes, rows) if done else None

        return _db(database, read)

    boxes, rows = wait_for(cleaned_up, timeout=60, what="the replicas to clean up after the gone process")
    owner_b = _instance_of(database, b)
    assert {s.owner_instance for s in boxes} <= {owner_a, owner_b}
    for task in rows:
        assert [h["status"] for h in task.history] == ["WORKING", "ERROR"], task.history
    logs = [json.loads(line) for s in replicas for line in s.log_path.read_text().splitlines() if line.startswith("{")]
    for item in [*orphans, *tasks]:
        said = [r for r in logs if item["id"] in r["message"] and gone in r["message"]]
        assert len(said) == 1, (item["id"], said)


def _batch(i: int) -> list[dict[str, Any]]:
    at = dt.datetime(2026, 11, 29, 9, 0, 0) + dt.timedelta(seconds=i)
    return [message_event(f"message {i}", at, f"message-{i}"), stats_event(i / 64, at, f"stats-{i}")]
