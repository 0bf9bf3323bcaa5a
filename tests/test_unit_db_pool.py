"""PostgreSQL: a process keeps as many connections open as its pool size (`THREADLINE_DATABASE_POOL_SIZE`), so
requests in flight up to that many never close and reopen connections (each a new backend whose prepared
statements are parsed again); beyond it, up to 10 more are opened for the burst and closed afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text

from tests import conftest
from tests.conftest import LiveServer
from threadline.db.engine import POOL_OVERFLOW, Database

PG_URL = conftest.PG_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://", 1)


async def _backends_of_concurrent_reads(db: Database, how_many: int) -> set[int]:
    """Run `how_many` read transactions at once (each waits until all have started); their backends' pids."""
    started = asyncio.Barrier(how_many)

    async def one() -> int:
        async with db.read() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await asyncio.wait_for(started.wait(), 30)
            return pid

    return set(await asyncio.gather(*(one() for _ in range(how_many))))


@pytest.mark.parametrize(("pool_size", "in_flight"), [(20, 16), (4, 8)])
def test_the_pool_keeps_its_size_of_connections_and_closes_only_the_burst(pool_size: int, in_flight: int) -> None:
    async def scenario() -> None:
        db = Database(PG_URL, pool_size=pool_size)
        try:
            first = await _backends_of_concurrent_reads(db, in_flight)
            assert len(first) == in_flight
            kept = min(in_flight, pool_size)
            assert db.engine.pool.checkedin() == kept  # type: ignore[attr-defined]
            # The same load again is served by the connections kept, and only the burst beyond them is new.
            second = await _backends_of_concurrent_reads(db, in_flight)
            assert len(first & second) == kept
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_burst_beyond_the_overflow_waits_for_a_connection_instead_of_failing() -> None:
    async def scenario() -> None:
        db = Database(PG_URL, pool_size=2)
        try:
            backends = await asyncio.wait_for(_concurrent_selects(db, 2 + POOL_OVERFLOW + 3), 60)
            assert len(backends) <= 2 + POOL_OVERFLOW
        finally:
            await db.dispose()

    asyncio.run(scenario())


async def _concurrent_selects(db: Database, how_many: int) -> set[int]:
    async def one() -> int:
        async with db.read() as conn:
            pid = int((await conn.execute(text("SELECT pg_backend_pid(), pg_sleep(0.2)"))).scalar_one())
            return pid

    return set(await asyncio.gather(*(one() for _ in range(how_many))))


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_the_server_takes_its_pool_size_from_the_settings(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(database_pool_size=7)
    assert server.ctx.db.engine.pool.size() == 7  # type: ignore[attr-defined]
