"""API keys served from memory, and forgotten as soon as any process changes a key or a user.

Every change to `users` or `api_keys` raises the one-row counter `auth_epoch` in the same transaction
(database triggers, migration 0011), whoever makes it: this process, another worker or replica, the CLI.
The cache holds (key hash -> user, key id) for live keys only, each read from the database together with
the epoch it is true at, and answers only while it is *fresh*:

- a background task reads the epoch every `poll_seconds` (one primary-key read); a higher epoch empties
  the cache;
- an entry is used only if its epoch is the newest one seen and a read that *started* at most
  `fresh_seconds` ago saw no newer one. So a change committed at time T is seen by every read started
  after T, and no entry it invalidates can answer after T + `fresh_seconds` (0.75 s), whether or not the
  poller keeps up: when it falls behind, authentication reads the database again (as before the cache),
  never trusts an old answer;
- unknown and revoked keys are never cached (no negative entries): an unknown key costs a database read,
  as it always did, and cannot grow the cache. Live keys are kept up to `max_entries`, least recently used
  out first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from threadline.auth.service import User, key_digest, read_epoch, read_key
from threadline.db.engine import Database

log = logging.getLogger("threadline.auth")


class KeyCache:
    def __init__(
        self,
        db: Database,
        *,
        poll_seconds: float = 0.25,
        fresh_seconds: float = 0.75,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.fresh_seconds = fresh_seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[User, str]] = OrderedDict()
        self._epoch = -1
        self._confirmed_at = -math.inf
        self._poller: asyncio.Task[None] | None = None
        # How often the database was asked (hits are the rest); for tests and /metrics-style checks.
        self.reads = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def fresh(self) -> bool:
        return self.clock() - self._confirmed_at <= self.fresh_seconds

    def observe(self, epoch: int, read_started: float) -> None:
        """A read that started at `read_started` saw `epoch`."""
        if epoch > self._epoch:
            self._entries.clear()
            self._epoch = epoch
            self._confirmed_at = read_started
        elif epoch == self._epoch:
            self._confirmed_at = max(self._confirmed_at, read_started)
        # An older epoch is a read that started before a newer one finished: it says nothing new.

    async def authenticate(self, key: str) -> tuple[User, str] | None:
        """The user a live key belongs to and the key's id, or None for an unknown or revoked key."""
        digest = key_digest(key)
        if digest is None:
            return None
        return await self.authenticate_digest(digest)

    async def authenticate_digest(self, digest: str) -> tuple[User, str] | None:
        """`authenticate` for a key known by its digest only (a console session holds the digest, never the
        key): the same cache, the same freshness rule, so revoking the key ends the session as fast."""
        if self.fresh:
            found = self._entries.get(digest)
            if found is not None:
                self._entries.move_to_end(digest)
                return found
        started = self.clock()
        self.reads += 1
        found, epoch = await read_key(self.db, digest)
        self.observe(epoch, started)
        if found is not None and epoch == self._epoch:
            self._entries[digest] = found
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return found

    def forget(self) -> None:
        """Drop everything (this process just changed a key or a user; the poller would see it too)."""
        self._entries.clear()

    async def poll(self) -> None:
        started = self.clock()
        self.observe(await read_epoch(self.db), started)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                # Not fresh any more in a moment: authentication reads the database until a poll succeeds.
                log.exception("reading the auth epoch failed; retrying")
            await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
