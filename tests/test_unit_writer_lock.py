"""SQLite writers of several processes queue on a lock file beside the database (db/engine.py): a writer
waits for another process's writer without blocking its event loop, and a wait given up (the request was
cancelled) never leaves the lock taken."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

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


async def _waits_for_another_process(lock_path: Path, write: Coroutine[Any, Any, None]) -> None:
    """`write` waits while another process holds the lock, the loop running on meanwhile (these ticks happen,
    the write does not), and ends once that process lets go."""
    holder = _hold_in_another_process(lock_path)
    try:
        writer = asyncio.create_task(write)
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


def test_a_writer_waits_for_another_process_without_blocking_its_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = await _database_with_a_table(path)
        try:
            await _waits_for_another_process(lock_path, _insert(db, 1))
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


def _insert_in_thread(conn: Connection, n: int) -> None:
    conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})


def test_a_whole_transaction_waits_in_its_thread_and_gives_the_lock_back_there(tmp_path: Path) -> None:
    """`run_write` takes the lock in the database thread, around the transaction alone: the loop runs on while
    it waits, the writers' figures count the wait and the hold, and the lock is free once it committed."""
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = await _database_with_a_table(path)
        try:
            before = db.writer_lock.transactions
            await _waits_for_another_process(lock_path, db.run_write(_insert_in_thread, 1))
            assert await _rows(db) == [1]
            assert lock_free(lock_path), "the thread gives the lock back as the transaction ends"
            assert db.writer_lock.transactions == before + 1
            assert db.writer_lock.waited_seconds >= 0.2 and db.writer_lock.held_seconds > 0
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_transaction_cancelled_while_its_thread_waits_ends_before_the_caller_does(tmp_path: Path) -> None:
    """Under way in its thread, a transaction cannot be interrupted: a cancelled caller returns only once it has
    ended (committed, here), and the lock is free then, never left taken."""
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = await _database_with_a_table(path)
        try:
            holder = _hold_in_another_process(lock_path)
            try:
                writer = asyncio.create_task(db.run_write(_insert_in_thread, 1))
                await until(lambda: db._write_lock is not None and db._write_lock.locked(), "the writer waits")
                writer.cancel()
                await asyncio.sleep(0.05)
                assert not writer.done(), "the caller returned while its transaction could still commit"
                _let_go(holder)
                await asyncio.gather(writer, return_exceptions=True)
                assert writer.cancelled()
            finally:
                holder.kill()
                holder.wait()
            assert lock_free(lock_path)
            assert await _rows(db) == [1]
            await db.run_write(_insert_in_thread, 2)
            assert await _rows(db) == [1, 2]
        finally:
            await db.dispose()

    asyncio.run(scenario())
