"""Sandboxes: records in the database, agent servers run by a backend, status that is actually right.

Stored `status` is the desired/last known state. The effective status adds what only the running
system knows: a RUNNING sandbox whose process died is MISSING, a STARTING one ERROR (effective_status);
reads that find one record it so (settle). STARTING turns RUNNING when the
agent server's /alive answers (an idle agent server is RUNNING, not STARTING forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.auth.service import hash_key
from threadline.config import Settings
from threadline.core.crypto import SecretBox
from threadline.core.errors import Conflict, NotFound, Problem
from threadline.core.ids import new_id
from threadline.core.pagination import Pager, filters_fingerprint
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.sandboxes import runtime
from threadline.sandboxes import specs as catalog
from threadline.sandboxes.agent_client import AgentServerClient, AgentServerError, AgentServerUnavailable
from threadline.sandboxes.backend import SandboxBackend, remove_work_dir
from threadline.sandboxes.egress import Rule
from threadline.sandboxes.instances import InstanceLease
from threadline.sandboxes.models import ExposedUrl, SandboxInfo, SandboxPage, SandboxSpecInfo
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.status import SandboxStatus
from threadline.sandboxes.tables import instances, sandboxes

log = logging.getLogger("threadline.sandboxes")
PROCESS_SPEC_ID = "process"
_LIVE = (SandboxStatus.STARTING.value, SandboxStatus.RUNNING.value)
# First key of the PostgreSQL advisory lock that serialises a user's sandbox starts (second: the user).
_CAP_LOCK_CLASS = 0x7D1E


class SandboxGone(Problem):
    status = 410
    type_slug = "sandbox-gone"


class SandboxLimitReached(Problem):
    """429: the user has as many STARTING or RUNNING sandboxes as allowed; nothing is paused to make room."""

    status = 429
    type_slug = "sandbox-limit-reached"

    def __init__(self, limit: int, current: int) -> None:
        super().__init__(
            f"at most {limit} sandboxes may be STARTING or RUNNING per user and {current} are; "
            "pause or delete one first",
            limit=limit,
            current=current,
        )


def _user_lock_key(user_id: str) -> int:
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:4], "big", signed=True)


_SESSION_KEY_CACHE = 4096


class ConversationsOfSandboxes(Protocol):
    """What sandboxes need to know of the conversations they run. Conversations and events build on
    sandboxes, so the layer above both provides it (`webhooks.sandbox_conversations`, set by the app)."""

    async def latest_event_times(self, sandbox_id: str) -> dict[str, datetime | None]:
        """The conversations on the sandbox, each with the time of its newest stored event (None: none)."""
        ...

    async def store_agent_events(self, *, sandbox_id: str, conversation_id: str, items: list[Any]) -> int:
        """Store events the agent server reports; how many were new."""
        ...

    async def in_use(self, sandbox_id: str) -> bool:
        """Whether any conversation uses the sandbox."""
        ...


class SandboxService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        backend: SandboxBackend,
        http: httpx.AsyncClient,
        box: SecretBox,
        lease: InstanceLease | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.backend = backend
        self.http = http
        self.box = box
        self.lease = lease
        # The conversations on sandboxes (set by the app factory). None: backfill does nothing, and a
        # sandbox is never released as unused.
        self.conversations: ConversationsOfSandboxes | None = None
        # The instance this process is; sandboxes it launches or adopts carry it as their owner.
        self.owner = lease.id if lease is not None else None
        self._watchers: set[asyncio.Task[Any]] = set()
        self._session_keys: dict[str, str] = {}  # encrypted -> plain

    # -- specs ----------------------------------------------------------------------------------

    def specs(self) -> list[SandboxSpecInfo]:
        """The default spec, then one per installed agent-server version (read from disk each time, so a
        version installed while the server runs is offered at once)."""
        return [self._spec_info(spec) for spec in catalog.all_specs(self.backend.name, self._runtime_root)]

    @property
    def _runtime_root(self) -> Path:
        return self.settings.resolved_runtime_dir

    def _spec_info(self, spec: catalog.Spec) -> SandboxSpecInfo:
        # The isolated backend mounts every version's runtime at the same place inside the sandbox.
        inside = getattr(self.backend, "inside_runtime_dir", None)
        python = runtime.python_of(Path(inside) if inside else spec.runtime_dir)
        return SandboxSpecInfo(
            id=spec.id,
            command=[str(python), "-m", "openhands.agent_server", "--host", "127.0.0.1", "--port", "<port>"],
            created_at=spec.created_at,
            initial_env={"OH_ENABLE_VSCODE": "false", "OH_ENABLE_BROWSER": "false", "OH_PRELOAD_TOOLS": "false"},
            working_dir=self.backend.workspace_dir(self.settings.sandboxes_dir / "<sandbox id>"),
        )

    @staticmethod
    def version_of(row: SandboxRecord) -> str:
        """The agent-server version a sandbox runs (rows from before versions ran the pinned one)."""
        return str(row.runtime_version or runtime.AGENT_SERVER_VERSION)

    def runtime_dir_of(self, row: SandboxRecord) -> Path:
        return runtime.dir_for(self._runtime_root, self.version_of(row))

    def default_version(self) -> str:
        return catalog.default_version(runtime.installed(self._runtime_root))

    # -- presentation ---------------------------------------------------------------------------

    def effective_status(self, row: SandboxRecord) -> SandboxStatus:
        """The stored status, corrected by what the process table says. One rule wherever it is read, so a
        sandbox reads the same from the first request after its agent server died, whoever owns it:

        - RUNNING, process gone: MISSING (its runtime is gone: killed, or died while Threadline was down);
        - STARTING, process gone: ERROR (the start failed; what the start-up watcher records too);
        - STARTING without a process id yet: STARTING (being launched: nothing has died).
        """
        stored = SandboxStatus(row.status)
        if stored.value not in _LIVE or self.backend.is_alive(row.id, row.pid):
            return stored
        if stored is SandboxStatus.RUNNING:
            return SandboxStatus.MISSING
        return SandboxStatus.STARTING if row.pid is None else SandboxStatus.ERROR

    async def settle(self, rows: Sequence[SandboxRecord]) -> dict[str, SandboxStatus]:
        """Effective statuses of `rows`; a live record whose process died is recorded as what it reads.

        Recorded so that queries on the stored status (the conversations' `execution_status__eq`) agree
        with what is shown. Compare-and-set on status and pid: a resume or re-attach in between wins.
        """
        statuses = {row.id: self.effective_status(row) for row in rows}
        dead = [row for row in rows if row.status in _LIVE and statuses[row.id].value not in _LIVE]
        others = {row.owner_instance for row in dead if row.owner_instance not in (None, self.owner)}
        hosts: dict[str, str] = {}
        if others:
            async with self.db.read() as conn:
                query = select(instances.c.id, instances.c.hostname).where(instances.c.id.in_(list(others)))
                hosts = {r.id: r.hostname for r in await conn.execute(query)}
        here = socket.gethostname()[:255]
        for row in dead:
            # Only what this host's process table vouches for: a live instance elsewhere may run it there.
            if row.owner_instance is not None and hosts.get(row.owner_instance, here) != here:
                continue
            status = statuses[row.id]
            detail = (
                "agent server gone (its process is not running)"
                if status is SandboxStatus.MISSING
                else "agent server exited during start-up"
            )
            pid = sandboxes.c.pid.is_(None) if row.pid is None else sandboxes.c.pid == row.pid
            async with self.db.write() as conn:
                await conn.execute(
                    update(sandboxes)
                    .where(sandboxes.c.id == row.id, sandboxes.c.status == row.status, pid)
                    .values(status=status.value, pid=None, detail=detail, updated_at=utcnow())
                )
        return statuses

    async def settle_user(self, user_id: str) -> None:
        """Record the user's dead RUNNING/STARTING sandboxes (before a query on stored statuses)."""
        async with self.db.read() as conn:
            query = select(sandboxes).where(sandboxes.c.user_id == user_id, sandboxes.c.status.in_(list(_LIVE)))
            rows = SandboxRecord.all_of((await conn.execute(query)).all())
        await self.settle(rows)

    def session_key(self, row: SandboxRecord) -> str:
        # A sandbox's key never changes: decrypted once, not on every response that shows it.
        key = self._session_keys.get(row.session_key_enc)
        if key is None:
            if len(self._session_keys) >= _SESSION_KEY_CACHE:
                self._session_keys.clear()
            key = self._session_keys[row.session_key_enc] = self.box.decrypt(row.session_key_enc)
        return key

    def client(self, row: SandboxRecord, timeout: float | None = None) -> AgentServerClient:
        if row.url is None:
            raise AgentServerUnavailable(f"the agent server of sandbox {row.id} has not been launched")
        return AgentServerClient(
            row.url, self.session_key(row), timeout=timeout or self.settings.agent_timeout, http=self.http
        )

    def agent_url(self, row: SandboxRecord) -> str:
        """The agent server's URL for clients: an isolated sandbox has no address of its own outside, so
        clients reach it through Threadline's proxy route (which checks the sandbox's session key), or, with
        THREADLINE_SANDBOX_AGENT_URL=port, on the port Threadline's host relays to it."""
        if row.backend == PROCESS_SPEC_ID:
            return str(row.url)
        if self._own_port(row):
            return f"http://{urlsplit(self.settings.callback_base_url).hostname}:{row.port}"
        return f"{self.settings.callback_base_url}/agent-server/{row.id}"

    def _own_port(self, row: SandboxRecord) -> bool:
        """The sandbox's agent server has a port of its own (THREADLINE_SANDBOX_AGENT_URL=port)."""
        return self.settings.sandbox_agent_url == "port" and bool(row.port)

    def _public_port(self) -> int:
        parts = urlsplit(self.settings.callback_base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def to_info(self, row: SandboxRecord) -> SandboxInfo:
        status = self.effective_status(row)
        running = status is SandboxStatus.RUNNING
        own = row.backend == PROCESS_SPEC_ID or self._own_port(row)
        port = row.port if own and row.port else self._public_port()
        return SandboxInfo(
            id=row.id,
            created_by_user_id=row.user_id,
            sandbox_spec_id=row.spec_id,
            status=status,
            session_api_key=self.session_key(row) if running else None,
            exposed_urls=[ExposedUrl(name="AGENT_SERVER", url=self.agent_url(row), port=port)] if running else None,
            created_at=row.created_at,
        )

    # -- reads ----------------------------------------------------------------------------------

    async def get_record(self, *, user_id: str, sandbox_id: str) -> SandboxRecord:
        """The user's sandbox (404 when missing or another user's)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(sandboxes).where(sandboxes.c.id == sandbox_id, sandboxes.c.user_id == user_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return SandboxRecord.of(row)

    async def records_by_id(self, ids: Sequence[str]) -> dict[str, SandboxRecord]:
        """Any user's sandboxes by id (for callers that checked ownership otherwise)."""
        if not ids:
            return {}
        async with self.db.read() as conn:
            rows = (await conn.execute(select(sandboxes).where(sandboxes.c.id.in_(list(set(ids)))))).all()
        return {r.id: r for r in SandboxRecord.all_of(rows)}

    async def search(self, *, user_id: str, limit: int = 100, page_id: str | None = None) -> SandboxPage:
        fingerprint = filters_fingerprint({"user": user_id})
        secret = self.settings.resolved_secret_key
        pager = Pager(secret, "sandboxes", "CREATED_AT_DESC", fingerprint, sandboxes.c.created_at, sandboxes.c.id, True)
        query = pager.query(select(sandboxes).where(sandboxes.c.user_id == user_id), page_id, limit)
        async with self.db.read() as conn:
            rows, next_page_id = pager.split((await conn.execute(query)).all(), limit)
        return SandboxPage(items=[self.to_info(SandboxRecord.of(r)) for r in rows], next_page_id=next_page_id)

    async def batch_get(self, *, user_id: str, ids: Sequence[str]) -> list[SandboxInfo | None]:
        rows = await self.records_by_id(ids)
        return [self.to_info(rows[i]) if i in rows and rows[i].user_id == user_id else None for i in ids]

    async def by_session_key(self, key: str) -> SandboxRecord | None:
        digest = hash_key(key)
        async with self.db.read() as conn:
            row = (await conn.execute(select(sandboxes).where(sandboxes.c.session_key_hash == digest))).first()
        # Found by hash; compared again in constant time, as API keys are, so timing says nothing of the key.
        if row is None or not hmac.compare_digest(row.session_key_hash, digest):
            return None
        return SandboxRecord.of(row)

    # -- the per-user cap -----------------------------------------------------------------------

    @staticmethod
    async def _count_live(conn: AsyncConnection, *, user_id: str, exclude: str | None) -> int:
        """Sandboxes of the user whose stored status is STARTING or RUNNING (other than `exclude`)."""
        query = (
            select(func.count())
            .select_from(sandboxes)
            .where(sandboxes.c.user_id == user_id, sandboxes.c.status.in_(list(_LIVE)))
        )
        if exclude is not None:
            query = query.where(sandboxes.c.id != exclude)
        return int((await conn.execute(query)).scalar_one())

    async def check_capacity(self, *, user_id: str, exclude: str | None = None) -> None:
        """Raise SandboxLimitReached if one more sandbox (or `exclude`, resumed) would pass the cap.

        A check only, for an early answer; `take_slot` is the one that holds under concurrency.
        """
        limit = self.settings.max_running_sandboxes_per_user
        if limit <= 0:
            return
        async with self.db.read() as conn:
            current = await self._count_live(conn, user_id=user_id, exclude=exclude)
        if current >= limit:
            raise SandboxLimitReached(limit, current)

    async def take_slot(self, conn: AsyncConnection, *, user_id: str, exclude: str | None = None) -> None:
        """In the write transaction that makes a sandbox STARTING: count and claim atomically.

        SQLite writes are serialised already (one writer, BEGIN IMMEDIATE); on PostgreSQL a per-user
        transaction-scoped advisory lock makes concurrent starts of one user count one after another.
        """
        limit = self.settings.max_running_sandboxes_per_user
        if limit <= 0:
            return
        if not self.db.is_sqlite:
            lock = {"cls": _CAP_LOCK_CLASS, "key": _user_lock_key(user_id)}
            await conn.execute(text("SELECT pg_advisory_xact_lock(:cls, :key)"), lock)
        current = await self._count_live(conn, user_id=user_id, exclude=exclude)
        if current >= limit:
            raise SandboxLimitReached(limit, current)

    # -- lifecycle ------------------------------------------------------------------------------

    def _webhook_base(self) -> str:
        return f"{self.settings.callback_base_url}/api/v1/webhooks"

    def resolve_spec(self, spec_id: str | None) -> catalog.Spec:
        spec = catalog.resolve(self.backend.name, self._runtime_root, spec_id)
        if spec is None:
            raise NotFound(f"sandbox spec {spec_id!r} not found (GET /api/v1/sandbox-specs/search lists them)")
        return spec

    async def create(self, *, user_id: str | None, spec_id: str | None = None) -> SandboxRecord:
        """Record and launch a sandbox of a spec (None: the default); `user_id` None makes a warm-pool sandbox
        nobody owns yet."""
        spec = self.resolve_spec(spec_id)
        sandbox_id = new_id()
        session_key = secrets.token_urlsafe(32)
        work_dir = self.settings.sandboxes_dir / sandbox_id
        now = utcnow()
        # The record exists before the process does, so no process can ever outlive (or lack) its record.
        async with self.db.write() as conn:
            if user_id is not None:
                await self.take_slot(conn, user_id=user_id)
            await conn.execute(
                sandboxes.insert().values(
                    id=sandbox_id,
                    user_id=user_id,
                    spec_id=spec.id,
                    runtime_version=spec.version,
                    backend=self.backend.name,
                    status=SandboxStatus.STARTING.value,
                    owner_instance=self.owner,
                    work_dir=str(work_dir),
                    session_key_hash=hash_key(session_key),
                    session_key_enc=self.box.encrypt(session_key),
                    created_at=now,
                    updated_at=now,
                )
            )
        await self._launch(sandbox_id, work_dir, session_key, spec.runtime_dir)
        return await self._record(sandbox_id)

    async def _launch(self, sandbox_id: str, work_dir: Path, session_key: str, runtime_dir: Path) -> None:
        try:
            launch = await self.backend.launch(sandbox_id, work_dir, session_key, self._webhook_base(), runtime_dir)
        except Exception as exc:
            log.warning("sandbox %s failed to launch: %s", sandbox_id, exc)
            await self._set(sandbox_id, status=SandboxStatus.ERROR.value, detail=f"launch failed: {exc}")
            return
        await self._set(
            sandbox_id,
            status=SandboxStatus.STARTING.value,
            pid=launch.pid,
            port=launch.port,
            url=launch.url,
            detail=None,
            owner_instance=self.owner,
        )
        task = asyncio.create_task(self._watch_startup(sandbox_id))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _record(self, sandbox_id: str) -> SandboxRecord:
        async with self.db.read() as conn:
            row = (await conn.execute(select(sandboxes).where(sandboxes.c.id == sandbox_id))).first()
        if row is None:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return SandboxRecord.of(row)

    async def _set(
        self,
        sandbox_id: str,
        *,
        only_if: Sequence[str] | None = None,
        only_pid: int | None = None,
        **values: Any,
    ) -> bool:
        """Update a sandbox's record; `only_if` and `only_pid` make it a compare-and-set on status and pid."""
        query = update(sandboxes).where(sandboxes.c.id == sandbox_id)
        if only_if:
            query = query.where(sandboxes.c.status.in_(list(only_if)))
        if only_pid is not None:
            query = query.where(sandboxes.c.pid == only_pid)
        async with self.db.write() as conn:
            result = await conn.execute(query.values(updated_at=utcnow(), **values))
        return bool(result.rowcount)

    async def _watch_startup(self, sandbox_id: str) -> None:
        """STARTING until /alive answers; ERROR if the process dies or the deadline passes.

        Every verdict is a compare-and-set on the process this watcher watches: after a pause and a quick
        resume the record is STARTING again with a new process, which an older watcher must not judge.
        """
        deadline = asyncio.get_running_loop().time() + self.settings.sandbox_startup_timeout
        row = await self._record(sandbox_id)
        if row.pid is None:
            return  # paused (or stopped) before this watcher ran: a later launch has its own watcher
        agent = self.client(row, timeout=2.0)
        starting = [SandboxStatus.STARTING.value]
        while True:
            if not self.backend.is_alive(sandbox_id, row.pid):
                await self._set(
                    sandbox_id,
                    only_if=starting,
                    only_pid=row.pid,
                    status=SandboxStatus.ERROR.value,
                    detail=f"agent server exited during start-up (log: {row.directory / 'agent-server.log'})",
                )
                return
            if await agent.alive():
                if await self._set(sandbox_id, only_if=starting, only_pid=row.pid, status=SandboxStatus.RUNNING.value):
                    await self.backfill_events(sandbox_id)
                return
            if asyncio.get_running_loop().time() > deadline:
                if (await self._record(sandbox_id)).pid != row.pid:
                    return  # paused and resumed meanwhile: not this watcher's process to stop
                await self.backend.stop(sandbox_id, row.pid, self.settings.sandbox_stop_grace_seconds)
                await self._set(
                    sandbox_id,
                    only_if=starting,
                    only_pid=row.pid,
                    status=SandboxStatus.ERROR.value,
                    detail=f"agent server did not answer within {self.settings.sandbox_startup_timeout:.0f} s",
                )
                return
            await asyncio.sleep(0.25)

    async def backfill_events(self, sandbox_id: str) -> int:
        """Store events the agent server has and we lack (callbacks lost while Threadline was down).

        Runs whenever a sandbox becomes RUNNING or is re-attached; reads only from the newest stored
        event on, and storing is idempotent, so running it twice costs little and changes nothing.
        """
        if self.conversations is None:
            return 0
        row = await self._record(sandbox_id)
        latest = await self.conversations.latest_event_times(sandbox_id)
        agent = self.client(row, timeout=10.0)
        stored = 0
        for conversation_id, since in latest.items():
            page_id = None
            try:
                for _ in range(10_000):
                    page = await agent.search_events(
                        conversation_id,
                        page_id=page_id,
                        timestamp_gte=since.replace(tzinfo=None).isoformat() if since else None,
                    )
                    items = [i for i in page.get("items") or [] if isinstance(i, dict)]
                    if items:
                        stored += await self.conversations.store_agent_events(
                            sandbox_id=sandbox_id, conversation_id=conversation_id, items=items
                        )
                    page_id = page.get("next_page_id")
                    if not page_id:
                        break
            except (AgentServerError, NotFound) as exc:
                log.info("event backfill of conversation %s stopped: %s", conversation_id, exc)
        return stored

    async def wait_until_running(self, sandbox_id: str, timeout: float | None = None) -> SandboxRecord:
        """Poll the record until the sandbox is RUNNING; raise on ERROR, MISSING or deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.settings.sandbox_startup_timeout + 5)
        while True:
            row = await self._record(sandbox_id)
            status = self.effective_status(row)
            if status is SandboxStatus.RUNNING:
                return row
            if status in (SandboxStatus.ERROR, SandboxStatus.MISSING):
                raise SandboxGone(f"sandbox {sandbox_id} is {status.value}: {row.detail or 'agent server not running'}")
            if status is SandboxStatus.PAUSED:
                raise Conflict(f"sandbox {sandbox_id} is PAUSED")
            if loop.time() > deadline:
                raise Problem(f"sandbox {sandbox_id} did not start in time", status=503)
            await asyncio.sleep(0.2)

    async def pause(self, *, user_id: str, sandbox_id: str) -> None:
        row = await self.get_record(user_id=user_id, sandbox_id=sandbox_id)
        status = self.effective_status(row)
        if status is SandboxStatus.PAUSED:
            return
        if status is SandboxStatus.MISSING:
            raise SandboxGone(f"sandbox {sandbox_id} is MISSING")
        # Pausing a process sandbox stops its agent server; conversations persist in its directory.
        await self.backend.stop(sandbox_id, row.pid, self.settings.sandbox_stop_grace_seconds)
        await self._set(sandbox_id, status=SandboxStatus.PAUSED.value, pid=None, detail=None)

    async def resume(self, *, user_id: str, sandbox_id: str) -> None:
        row = await self.get_record(user_id=user_id, sandbox_id=sandbox_id)
        status = self.effective_status(row)
        if status in (SandboxStatus.RUNNING, SandboxStatus.STARTING):
            return
        # MISSING is resumable like ERROR while its directory (workspace, conversations) is still there:
        # a new agent server starts on it. Without the directory nothing is left to resume.
        if not row.work_dir or not Path(row.work_dir).exists():
            raise SandboxGone(f"sandbox {sandbox_id} is gone and cannot be resumed")
        if status in (SandboxStatus.ERROR, SandboxStatus.MISSING):
            await self.backend.stop(sandbox_id, row.pid, 0)
        async with self.db.write() as conn:
            await self.take_slot(conn, user_id=user_id, exclude=sandbox_id)
            await conn.execute(
                update(sandboxes)
                .where(sandboxes.c.id == sandbox_id)
                .values(status=SandboxStatus.STARTING.value, pid=None, updated_at=utcnow())
            )
        # The same agent-server version it ran before: its conversations are stored in that version's format.
        await self._launch(sandbox_id, Path(row.work_dir), self.session_key(row), self.runtime_dir_of(row))

    async def delete(self, *, user_id: str, sandbox_id: str) -> None:
        row = await self.get_record(user_id=user_id, sandbox_id=sandbox_id)
        await self.destroy(row)

    async def destroy(self, row: SandboxRecord) -> None:
        await self.backend.stop(row.id, row.pid, self.settings.sandbox_stop_grace_seconds)
        if row.work_dir:
            await asyncio.to_thread(remove_work_dir, Path(row.work_dir))
        async with self.db.write() as conn:
            await conn.execute(delete(sandboxes).where(sandboxes.c.id == row.id))

    async def release_after_delete(self, *, conversation_id: str, sandbox_id: str) -> None:
        """After a conversation is deleted: free its sandbox, or remove it from a sandbox others still use."""
        if await self.release_if_unused(sandbox_id):
            return
        row = (await self.records_by_id([sandbox_id])).get(sandbox_id)
        if row is not None and self.effective_status(row) is SandboxStatus.RUNNING:
            try:
                await self.client(row).delete_conversation(conversation_id)
            except Exception as exc:  # the record is gone already; the agent-side copy is best effort
                log.info("could not delete conversation %s on its agent server: %s", conversation_id, exc)

    async def release_if_unused(self, sandbox_id: str) -> bool:
        """Delete a sandbox no conversation uses any more (after a conversation was deleted)."""
        if self.conversations is None or await self.conversations.in_use(sandbox_id):
            return False
        row = (await self.records_by_id([sandbox_id])).get(sandbox_id)
        if row is None:
            return False
        await self.destroy(row)
        return True

    # -- process lifetime -----------------------------------------------------------------------

    async def adopt_orphans(self) -> None:
        """Take over sandboxes whose owner is gone: re-attach live ones, mark dead ones MISSING; then kill
        processes that have no live record. Runs at start-up and periodically.

        A sandbox owned by a live instance (this one, or a replica whose lease is fresh) is left alone,
        even when its process is not visible here (it may run on another host).
        """
        live_owners = await self.lease.live_instances() if self.lease is not None else set()
        async with self.db.read() as conn:
            rows = (await conn.execute(select(sandboxes).where(sandboxes.c.status.in_(list(_LIVE))))).all()
        for row in map(SandboxRecord.of, rows):
            if row.backend != self.backend.name:
                continue
            if row.owner_instance is not None and (
                row.owner_instance == self.owner or row.owner_instance in live_owners
            ):
                continue
            if not await self._claim(row):
                continue  # another instance adopted it first
            if self.backend.is_alive(row.id, row.pid):
                port = await self.backend.reattach(row.id, row.directory, row.pid, row.port)
                if port != (row.port or 0):
                    await self._set(row.id, port=port)
                log.info(
                    "adopted sandbox %s of instance %s: its agent server runs, re-attached", row.id, row.owner_instance
                )
                job = self._watch_startup(row.id) if row.status == SandboxStatus.STARTING.value else None
                task = asyncio.create_task(job or self.backfill_events(row.id))
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)
            else:
                # Recorded as it already reads (effective_status): a crash changes nothing a client saw.
                status = self.effective_status(row)
                log.warning(
                    "adopted sandbox %s of instance %s: its agent server is gone, %s",
                    row.id,
                    row.owner_instance,
                    status.value,
                )
                detail = "agent server gone after a restart"
                if status is not SandboxStatus.MISSING:
                    status, detail = SandboxStatus.ERROR, "start interrupted by a restart"
                await self._set(row.id, status=status.value, pid=None, detail=detail)
        async with self.db.read() as conn:
            query = select(sandboxes.c.id).where(sandboxes.c.status.in_(list(_LIVE)))
            live_records = {r.id for r in await conn.execute(query)}
        killed = await self.backend.reap_orphans(live_records)
        if killed:
            log.warning("killed %d sandbox processes that had no live record: %s", len(killed), killed)

    async def allow_egress(self, row: SandboxRecord, llm_base_url: str | None, repository_url: str | None) -> None:
        """Let the sandbox reach this conversation's LLM and repository host. What the operator configured
        (the server-wide LLM, THREADLINE_GIT_URL_TEMPLATE) may be on any address; what a user chose only on
        public ones, so no user can point a sandbox at the host's own services."""
        rules = []
        if llm_base_url:
            rule = Rule.parse(llm_base_url, trusted=llm_base_url == self.settings.llm_base_url)
            rules.append(rule)
        if repository_url and urlsplit(repository_url).scheme in ("http", "https"):
            rules.append(Rule.parse(repository_url, trusted=bool(self.settings.git_url_template)))
        await self.backend.allow_egress(row.id, row.directory, [r for r in rules if r is not None])

    async def enforce_limits(self) -> None:
        """Stop every sandbox over its memory limit and record it ERROR with the reason."""
        over = await asyncio.to_thread(self.backend.over_memory)
        rows = await self.records_by_id(list(over))
        for sandbox_id, why in over.items():
            log.warning("sandbox %s: %s", sandbox_id, why)
            # Recorded first: from the moment its processes go, the sandbox reads ERROR with the reason. A
            # record deleted meanwhile does not spare its processes (nor the other sandboxes of this pass).
            await self._set(sandbox_id, status=SandboxStatus.ERROR.value, detail=why)
            row = rows.get(sandbox_id)
            await self.backend.stop(sandbox_id, row.pid if row is not None else None, 0)

    async def _claim(self, row: SandboxRecord) -> bool:
        owner = sandboxes.c.owner_instance
        condition = owner.is_(None) if row.owner_instance is None else owner == row.owner_instance
        async with self.db.write() as conn:
            result = await conn.execute(
                update(sandboxes).where(sandboxes.c.id == row.id, condition).values(owner_instance=self.owner)
            )
        return bool(result.rowcount)

    async def shutdown(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self.settings.stop_sandboxes_on_shutdown:
            return
        async with self.db.read() as conn:
            query = select(sandboxes).where(sandboxes.c.status.in_(list(_LIVE)))
            if self.owner is not None:
                # Only this process's sandboxes: a replica's keep running with their own Threadline.
                query = query.where(sandboxes.c.owner_instance == self.owner)
            rows = SandboxRecord.all_of((await conn.execute(query)).all())
        # Stop them all at once; each is recorded PAUSED so a later start can resume it.
        await asyncio.gather(*(self._stop_for_shutdown(r) for r in rows if r.backend == self.backend.name))

    async def _stop_for_shutdown(self, row: SandboxRecord) -> None:
        if not self.backend.is_alive(row.id, row.pid):
            return  # already dead: the next start reports it MISSING, not as resumable
        try:
            await self.backend.stop(row.id, row.pid, self.settings.sandbox_stop_grace_seconds)
            await self._set(row.id, status=SandboxStatus.PAUSED.value, pid=None, detail="stopped with the server")
        except Exception:
            log.exception("failed to stop sandbox %s on shutdown", row.id)
