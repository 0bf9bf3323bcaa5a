"""Live fields of conversations: sandbox_status, execution_status, conversation_url, session_api_key.

Served from what Threadline already knows: the sandbox's record (its process checked against the process
table, so a dead agent server reads MISSING from the first request after it died) and the execution status
the agent server's callbacks keep in the conversation's record. A response never waits on an agent server.

Agent servers are asked only where the record may lag behind them:

- a conversation on a RUNNING sandbox with no execution status reported yet (just started, before its first
  callback) is asked about before answering, all such conversations of a page at once, one call per
  sandbox, with the agent timeout: a down agent server degrades only its own rows. Once only: when that
  brought no report (the agent server did not answer, or does not know the conversation), later reads
  ask in the background instead, like for the two cases below;
- in the background, at most once per sandbox every `live_refresh_seconds`: a conversation that has no title
  yet (the agent's automatic title reaches Threadline no other way: the agent server sends no callback when
  it sets it), and one whose agent was last reported `running` longer than `live_stale_seconds` ago (a
  callback may have been lost).

What an agent server reports is stored, so the next read has it without asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from threadline.auth.service import User
from threadline.conversations.mapping import LiveState, to_app_conversation
from threadline.conversations.models import AppConversation, ConversationExecutionStatus
from threadline.conversations.records import AnyStored, ConversationRecord, LiveView, StoredConversation
from threadline.core.errors import NotFound
from threadline.core.time import utcnow
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus
from threadline.webhooks import service as webhooks

log = logging.getLogger("threadline.live")
_STATUSES = {status.value: status for status in ConversationExecutionStatus}
_RUNNING = SandboxStatus.RUNNING
# Conversations remembered as asked about before answering (`LivePresenter._remember_asked`).
_MAX_REMEMBERED = 100_000
# The live fields of a conversation whose sandbox is not running: one (immutable) value per status.
_NOT_RUNNING = {status: LiveState(sandbox_status=status) for status in SandboxStatus}


class LivePresenter:
    """Stored conversations to wire models with their live fields (the conversations domain's `LiveFields`),
    and the background refresh of records that may lag behind their agent servers."""

    def __init__(
        self,
        db: Database,
        sandboxes: SandboxService,
        *,
        refresh_seconds: float = 5.0,
        stale_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.sandboxes = sandboxes
        self.refresh_seconds = refresh_seconds
        self.stale_after = timedelta(seconds=stale_seconds)
        self._asked: dict[str, float] = {}  # sandbox id -> monotonic time it was last asked
        # Conversations asked about before answering (no status report yet), oldest first.
        self._asked_before_answering: dict[str, None] = {}
        self._refreshing: set[asyncio.Task[list[ConversationRecord]]] = set()
        self._closed = False

    async def __call__(self, user: User, items: Sequence[StoredConversation]) -> list[AppConversation]:
        return [to_app_conversation(item, live) for item, live in await self.resolve(user, items)]

    async def resolve(self, user: User, items: Sequence[AnyStored]) -> list[tuple[AnyStored, LiveState]]:
        """Each conversation (as it now is, where an agent server was asked) with its live fields.

        Only conversations on a running sandbox are looked at beyond their sandbox (a page's conversations
        come as values, and a record is built for those only)."""
        boxes = {item.sandbox.id: item.sandbox for item in items if item.sandbox is not None}
        # settle: a dead sandbox found here is recorded, so filters on stored statuses agree with this page.
        statuses = await self.sandboxes.settle([box for box in boxes.values() if box.user_id == user.id])
        running = {sandbox_id for sandbox_id, status in statuses.items() if status is SandboxStatus.RUNNING}
        # The conversation's sandbox is the one looked up by its sandbox_id: its status is the conversation's.
        # Only the fields the live ones depend on are read (`LiveView`), not a record of every field.
        views = {
            position: item.live_view
            for position, item in enumerate(items)
            if item.sandbox is not None and item.sandbox.id in running
        }
        unreported: dict[str, list[str]] = defaultdict(list)
        lagging: dict[str, list[str]] = defaultdict(list)
        for view in views.values():
            if view.execution_status_at is None:
                # Asked before answering once; an agent server that did not know the conversation then (or
                # did not answer) is asked again in the background only, or every page would wait on it.
                waits = view.id not in self._asked_before_answering
                (unreported if waits else lagging)[view.sandbox_id].append(view.id)
        if unreported:
            self._remember_asked([cid for ids in unreported.values() for cid in ids])
            asked = await asyncio.gather(*(self._ask(boxes[sid], ids) for sid, ids in unreported.items()))
            fresh = {record.id: record for found in asked for record in found}
            items = list(items)
            for position, view in views.items():
                if view.id in fresh:
                    views[position] = LiveView.of(fresh[view.id])
                    items[position] = items[position].with_record(fresh[view.id])
        keys: dict[str, tuple[str, str]] = {}  # sandbox id -> (agent URL, session key), once per sandbox
        stale_before = utcnow() - self.stale_after
        answered: list[tuple[AnyStored, LiveState]] = []
        for position, item in enumerate(items):
            box = item.sandbox
            running_view = views.get(position)
            if running_view is None or box is None:
                status = statuses.get(box.id, SandboxStatus.MISSING) if box is not None else SandboxStatus.MISSING
                answered.append((item, _NOT_RUNNING[status]))
                continue
            view = running_view
            if _may_lag(view, stale_before):
                lagging[box.id].append(view.id)
            if box.id not in keys:
                keys[box.id] = (self.sandboxes.agent_url(box), self.sandboxes.session_key(box))
            url, key = keys[box.id]
            live = LiveState(
                sandbox_status=_RUNNING,
                # The execution status the agent last reported (the callbacks' copy).
                execution_status=_STATUSES.get(view.execution_status) if view.execution_status else None,
                conversation_url=f"{url}/api/conversations/{view.id}",
                session_api_key=key,
            )
            answered.append((item, live))
        for sandbox_id, conversation_ids in lagging.items():
            self._refresh_later(boxes[sandbox_id], conversation_ids)
        return answered

    def _remember_asked(self, conversation_ids: list[str]) -> None:
        if len(self._asked_before_answering) + len(conversation_ids) > _MAX_REMEMBERED:
            # The oldest half goes: such a conversation may be asked before answering once more, no harm.
            for old in list(self._asked_before_answering)[: _MAX_REMEMBERED // 2]:
                del self._asked_before_answering[old]
        for conversation_id in conversation_ids:
            self._asked_before_answering[conversation_id] = None

    def _refresh_later(self, sandbox: SandboxRecord, conversation_ids: list[str]) -> None:
        now = time.monotonic()
        if self._closed or now - self._asked.get(sandbox.id, -self.refresh_seconds) < self.refresh_seconds:
            return
        self._asked[sandbox.id] = now
        task = asyncio.create_task(self._ask(sandbox, conversation_ids))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _ask(self, sandbox: SandboxRecord, conversation_ids: list[str]) -> list[ConversationRecord]:
        """Ask the agent server about these conversations and store what it knows that the records lack;
        the records as they now are (none when it does not answer)."""
        try:
            infos = await self.sandboxes.client(sandbox).get_conversations(conversation_ids)
        except AgentServerError as exc:
            log.info("agent server of sandbox %s did not answer: %s", sandbox.id, exc)
            return []
        records = []
        for info in infos:
            if info is None:
                continue
            try:
                records.append(await webhooks.on_conversation_update(self.db, sandbox_id=sandbox.id, info=info))
            except NotFound:
                continue  # deleted meanwhile
            except Exception:
                log.exception("storing what the agent server of sandbox %s reported failed", sandbox.id)
        return records

    async def refresh_now(self) -> None:
        """Wait for the refreshes in flight (tests, shutdown)."""
        while self._refreshing:
            await asyncio.gather(*list(self._refreshing), return_exceptions=True)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._refreshing):
            task.cancel()
        await asyncio.gather(*list(self._refreshing), return_exceptions=True)


def _may_lag(view: LiveView, stale_before: datetime) -> bool:
    if view.execution_status_at is None:
        return False  # no report yet: asked before answering once, then in the background (`resolve`)
    if view.title is None and not view.title_set_by_user:
        return True
    return view.execution_status == "running" and view.execution_status_at < stale_before
