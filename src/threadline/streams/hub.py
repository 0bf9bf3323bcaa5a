"""One per app: wakes streams when this process stores something they carry, bounds how many streams a user
holds open, and ends every stream when the server shuts down.

Wakeups are in-process only; what another process (a replica) stores reaches a stream through its bounded
polling (`poll_seconds`), so a wakeup is an optimisation of latency, never needed for correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from threadline.core.errors import Problem


class TooManyStreams(Problem):
    status = 429
    type_slug = "too-many-streams"


def events_topic(conversation_id: str) -> str:
    return f"events:{conversation_id}"


def conversations_topic(user_id: str) -> str:
    return f"conversations:{user_id}"


@dataclass
class StreamHub:
    max_per_client: int
    heartbeat_seconds: float
    poll_seconds: float
    _open: dict[str, int] = field(default_factory=dict)
    _watchers: dict[str, set[asyncio.Event]] = field(default_factory=dict)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    # -- limits -----------------------------------------------------------------------------------

    def acquire(self, client: str) -> None:
        """Count one more open stream for `client` (a user, or an address for the public streams), or 429."""
        if self._open.get(client, 0) >= self.max_per_client:
            raise TooManyStreams(
                f"at most {self.max_per_client} streams may be open at once for {client.split(':', 1)[0]}; "
                "close one (or wait for it to end) and retry",
                limit=self.max_per_client,
            )
        self._open[client] = self._open.get(client, 0) + 1

    def release(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)

    def open_streams(self, client: str) -> int:
        return self._open.get(client, 0)

    # -- wakeups ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, topic: str) -> Iterator[asyncio.Event]:
        """An event set whenever `topic` is notified (and at shutdown) while the block runs. Register before
        reading, clear before each read: a notification during a read is never lost."""
        flag = asyncio.Event()
        self._watchers.setdefault(topic, set()).add(flag)
        try:
            yield flag
        finally:
            watchers = self._watchers.get(topic)
            if watchers is not None:
                watchers.discard(flag)
                if not watchers:
                    del self._watchers[topic]

    def notify(self, topic: str) -> None:
        for flag in self._watchers.get(topic, ()):
            flag.set()

    async def wait(self, flag: asyncio.Event, timeout: float) -> None:
        """Until `flag` is set, the hub closes, or `timeout` seconds pass."""
        if flag.is_set() or self._closing.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flag.wait(), timeout)

    # -- shutdown ---------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close(self) -> None:
        """End every stream (each finishes its response cleanly) and refuse new ones: the server is stopping."""
        self._closing.set()
        for watchers in self._watchers.values():
            for flag in watchers:
                flag.set()
