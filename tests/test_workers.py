"""`threadline serve --workers 2` as a real process tree, on SQLite and PostgreSQL: both workers serve,
the one-time work is done once, the rate limit of a key holds across the workers, a revocation bites in
both, concurrent writes through both never meet "database is locked", and SIGTERM stops every process."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import Database, LiveServer, refused_within, wait_for
from tests.support.process_server import (
    ProcessServer,
    agent_settings,
    insert_conversations,
    sandbox_processes,
    with_database,
)
from threadline.auth import service as auth
from threadline.db.engine import Database as Engine
from threadline.sandboxes.pool import WarmPool
from threadline.sandboxes.tables import instances, sandboxes

ME = "/api/v1/users/me"
API = "/api/v1/app-conversations"


def _worker_pid(server: ProcessServer) -> int:
    # A fresh connection each time: the kernel hands it to whichever worker accepts first.
    with server.client() as client:
        info = client.get("/server_info").json()
    assert info["workers"] == 2
    return int(info["worker_pid"])


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _key(database: Database, name: str) -> tuple[str, str]:
    async def make(db: Engine) -> tuple[str, str]:
        user = await auth.create_user(db, name)
        _, key = await auth.create_key(db, user.id)
        return user.id, key

    return with_database(database.url, database.schema, make)


def _live_instances(database: Database) -> int:
    async def count(db: Engine) -> int:
        async with db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(instances))).scalar_one())

    return with_database(database.url, database.schema, count)


def test_two_workers(process_server_factory: Callable[..., ProcessServer], database: Database) -> None:
    server = process_server_factory(args=["--workers", "2"], workers=1)  # the option wins over the variable
    # One-time work once: one admin, its key printed by the supervisor.
    assert server.admin_key

    # Both workers answer, each a child of the supervisor with a lease of its own.
    pids = wait_for(
        lambda: (seen := {_worker_pid(server) for _ in range(8)}) and len(seen) == 2 and seen,
        timeout=60,
        what="answers from both workers",
    )
    assert pids == _children(server.pid) & pids == pids
    assert _live_instances(database) == 2

    # Concurrent writes through both workers (PATCHes of many conversations at once): no "database is
    # locked", every one lands.
    user_id, writer = _key(database, "writer")
    ids = insert_conversations(database.url, database.schema, user_id, 8)
    barrier = threading.Barrier(16)

    def patch(i: int) -> httpx.Response:
        with server.client(writer) as client:
            barrier.wait(30)
            return client.patch(f"{API}/{ids[i % 8]}", json={"tags": {f"k{i}": "v"}})

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(patch, range(16)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    with server.client(writer) as client:
        assert len(client.get(f"{API}/{ids[0]}").json()["tags"]) == 2

    # A key revoked through one worker is refused by both within a second (fresh connections: either worker).
    with server.client(writer) as client:
        key_id = next(
            k.id for k in with_database(database.url, database.schema, auth.list_keys) if k.user_id == user_id
        )
        assert client.delete(f"{ME}/api-keys/{key_id}").status_code == 204

    def all_refused() -> bool:
        for _ in range(10):
            with server.client(writer) as client:
                if client.get(ME).status_code != 401:
                    return False
        return True

    refused_within(1.0, all_refused, "both workers to refuse the revoked key")

    # SIGTERM: the supervisor stops both workers, each shuts down cleanly (its lease removed), nothing is left.
    server.signal(signal.SIGTERM)
    assert server.wait(120) == 0, server.log_tail()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    assert _live_instances(database) == 0


def test_the_rate_limit_of_a_key_holds_across_workers(
    process_server_factory: Callable[..., ProcessServer], database: Database
) -> None:
    server = process_server_factory(
        workers=2, rate_limits_enabled="true", rate_limit_per_second=0.01, rate_limit_burst=10
    )
    key = server.admin_key
    assert key
    wait_for(lambda: len({_worker_pid(server) for _ in range(8)}) == 2, timeout=60, what="answers from both workers")
    # The rate limit of one key holds across the workers: each enforces half (burst 10 -> 5 each), so
    # whichever worker the requests reach, at most 10 of 40 go through (the refill is 1 per 100 s).
    with server.client(key) as client:
        assert client.get(ME).headers["RateLimit-Policy"] == '"default";q=5;w=1000'
    answers = []
    for _ in range(40):
        with server.client(key) as client:
            answers.append(client.get(ME).status_code)
    assert set(answers) == {200, 429}, answers
    assert answers.count(200) <= 10 - 1, answers  # one was taken by the policy check above


def _pool_rows(database: Database) -> list[tuple[str, str]]:
    async def read(db: Engine) -> list[tuple[str, str]]:
        async with db.read() as conn:
            rows = await conn.execute(select(sandboxes.c.id, sandboxes.c.status).where(sandboxes.c.user_id.is_(None)))
            return [(r.id, r.status) for r in rows]

    return with_database(database.url, database.schema, read)


@pytest.mark.agent
def test_two_workers_keep_one_warm_pool_and_stop_its_sandbox(
    process_server_factory: Callable[..., ProcessServer], database: Database, agent_runtime: Path, fake_llm: Any
) -> None:
    """Both workers refill the pool every half second; they take turns (a file lock), so the pool holds one
    sandbox, not one per worker. SIGTERM stops it with the workers."""
    agent = agent_settings(agent_runtime, fake_llm.base_url)
    server = process_server_factory(workers=2, warm_pool_size=1, warm_pool_refill_interval=0.5, **agent)
    with server.client() as client:
        wait_for(lambda: client.get("/server_info").json()["warm_pool"]["ready"] == 1, timeout=180, what="the pool")
    home = server.env["THREADLINE_HOME"]
    # Many refill rounds of both workers later: still one pool sandbox, and one agent server.
    rounds_until = time.monotonic() + 5
    while time.monotonic() < rounds_until:
        rows = _pool_rows(database)
        assert len(rows) == 1, rows
        assert len(set(sandbox_processes(home).values())) == 1
        time.sleep(0.25)  # pacing of an invariant check, not synchronisation
    server.signal(signal.SIGTERM)
    assert server.wait(180) == 0, server.log_tail()
    assert sandbox_processes(home) == {}
    assert _live_instances(database) == 0


def test_pool_refills_take_turns(starter: Callable[..., LiveServer], database: Database) -> None:
    """Two refills at once (as two workers' would be) on one home: the second counts what the first
    started, so a pool of one gets one sandbox, not two. (No agent runtime: each start fails at once and is
    replaced by the next refill; what matters is how many pool rows there are.)"""
    server = starter(warm_pool_size=0)
    sandboxes_service = server.app.state.sandboxes
    first, second = WarmPool(sandboxes_service, 1), WarmPool(sandboxes_service, 1)

    async def both() -> None:
        await asyncio.gather(first.refill(), second.refill())

    server.run(both(), timeout=120)
    assert len(_pool_rows(database)) == 1, _pool_rows(database)
