"""Database engine and transaction helpers for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import QueuePool, create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from threadline.db.types import json_loads

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Threads running whole SQLite transactions (`run_read`/`run_write`), each with a pooled connection of its own
# while it runs one (the default of `Settings.sqlite_threads`, which says why one). With more, reads of a WAL
# database go on side by side; writes take turns anyway.
SQLITE_THREADS = 1
# PostgreSQL: connections a process keeps open (`Settings.database_pool_size`), and how many more it opens for a
# burst and closes once returned.
POOL_SIZE = 20
POOL_OVERFLOW = 10

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """One engine plus the ways to use it: `read()` and `write()` transactions over an `AsyncConnection`, and
    `run_read(fn)` / `run_write(fn)`, a whole transaction as one synchronous function over a `Connection`.

    SQLite allows one writer at a time. Writes in this process queue on an asyncio lock and open
    with BEGIN IMMEDIATE, so a transaction never has to upgrade a read lock (which fails at once
    with "database is locked" instead of waiting). Writers of other processes on the same file (the
    workers of `threadline serve --workers N`, the CLI) queue on an exclusive lock of a file beside the
    database: the kernel wakes the next writer the moment the last one commits, where SQLite's own busy
    handler would sleep 1 to 100 ms between tries (measured: two workers made 0.66x the PATCHes of one,
    p99 1.1 s). busy_timeout stays as the backstop for writers that do not take that lock.

    On SQLite, aiosqlite runs every DBAPI call (execute, fetch, cursor close, commit...) in its connection's
    thread, a round trip of the event loop each (about 20 for a PATCH), under greenlet switches and a lock per
    execute. `run_read`/`run_write` run the whole function in one of this Database's own threads on a second,
    synchronous engine on the same file instead: one round trip per transaction. On PostgreSQL (asyncpg has no
    threads to save) and on SQLite databases a second engine would not see (`:memory:`, URI file names) they
    are `AsyncConnection.run_sync` in a `read()`/`write()` transaction.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        schema: str | None = None,
        sqlite_threads: int = SQLITE_THREADS,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo, "json_deserializer": json_loads}
        if self.is_sqlite:
            path = parsed.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = POOL_OVERFLOW
            if schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if not self.is_sqlite:
            _install_connection_checks(self.engine.sync_engine)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._file_lock: _WriterFileLock | None = None
        self.writer_lock = WriterLockStats()
        self._threads: _SqliteThreads | None = None
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine.sync_engine)
            path = parsed.database
            if path and path != ":memory:" and not path.startswith("file:"):
                self._file_lock = _WriterFileLock(f"{path}.writer-lock")
                self._threads = _SqliteThreads(parsed, echo=echo, threads=sqlite_threads)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._other_processes(), self.engine.connect() as conn:
            await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    async def run_read(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(connection, *args, **kwargs)` in a read transaction: what it returns, or raises. `fn` may run
        twice (PostgreSQL, a connection found closed): it must do nothing but through the connection."""
        threads = self._threads
        if not self.is_sqlite:
            return await self._run_postgresql(fn, args, kwargs, write=False)
        if threads is None:
            # SQLite without threads of its own (`:memory:`): a transaction, for a snapshot across statements.
            async with self.engine.connect() as conn, conn.begin():
                return await conn.run_sync(fn, *args, **kwargs)
        return await asyncio.wrap_future(threads.executor.submit(_transaction, threads.engine, fn, args, kwargs))

    async def run_write(self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(connection, *args, **kwargs)` in a write transaction, committed when it returns and rolled back
        when it raises (the exception propagates as raised). `fn` may run twice (PostgreSQL, a connection found
        closed before the commit): it must do nothing but through the connection."""
        threads = self._threads
        if not self.is_sqlite:
            return await self._run_postgresql(fn, args, kwargs, write=True)
        if threads is None or self._write_lock is None or self._file_lock is None:
            async with self.write() as conn:
                return await conn.run_sync(fn, *args, **kwargs)
        # The other processes' writers are kept out by the file lock, taken and given back in the database
        # thread around the transaction alone: held from the event loop, it also covered the wait for the
        # thread and for this loop to resume the writer, and another process's writers waited for all of it.
        async with self._write_lock:
            work = threads.executor.submit(
                _transaction_of_this_process, self._file_lock.fd(), self.writer_lock, threads.writer, fn, args, kwargs
            )
            done = asyncio.wrap_future(work)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                # Not started yet: it never will (and never took the file lock). Under way: a thread cannot be
                # interrupted, so the transaction ends (commits or fails) in its thread, which then gives the
                # file lock back; this process's next writer waits until it has.
                if not work.cancel():
                    await _wait_out(done)
                raise

    async def run_autocommit(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(connection, *args, **kwargs)` with each statement committed on its own (PostgreSQL): for a write
        that is one statement after reads, such as a compare-and-set, without the BEGIN and COMMIT round trips.
        `fn` may run twice (a connection found closed), so a write it makes must be safe to make again.
        SQLite: a write transaction (the same single thread hop)."""
        if self.is_sqlite:
            return await self.run_write(fn, *args, **kwargs)
        return await self._run_postgresql(fn, args, kwargs, write=False)

    async def _run_postgresql(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *, write: bool
    ) -> T:
        """`fn` on a pooled connection checked out without a ping, and run once more on a fresh one if the
        database turns out to have closed that connection (a restart) before anything was committed.

        A read runs without BEGIN and COMMIT: under READ COMMITTED (PostgreSQL's default, and this server's)
        every statement reads a snapshot of its own, in a transaction or not, so they would buy nothing but
        two round trips. A ping per checkout would be a third (`read()`/`write()` keep it)."""
        for attempt in (1, 2):
            committing = False
            unpinged = _PING_ON_CHECKOUT.set(False)
            try:
                async with self.engine.connect() as conn:
                    if not write:
                        await conn.execution_options(isolation_level="AUTOCOMMIT")
                        return await conn.run_sync(fn, *args, **kwargs)
                    async with conn.begin():
                        result = await conn.run_sync(fn, *args, **kwargs)
                        # From here on the transaction may have been committed, whatever the outcome says.
                        committing = True
                    return result
            except DBAPIError as exc:
                # The pool has let go of every connection as old as that one (SQLAlchemy does on a
                # disconnect), so the second attempt gets a new one.
                if attempt == 1 and exc.connection_invalidated and not committing:
                    continue
                raise
            finally:
                _PING_ON_CHECKOUT.reset(unpinged)
        raise AssertionError("unreachable: the second attempt returns or raises")

    @asynccontextmanager
    async def _other_processes(self) -> AsyncIterator[None]:
        if self._file_lock is None:
            yield
            return
        asked = time.perf_counter()
        await self._file_lock.acquire()
        taken = time.perf_counter()
        try:
            yield
        finally:
            self._file_lock.release()
            stats = self.writer_lock
            stats.transactions += 1
            stats.waited_seconds += taken - asked
            stats.held_seconds += time.perf_counter() - taken

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._threads is not None:
            await self._threads.close()
        if self._file_lock is not None:
            self._file_lock.close()


class _SqliteThreads:
    """A synchronous engine on the database's file and the threads that run its transactions."""

    def __init__(self, url: URL, *, echo: bool, threads: int) -> None:
        self.engine: Engine = create_engine(
            url.set(drivername="sqlite+pysqlite"),
            echo=echo,
            # A pooled connection serves whichever thread runs the next transaction (one at a time).
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            json_deserializer=json_loads,
            poolclass=QueuePool,
            pool_size=threads,
            max_overflow=0,
        )
        _install_sqlite_hooks(self.engine)
        # Built once: the same pool and hooks, transactions opened with BEGIN IMMEDIATE.
        self.writer: Engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="threadline-sqlite")

    async def close(self) -> None:
        # Transactions under way end first; waited for in a thread, not on the event loop.
        await asyncio.to_thread(self.executor.shutdown)
        self.engine.dispose()


def _transaction(engine: Engine, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """One transaction in the calling thread: committed when `fn` returns, rolled back when it raises."""
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args, **kwargs)


@dataclass(slots=True)
class WriterLockStats:
    """SQLite: this process's write transactions run under the writers' file lock, and the time they waited
    for it and held it. Held time is what every other writer of the database waits for: its share of
    the wall clock says how close the database is to its one-writer limit (`/metrics`)."""

    transactions: int = 0
    waited_seconds: float = 0.0
    held_seconds: float = 0.0


def _transaction_of_this_process(
    lock_fd: int,
    stats: WriterLockStats,
    engine: Engine,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    """A write transaction in the calling (database) thread while this process holds the writers' file lock.
    Waiting for it here holds up this thread's other work (reads too) only while another process runs a write
    transaction: every holder of the lock does database work alone while it holds it, never network calls.
    One at a time per process (the caller holds the process's write lock): `stats` needs no lock."""
    asked = time.perf_counter()
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    taken = time.perf_counter()
    try:
        return _transaction(engine, fn, args, kwargs)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        stats.transactions += 1
        stats.waited_seconds += taken - asked
        stats.held_seconds += time.perf_counter() - taken


async def _wait_out(future: asyncio.Future[Any]) -> None:
    """Until the future is done, whatever cancellations come meanwhile (its outcome is not wanted)."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])


class _WriterFileLock:
    """An exclusive flock() on a file, per process (each opens its own). Taken without blocking when free
    (the common case: no thread hop); otherwise waited for in a thread, never on the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def fd(self) -> int:
        """The descriptor the lock is taken on (opened on first use), for a thread that takes it itself."""
        return self._open()

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd

    async def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The thread goes on waiting; the lock it gets then is nobody's, so give it back at once.
                waiting.add_done_callback(self._release_if_taken)
                raise

    def _release_if_taken(self, waiting: asyncio.Future[None]) -> None:
        if not waiting.cancelled() and waiting.exception() is None:
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


# PostgreSQL: whether a connection is pinged when it is checked out of the pool. `run_read`/`run_write` skip it
# (they run their function again on a fresh connection instead); `read()`/`write()`, whose transactions are
# awaited statements that cannot be run again, keep it.
_PING_ON_CHECKOUT: ContextVar[bool] = ContextVar("threadline_ping_on_checkout", default=True)


def _install_connection_checks(engine: Engine) -> None:
    dialect = engine.dialect

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # A connection the database closed (a restart, an idle timeout) is known to be closed without a
        # round trip once the event loop has seen its socket close; the pool replaces it (and tries again).
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the database closed this pooled connection")
        if _PING_ON_CHECKOUT.get():
            try:
                dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise DisconnectionError("a pooled connection did not answer a ping") from exc


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN can be IMMEDIATE when we write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
