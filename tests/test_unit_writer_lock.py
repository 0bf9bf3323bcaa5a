"""SQLite writers of several processes queue on a lock file beside the database (db/engine.py): a writer
waits for another process's writer without blocking its event loop, and a wait given up (the request was
cancelled) never leaves the lock taken."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from tests.support.writer_locks import lock_free, until
from threadline.db.engine import Database

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read(1)
"""


def _hold_in_another_process(lock_path: Path) -> subprocess.Popen[str]:
    """A process that takes the lock and keeps it until its stdin closes (exiting releases it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def _let_go(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


async def _database_with_a_table(path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE t (n INTEGER)"))
    return db


async def _insert(db: Database, n: int) -> None:
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})


async def _rows(db: Database) -> list[int]:
    async with db.read() as conn:
        return list((await conn.execute(text("SELECT n FROM t ORDER BY n"))).scalars())


def test_a_writer_waits_for_another_process_without_blocking_its_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = await _database_with_a_table(path)
        try:
            holder = _hold_in_another_process(lock_path)
            try:
                writer = asyncio.create_task(_insert(db, 1))
                # The loop keeps running while the writer waits: these ticks happen, the write does not.
                ticks = 0
                for _ in range(20):
                    await asyncio.sleep(0.01)
                    ticks += 1
                assert ticks == 20 and not writer.done(), "the write went ahead of the other process's writer"
                _let_go(holder)
                await asyncio.wait_for(writer, 10)
            finally:
                holder.kill()
                holder.wait()
            assert await _rows(db) == [1]
            await until(lambda: lock_free(lock_path), "the lock is free after the write")
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_wait_given_up_leaves_the_lock_free(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = await _database_with_a_table(path)
        try:
            holder = _hold_in_another_process(lock_path)
            try:
                waiting = asyncio.create_task(_insert(db, 1))
                # In this process's queue first (the asyncio lock), then waiting for the other process.
                await until(lambda: db._write_lock is not None and db._write_lock.locked(), "the writer waits")
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                assert waiting.cancelled()
                _let_go(holder)  # the abandoned wait gets the lock now, and must drop it
            finally:
                holder.kill()
                holder.wait()
            await until(lambda: lock_free(lock_path), "the lock the cancelled wait got is given back")
            await _insert(db, 2)  # and this process can write again
            assert await _rows(db) == [2]
        finally:
            await db.dispose()

    asyncio.run(scenario())
