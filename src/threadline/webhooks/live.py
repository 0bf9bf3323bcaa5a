"""Live fields of conversations: sandbox_status, execution_status, conversation_url, session_api_key.

One batched agent call per RUNNING sandbox per response page, all sandboxes at once, with a short
timeout; an agent server that is down or slow degrades only its own rows (they fall back to the stored
execution status). What the agent reports is written back when it differs (the automatic title is only
available this way: the agent server sends no callback when it sets it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from threadline.auth.service import User
from threadline.conversations.mapping import LiveState, to_app_conversation
from threadline.conversations.models import AppConversation, ConversationExecutionStatus
from threadline.conversations.records import StoredConversation
from threadline.core.errors import NotFound
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus
from threadline.webhooks import service as webhooks

log = logging.getLogger("threadline.live")
_STATUSES = ConversationExecutionStatus._value2member_map_


async def _fetch(service: SandboxService, sandbox: SandboxRecord, ids: list[str]) -> dict[str, dict[str, Any]]:
    try:
        infos = await service.client(sandbox).get_conversations(ids)
    except AgentServerError as exc:
        log.info("agent server of sandbox %s did not answer: %s", sandbox.id, exc)
        return {}
    return {cid: info for cid, info in zip(ids, infos, strict=True) if info is not None}


async def present(
    db: Database, service: SandboxService, user: User, items: Sequence[StoredConversation]
) -> list[AppConversation]:
    """The wire models of `items`, live fields filled (bound to the app's database and sandboxes, it is the
    conversations domain's `LiveFields`)."""
    by_sandbox: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        by_sandbox[item.record.sandbox_id].append(index)
    boxes = {item.sandbox.id: item.sandbox for item in items if item.sandbox is not None}
    # settle: a dead sandbox found here is recorded, so filters on stored statuses agree with this page.
    statuses = await service.settle([box for box in boxes.values() if box.user_id == user.id])
    running = [sid for sid, status in statuses.items() if status is SandboxStatus.RUNNING]
    fetched = await asyncio.gather(
        *(_fetch(service, boxes[sid], [items[i].record.id for i in by_sandbox[sid]]) for sid in running)
    )
    agent_infos = {cid: info for result in fetched for cid, info in result.items()}

    answered: list[AppConversation | None] = [None] * len(items)
    for sid, indexes in by_sandbox.items():
        status = statuses.get(sid, SandboxStatus.MISSING)
        box = boxes.get(sid)
        if status is not SandboxStatus.RUNNING or box is None:
            for i in indexes:
                answered[i] = to_app_conversation(items[i], LiveState(sandbox_status=status))
            continue
        url, key = service.agent_url(box), service.session_key(box)  # decrypted once per sandbox
        for i in indexes:
            stored = items[i]
            info = agent_infos.get(stored.record.id)
            execution_status = stored.record.execution_status  # the copy callbacks keep: the fallback
            if info is not None:
                reported = info.get("execution_status")
                if isinstance(reported, str) and reported in _STATUSES:
                    execution_status = reported
                stored = await _sync(db, sid, stored, info)
            live = LiveState(
                sandbox_status=status,
                execution_status=ConversationExecutionStatus(execution_status)
                if execution_status is not None and execution_status in _STATUSES
                else None,
                conversation_url=f"{url}/api/conversations/{stored.record.id}",
                session_api_key=key,
            )
            answered[i] = to_app_conversation(stored, live)
    return [a for a in answered if a is not None]


async def _sync(db: Database, sandbox_id: str, stored: StoredConversation, info: dict[str, Any]) -> StoredConversation:
    """Store what the agent knows and the record lacks (the automatic title); the record as it now is."""
    record = stored.record
    title = info.get("title")
    wants_title = isinstance(title, str) and title.strip() and record.title != title and not record.title_set_by_user
    if not wants_title:
        return stored
    try:
        updated = await webhooks.on_conversation_update(db, sandbox_id=sandbox_id, info=info)
    except NotFound:
        return stored
    # A callback may have moved other stored fields too; the response must match its new ETag.
    return dataclasses.replace(stored, record=updated)
