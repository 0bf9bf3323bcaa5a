"""Live fields of conversations: sandbox_status, execution_status, conversation_url, session_api_key.

One batched agent call per RUNNING sandbox per response page, all sandboxes at once, with a short
timeout; an agent server that is down or slow degrades only its own rows (they fall back to the stored
execution status). What the agent reports is written back when it differs (the automatic title is only
available this way: the agent server sends no callback when it sets it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from threadline.auth.service import User
from threadline.conversations.etag import etag_for
from threadline.conversations.models import (
    AppConversation,
    ConversationExecutionStatus,
    SandboxStatus,
    metrics_from_row,
)
from threadline.core.errors import NotFound
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError
from threadline.sandboxes.service import SandboxService
from threadline.webhooks import service as webhooks

log = logging.getLogger("threadline.live")


async def _fetch(service: SandboxService, row: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    try:
        infos = await service.client(row).get_conversations(ids)
    except AgentServerError as exc:
        log.info("agent server of sandbox %s did not answer: %s", row.id, exc)
        return {}
    return {cid: info for cid, info in zip(ids, infos, strict=True) if info is not None}


async def fill_live_fields(db: Database, service: SandboxService, user: User, items: list[AppConversation]) -> None:
    """The live fields of `items` (bound to the app's database and sandboxes, it is the conversations
    domain's `LiveFields`)."""
    by_sandbox: dict[str, list[AppConversation]] = defaultdict(list)
    for item in items:
        by_sandbox[item.sandbox_id].append(item)
    if all(item._sandbox_loaded for item in items):
        rows = {item.sandbox_id: item._sandbox_row for item in items if item._sandbox_row is not None}
    else:
        rows = await service.rows_by_id(list(by_sandbox))
    # settle: a dead sandbox found here is recorded, so filters on stored statuses agree with this page.
    statuses = await service.settle([row for row in rows.values() if row.user_id == user.id])
    running = [sid for sid, status in statuses.items() if status is SandboxStatus.RUNNING]
    fetched = await asyncio.gather(*(_fetch(service, rows[sid], [c.id for c in by_sandbox[sid]]) for sid in running))
    agent_infos = {cid: info for result in fetched for cid, info in result.items()}

    session_keys: dict[str, str] = {}  # decrypted once per sandbox, not once per conversation
    for sid, convs in by_sandbox.items():
        status = statuses.get(sid, SandboxStatus.MISSING)
        row = rows.get(sid)
        for conv in convs:
            conv.sandbox_status = status
            if status is not SandboxStatus.RUNNING or row is None:
                conv.execution_status = None
                conv.conversation_url = None
                conv.session_api_key = None
                continue
            info = agent_infos.get(conv.id)
            if info is not None:
                value = info.get("execution_status")
                if isinstance(value, str) and value in ConversationExecutionStatus._value2member_map_:
                    conv.execution_status = ConversationExecutionStatus(value)
                await _sync(db, sid, conv, info)
            elif (stored := conv._stored_execution_status) in ConversationExecutionStatus._value2member_map_:
                # The agent did not answer in time: fall back to the copy callbacks keep.
                conv.execution_status = ConversationExecutionStatus(str(stored))
            conv.conversation_url = f"{service.agent_url(row)}/api/conversations/{conv.id}"
            conv.session_api_key = session_keys.get(sid) or session_keys.setdefault(sid, service.session_key(row))


async def _sync(db: Database, sandbox_id: str, conv: AppConversation, info: dict[str, Any]) -> None:
    """Store what the agent knows and the record lacks (automatic title, newer metrics)."""
    title = info.get("title")
    wants_title = isinstance(title, str) and title.strip() and conv.title != title and not conv._title_set_by_user
    if not wants_title:
        return
    try:
        updated = await webhooks.on_conversation_update(db, sandbox_id, info)
    except NotFound:
        return
    if updated is not None:
        conv.title = updated.title
        conv.updated_at = updated.updated_at
        # A callback may have moved other stored fields too; the response must match its new ETag.
        conv.llm_model = updated.llm_model
        conv.metrics = metrics_from_row(updated)
        conv.etag = etag_for(updated.id, updated.version)
