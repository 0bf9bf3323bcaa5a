"""PostgreSQL closing the server's connections (a restart, a failover, an idle timeout killing them): no request
fails for it, and nothing is written twice.

The hot transactions (`Database.run_read`/`run_write`) take pooled connections without a ping (a round trip
each): a connection the database has closed is replaced at checkout when the event loop has already seen it
close, and otherwise the transaction is run again on a fresh connection, once, when nothing was committed.
`read()`/`write()` keep the ping. Here the server's own backends are terminated with `pg_terminate_backend`,
as a restart does to them, and then everything is asked again at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from tests import conftest
from tests.conftest import LiveServer
from threadline.db.engine import Database


async def _pool_backends(db: Database, how_many: int) -> set[int]:
    """Hold `how_many` connections at once (so the pool keeps that many) and return their backends' pids."""
    taken = asyncio.Semaphore(0)
    release = asyncio.Event()

    async def one() -> int:
        async with db.engine.connect() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            taken.release()
            await release.wait()
            return pid

    tasks = [asyncio.create_task(one()) for _ in range(how_many)]
    for _ in range(how_many):
        await asyncio.wait_for(taken.acquire(), 30)
    release.set()
    return {await task for task in tasks}


def _terminate_and_wait(pids: set[int], timeout: float = 30) -> None:
    """Terminate the backends and wait (blocking the caller) until PostgreSQL lists none of them."""

    async def run() -> None:
        admin = await asyncpg.connect(conftest.PG_ADMIN_URL)
        try:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pids))
            deadline = time.monotonic() + timeout
            while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)):
                assert time.monotonic() < deadline, "the terminated backends did not go away"
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    conftest._pg_admin_exec_coroutine(run)


def test_transactions_go_on_when_the_database_closed_every_pooled_connection(
    database: conftest.Database,
) -> None:
    if database.backend != "postgresql":
        pytest.skip("PostgreSQL's pooled connections")

    def bump(conn: Connection) -> None:
        conn.execute(text("UPDATE counter SET n = n + 1"))

    def read(conn: Connection) -> int:
        return int(conn.execute(text("SELECT n FROM counter")).scalar_one())

    async def scenario() -> tuple[list[Any], int, int]:
        db = Database(database.url, schema=database.schema)
        met: list[bool] = []
        event.listen(db.engine.sync_engine, "handle_error", lambda context: met.append(context.is_disconnect))
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE counter (n integer NOT NULL)"))
                await conn.execute(text("INSERT INTO counter VALUES (0)"))
            pids = await _pool_backends(db, 6)
            assert len(pids) == 6
            # Blocking this event loop: when the transactions below start, it has not yet seen the sockets
            # close, so they take dead connections and meet the disconnect in their first statement.
            _terminate_and_wait(pids)
            results = await asyncio.gather(
                *(db.run_write(bump) for _ in range(3)), *(db.run_read(read) for _ in range(3))
            )
            async with db.read() as conn:  # the awaited kind: its checkout pings
                ping_read = int((await conn.execute(text("SELECT n FROM counter"))).scalar_one())
            return results, await db.run_read(read), ping_read + sum(met)
        finally:
            await db.dispose()

    results, final, checked = asyncio.run(scenario())
    assert results[:3] == [None, None, None] and all(0 <= n <= 3 for n in results[3:])
    assert final == 3, "a write was lost or applied twice"
    assert checked >= 3 + 1, "no transaction met a closed connection: the test did not test the retry"


def test_requests_go_on_when_the_database_closed_the_servers_connections(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    if server.settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's pooled connections")
    user, client = alice
    conversation = server.conversation(user.id, title="before")
    url = f"/api/v1/app-conversations/{conversation['id']}"
    pids = server.run(_pool_backends(server.ctx.db, 8))
    _terminate_and_wait(pids)
    version = client.get(url).json()["etag"]
    answers = [
        client.patch(url, json={"title": "one"}),
        client.get("/api/v1/app-conversations/search"),
        client.get(f"/api/v1/conversation/{conversation['id']}/events/search"),
        client.get("/api/v1/app-conversations/count"),
        client.get("/api/v1/settings"),  # an awaited transaction (`read()`): its checkout pings
        client.patch(url, json={"title": "two"}),
        client.get(url),
    ]
    assert [r.status_code for r in answers] == [200] * len(answers), [r.text for r in answers if r.status_code != 200]
    assert answers[-1].json()["title"] == "two" and answers[-1].json()["etag"] != version
    assert answers[1].json()["items"][0]["id"] == conversation["id"]
