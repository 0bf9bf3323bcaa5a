"""Instance leases. Each Threadline process registers itself and heartbeats; a sandbox belongs to the
process that runs it. Another process adopts a sandbox only once its owner's lease has gone stale (the
owner crashed or stopped), and a process stops only its own sandboxes on shutdown, so replicas sharing
one database never stop, re-attach or mark MISSING each other's sandboxes.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from threadline.core.ids import new_id
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.sandboxes.tables import instances


class InstanceLease:
    def __init__(self, db: Database, *, ttl_seconds: float = 30.0) -> None:
        self.db = db
        self.id = new_id()
        self.ttl = timedelta(seconds=ttl_seconds)

    async def register(self) -> None:
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                instances.insert().values(
                    id=self.id, hostname=socket.gethostname()[:255], pid=os.getpid(), started_at=now, heartbeat_at=now
                )
            )

    async def heartbeat(self) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(instances).where(instances.c.id == self.id).values(heartbeat_at=utcnow())
            )
            if result.rowcount == 0:  # removed as stale by another process: come back
                now = utcnow()
                await conn.execute(
                    instances.insert().values(
                        id=self.id,
                        hostname=socket.gethostname()[:255],
                        pid=os.getpid(),
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

    def stale_before(self) -> datetime:
        return utcnow() - self.ttl

    async def live_instances(self) -> set[str]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(instances.c.id).where(instances.c.heartbeat_at >= self.stale_before()))
            return {r.id for r in rows} | {self.id}

    async def unregister(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(instances).where(instances.c.id == self.id))
            # Leases long gone are dropped by whoever stops cleanly.
            await conn.execute(delete(instances).where(instances.c.heartbeat_at < utcnow() - 10 * self.ttl))
