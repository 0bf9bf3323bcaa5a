"""The warm pool: pre-started agent servers, owned by no user, handed to a new conversation at start.

An agent server takes about 10 s to boot here; a start that claims a RUNNING pool sandbox skips that.
Pool sandboxes are of the default spec (the newest installed agent-server version): a start only takes
one of the version it needs, and when the default changes (a newer version was installed) the pool's
sandboxes of the old one are replaced.
The pool refills in the background after every start that used it and every `refill_interval` seconds (which also
replaces pool sandboxes that died). Claiming is one conditional UPDATE (`... WHERE user_id IS NULL`), so
two starts, or two Threadline processes on one database, never get the same sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select, update

from threadline.db.types import utcnow
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus
from threadline.sandboxes.tables import sandboxes

log = logging.getLogger("threadline.pool")
_LIVE = (SandboxStatus.STARTING.value, SandboxStatus.RUNNING.value)


class WarmPool:
    def __init__(self, service: SandboxService, size: int, *, refill_interval: float = 30.0) -> None:
        self.service = service
        self.size = size
        self.refill_interval = refill_interval
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.size > 0

    async def _pool_rows(self) -> list[SandboxRecord]:
        async with self.service.db.read() as conn:
            query = select(sandboxes).where(sandboxes.c.user_id.is_(None)).order_by(sandboxes.c.created_at)
            return SandboxRecord.all_of((await conn.execute(query)).all())

    async def stats(self) -> dict[str, int]:
        rows = await self._pool_rows()
        statuses = [self.service.effective_status(r) for r in rows]
        return {
            "size": self.size,
            "ready": sum(s is SandboxStatus.RUNNING for s in statuses),
            "starting": sum(s is SandboxStatus.STARTING for s in statuses),
        }

    async def claim(self, user_id: str, version: str | None = None) -> str | None:
        """Give a RUNNING pool sandbox of `version` (None: the default spec's) to the user; None when none is
        ready (the caller starts one)."""
        if not self.enabled:
            return None
        version = version or self.service.default_version()
        for row in await self._pool_rows():
            if self.service.version_of(row) != version:
                continue
            if self.service.effective_status(row) is not SandboxStatus.RUNNING:
                continue
            async with self.service.db.write() as conn:
                await self.service.take_slot(conn, user_id=user_id)
                result = await conn.execute(
                    update(sandboxes)
                    .where(
                        sandboxes.c.id == row.id,
                        sandboxes.c.user_id.is_(None),
                        sandboxes.c.status == SandboxStatus.RUNNING.value,
                    )
                    .values(user_id=user_id, updated_at=utcnow())
                )
            if result.rowcount:
                return str(row.id)
        return None

    def replenish(self) -> None:
        """Refill now, in the background. Starts call this when they are done, not when they claim: booting
        a replacement takes seconds of CPU, which would slow down the hand-over that is still going on."""
        self._wake.set()

    async def refill(self) -> None:
        """Remove dead or stopped pool sandboxes and those of a version no longer the default, and start new
        ones up to the pool size. One process at a time on this machine (the workers of `threadline serve`
        share the pool): each counts what the one before it started."""
        async with _refill_lock(self.service.settings.home / "warm-pool.lock"):
            await self._refill()

    async def _refill(self) -> None:
        live = 0
        version = self.service.default_version()
        for row in await self._pool_rows():
            if self.service.effective_status(row).value not in _LIVE:
                await self.service.destroy(row)
            elif self.service.version_of(row) == version:
                live += 1
            elif await self._retire(row.id):
                await self.service.destroy(row)
        for _ in range(max(0, self.size - live)):
            await self.service.create(user_id=None)

    async def _retire(self, sandbox_id: str) -> bool:
        """Take a pool sandbox out of the pool for good (claims take only RUNNING ones); False when a start
        claimed it first."""
        async with self.service.db.write() as conn:
            result = await conn.execute(
                update(sandboxes)
                .where(sandboxes.c.id == sandbox_id, sandboxes.c.user_id.is_(None))
                .values(status=SandboxStatus.ERROR.value, detail="replaced: no longer the default spec's version")
            )
        return bool(result.rowcount)

    async def _run(self) -> None:
        while True:
            try:
                await self.refill()
            except Exception:
                log.exception("refilling the warm pool failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refill_interval)

    def start(self) -> None:
        if self.enabled and self._runner is None:
            self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None


@contextlib.asynccontextmanager
async def _refill_lock(path: Path, poll: float = 0.1) -> AsyncIterator[None]:
    """An exclusive lock on a file, between processes of this machine; waits without blocking the loop (and
    can be cancelled while waiting). The kernel drops it when the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)  # releases the lock
