"""`Database.run_read` / `run_write`: a whole transaction as one synchronous function over a `Connection`.

On SQLite the function runs in one of the Database's threads, on a synchronous engine on the same file: one
round trip of the event loop per transaction, however many statements, where aiosqlite makes one per DBAPI
call. Writes keep the guarantees of `write()`: all or nothing, one writer at a time in the process (asyncio
lock) and across processes (the lock file beside the database), and a cancelled caller does not let the next
writer in before its transaction, which goes on in its thread, has ended.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import Connection

from tests import conftest
from tests.support.writer_locks import lock_free, until
from threadline.config import Settings
from threadline.db.engine import Database

T = TypeVar("T")


class _Refused(Exception):
    """What a transaction's function raises in these tests."""


def _run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


async def _stays_false(predicate: Callable[[], bool], what: str, for_seconds: float = 0.2) -> None:
    """For something that must not happen: the wrong behaviour gets that long to show."""
    deadline = time.monotonic() + for_seconds
    while time.monotonic() < deadline:
        assert not predicate(), what
        await asyncio.sleep(0.01)


async def _spin(times: int = 20) -> None:
    """Let the event loop run everything ready (a cancellation's handling) a number of times."""
    for _ in range(times):
        await asyncio.sleep(0)


def _lock_file_free(path: Path) -> bool:
    return lock_free(Path(f"{path}.writer-lock"))


async def _create_table(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(text("CREATE TABLE items (n INTEGER NOT NULL)"))


def _insert(conn: Connection, *, values: list[int]) -> int:
    for n in values:
        conn.execute(text("INSERT INTO items (n) VALUES (:n)"), {"n": n})
    return len(values)


def _items(conn: Connection) -> list[int]:
    return list(conn.execute(text("SELECT n FROM items ORDER BY n")).scalars())


def test_a_write_commits_all_or_nothing_and_reads_see_it(database: conftest.Database) -> None:
    refusal = _Refused("no")

    def insert_then_refuse(conn: Connection) -> None:
        _insert(conn, values=[1, 2])
        raise refusal

    async def scenario() -> None:
        db = Database(database.url, schema=database.schema)
        other = Database(database.url, schema=database.schema)  # another process's view of the database
        try:
            await _create_table(db)
            with pytest.raises(_Refused) as raised:
                await db.run_write(insert_then_refuse)
            assert raised.value is refusal, "the function's exception reaches the caller as raised"
            assert await db.run_read(_items) == [], "nothing of a refused transaction is stored"

            assert await db.run_write(_insert, values=[3, 4, 5]) == 3
            assert await db.run_read(_items) == [3, 4, 5]
            assert await other.run_read(_items) == [3, 4, 5]
            async with other.read() as conn:
                assert await conn.run_sync(_items) == [3, 4, 5]
        finally:
            await db.dispose()
            await other.dispose()

    _run(scenario)


class _CountingLoop(asyncio.SelectorEventLoop):
    """Counts the callbacks other threads hand to the loop: a thread that ran a database call and gives its
    result back (aiosqlite's connection thread, an executor's thread) does it this way, once per round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads = 0

    def call_soon_threadsafe(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        self.from_threads += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_a_sqlite_transaction_is_one_round_trip_whatever_its_statements(tmp_path: Path) -> None:
    values = list(range(10))

    def many_statements(conn: Connection) -> list[int]:
        _insert(conn, values=values)
        conn.execute(text("UPDATE items SET n = n + 100 WHERE n < 5"))
        return _items(conn)

    async def scenario(loop: _CountingLoop) -> None:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
        try:
            await _create_table(db)

            before = loop.from_threads
            stored = await db.run_write(many_statements)
            assert len(stored) == len(values)
            assert loop.from_threads - before == 1, "a write transaction is one round trip to a thread"

            before = loop.from_threads
            assert await db.run_read(_items) == stored
            assert loop.from_threads - before == 1, "a read transaction is one round trip to a thread"

            # What the count would show for statements one round trip each: the same transaction over aiosqlite.
            before = loop.from_threads
            async with db.write() as conn:
                await conn.execute(text("DELETE FROM items"))
                await conn.run_sync(many_statements)
            assert loop.from_threads - before > len(values), "aiosqlite: a round trip per statement at least"
        finally:
            await db.dispose()

    with asyncio.Runner(loop_factory=_CountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, _CountingLoop)
        runner.run(scenario(loop))


def test_a_cancelled_writer_keeps_the_locks_until_its_transaction_has_ended(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first_wrote, let_first_finish = threading.Event(), threading.Event()
    log: list[str] = []

    def first(conn: Connection) -> None:
        _insert(conn, values=[1])
        first_wrote.set()
        if not let_first_finish.wait(10):
            raise AssertionError("the test never let the first transaction finish")
        _insert(conn, values=[2])
        log.append("first transaction finished")

    def second(conn: Connection) -> list[int]:
        seen = _items(conn)
        _insert(conn, values=[3])
        return seen

    def on_begin(_conn: Connection) -> None:
        log.append("a transaction began")

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await _create_table(db)
            writing = asyncio.create_task(db.run_write(first))
            await until(first_wrote.is_set, "the first transaction is under way in its thread")
            # From here on, any transaction beginning (in any engine) is logged.
            event.listen(Engine, "begin", on_begin)
            try:
                writing.cancel()
                await _spin()
                assert not _lock_file_free(path), "the lock of the writers' queue was given up mid-transaction"

                waiting = asyncio.create_task(db.run_write(second))
                await _stays_false(lambda: bool(log), "a second writer began while the first was under way")
                let_first_finish.set()
                seen = await asyncio.wait_for(waiting, 10)
            finally:
                event.remove(Engine, "begin", on_begin)
            assert log == ["first transaction finished", "a transaction began"]
            assert seen == [1, 2], "the cancelled caller's transaction went on to its commit"
            await until(writing.done, "the cancelled caller ends")
            assert writing.cancelled(), "and ends cancelled"
            assert await db.run_read(_items) == [1, 2, 3]
            await until(lambda: _lock_file_free(path), "the lock is free once nobody writes")
        finally:
            let_first_finish.set()
            await db.dispose()

    _run(scenario)


def test_a_writer_cancelled_before_its_turn_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first_wrote, let_first_finish = threading.Event(), threading.Event()

    def first(conn: Connection) -> None:
        _insert(conn, values=[1])
        first_wrote.set()
        if not let_first_finish.wait(10):
            raise AssertionError("the test never let the first transaction finish")

    async def scenario() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        try:
            await _create_table(db)
            writing = asyncio.create_task(db.run_write(first))
            await until(first_wrote.is_set, "the first transaction is under way in its thread")
            queued = asyncio.create_task(db.run_write(_insert, values=[2]))
            await _spin()
            queued.cancel()
            let_first_finish.set()
            await asyncio.wait_for(writing, 10)
            await asyncio.gather(queued, return_exceptions=True)
            assert queued.cancelled()
            assert await db.run_read(_items) == [1]
            assert await db.run_write(_insert, values=[3]) == 1, "and the queue goes on"
            assert await db.run_read(_items) == [1, 3]
        finally:
            let_first_finish.set()
            await db.dispose()

    _run(scenario)


def test_writers_of_two_processes_on_one_file_all_commit(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    per_process = 25

    def increment(conn: Connection) -> None:
        # Read, then write: two writers in one transaction at once would lose an increment (or fail).
        n = conn.execute(text("SELECT n FROM items")).scalar_one()
        conn.execute(text("UPDATE items SET n = :n"), {"n": n + 1})

    async def scenario() -> None:
        one, two = Database(url), Database(url)  # each with its own threads, connections and lock file handle
        try:
            await _create_table(one)
            await one.run_write(_insert, values=[0])
            await asyncio.wait_for(
                asyncio.gather(*(db.run_write(increment) for _ in range(per_process) for db in (one, two))), 60
            )
            assert await two.run_read(_items) == [2 * per_process]
        finally:
            await one.dispose()
            await two.dispose()

    _run(scenario)


def test_an_in_memory_sqlite_database_runs_its_transactions_on_the_async_engine() -> None:
    async def scenario() -> None:
        db = Database("sqlite+aiosqlite:///:memory:")  # a second engine would open another, empty, database
        try:
            await _create_table(db)
            assert await db.run_write(_insert, values=[7, 8]) == 2
            assert await db.run_read(_items) == [7, 8]
            with pytest.raises(_Refused):
                await db.run_write(_refuse_after_insert)
            assert await db.run_read(_items) == [7, 8]
        finally:
            await db.dispose()

    _run(scenario)


def _refuse_after_insert(conn: Connection) -> None:
    _insert(conn, values=[9])
    raise _Refused("no")


@pytest.mark.parametrize("threads", [1, 4])
def test_sqlite_transactions_run_on_as_many_threads_as_configured(tmp_path: Path, threads: int) -> None:
    """`THREADLINE_SQLITE_THREADS` (default 1): that many threads run the transactions; with several, reads
    go on side by side (one waits inside its transaction for another to start), with one they take turns;
    either way every write counts."""
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    both_inside = threading.Barrier(2, timeout=0.5)
    names: set[str] = set()

    def read_waiting_for_another(conn: Connection) -> bool:
        """True when another read entered its transaction while this one was still in its own."""
        names.add(threading.current_thread().name)
        conn.execute(text("SELECT n FROM items")).all()
        try:
            both_inside.wait()
        except threading.BrokenBarrierError:
            return False
        return True

    def increment(conn: Connection) -> None:
        names.add(threading.current_thread().name)
        n = conn.execute(text("SELECT n FROM items")).scalar_one()
        conn.execute(text("UPDATE items SET n = :n"), {"n": n + 1})

    async def scenario() -> None:
        db = Database(url, sqlite_threads=threads)
        try:
            await _create_table(db)
            await db.run_write(_insert, values=[0])
            overlapped = await asyncio.gather(
                db.run_read(read_waiting_for_another), db.run_read(read_waiting_for_another)
            )
            assert any(overlapped) is (threads > 1)
            names.clear()
            await asyncio.gather(*(db.run_write(increment) for _ in range(20)))
            assert await db.run_read(_items) == [20]
            assert 1 <= len(names) <= threads
        finally:
            await db.dispose()

    _run(scenario)


def test_the_sqlite_thread_setting_is_bounded() -> None:
    assert Settings().sqlite_threads == 1
    for bad in (0, -1, 65):
        with pytest.raises(ValueError):
            Settings(sqlite_threads=bad)
