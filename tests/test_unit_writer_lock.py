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


def test_a_writer_waits_for_another_process_without_blocking_its_loop(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (n INTEGER)"))
            holder = _hold_in_another_process(lock_path)
            try:
                done = asyncio.Event()

                async def write() -> None:
                    async with db.write() as conn:
                        await conn.execute(text("INSERT INTO t VALUES (1)"))
                    done.set()

                writer = asyncio.create_task(write())
                # The loop keeps running while the writer waits: these ticks happen, the write does not.
                ticks = 0
                for _ in range(20):
                    await asyncio.sleep(0.01)
                    ticks += 1
                assert ticks == 20 and not done.is_set(), "the write went ahead of the other process's writer"
                _let_go(holder)
                await asyncio.wait_for(writer, 10)
            finally:
                holder.kill()
                holder.wait()
            async with db.read() as conn:
                assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
            await until(lambda: lock_free(lock_path), "the lock is free after the write")
        finally:
            await db.dispose()

    asyncio.run(scenario())


def test_a_wait_given_up_leaves_the_lock_free(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    lock_path = Path(f"{path}.writer-lock")

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            async with db.write() as conn:
                await conn.execute(text("CREATE TABLE t (n INTEGER)"))
            holder = _hold_in_another_process(lock_path)
            try:

                async def write() -> None:
                    async with db.write() as conn:
                        await conn.execute(text("INSERT INTO t VALUES (1)"))

                waiting = asyncio.create_task(write())
                await asyncio.sleep(0.1)
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                assert waiting.cancelled()
                _let_go(holder)  # the abandoned wait gets the lock now, and must drop it
            finally:
                holder.kill()
                holder.wait()
            await until(lambda: lock_free(lock_path), "the lock the cancelled wait got is given back")
            # And this process can write again.
            async with db.write() as conn:
                await conn.execute(text("INSERT INTO t VALUES (2)"))
            async with db.read() as conn:
                assert (await conn.execute(text("SELECT n FROM t"))).scalars().all() == [2]
        finally:
            await db.dispose()

    asyncio.run(scenario())
