"""Database engine and transaction helpers for SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 10_000


class Database:
    """One engine plus the two ways to use it: `read()` and `write()` transactions.

    SQLite allows one writer at a time. Writes in this process queue on an asyncio lock and open
    with BEGIN IMMEDIATE, so a transaction never has to upgrade a read lock (which fails at once
    with "database is locked" instead of waiting). Writers of other processes on the same file (the
    workers of `threadline serve --workers N`, the CLI) queue on an exclusive lock of a file beside the
    database: the kernel wakes the next writer the moment the last one commits, where SQLite's own busy
    handler would sleep 1 to 100 ms between tries (measured: two workers made 0.66x the PATCHes of one,
    p99 1.1 s). busy_timeout stays as the backstop for writers that do not take that lock.
    """

    def __init__(self, url: str, *, echo: bool = False, schema: str | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            path = make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
            kwargs["pool_pre_ping"] = True
            if schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._file_lock: _WriterFileLock | None = None
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine)
            path = make_url(url).database
            if path and path != ":memory:" and not path.startswith("file:"):
                self._file_lock = _WriterFileLock(f"{path}.writer-lock")

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

    @asynccontextmanager
    async def _other_processes(self) -> AsyncIterator[None]:
        if self._file_lock is None:
            yield
            return
        await self._file_lock.acquire()
        try:
            yield
        finally:
            self._file_lock.release()

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._file_lock is not None:
            self._file_lock.close()


class _WriterFileLock:
    """An exclusive flock() on a file, per process (each opens its own). Taken without blocking when free
    (the common case: no thread hop); otherwise waited for in a thread, never on the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

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


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN can be IMMEDIATE when we write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
