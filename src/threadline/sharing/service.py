"""Reads of public conversations, for anyone: by id only (nothing lists or searches them), read-only.

Whether a conversation is public is checked on every request, so turning `public` off ends access at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from threadline.conversations.models import metrics_from_row
from threadline.core.errors import NotFound
from threadline.db.engine import Database
from threadline.db.tables import conversations
from threadline.events import service as events_service
from threadline.events.models import EventPage, EventPayload, EventSortOrder
from threadline.sharing.models import SharedConversation

MAX_BATCH_IDS = 100

# Agent state an anonymous reader may see in ConversationStateUpdateEvents. Everything else (the agent's
# LLM configuration, workspace paths, the secret registry, tags, keys a newer agent server adds) is
# replaced by null, and `full_state` keeps only these keys.
SHAREABLE_STATE_KEYS = frozenset(
    {
        "id",
        "execution_status",
        "last_user_message_id",
        "stats",
        "title",
        "confirmation_policy",
        "max_iterations",
        "stuck_detection",
        "created_at",
        "updated_at",
    }
)


def _is_public() -> ColumnElement[bool]:
    return conversations.c.public == true()


def _to_shared(row: Any, parent_visible: bool, sub_ids: Sequence[str]) -> SharedConversation:
    return SharedConversation(
        id=row.id,
        title=row.title,
        selected_repository=row.selected_repository,
        selected_branch=row.selected_branch,
        git_provider=row.git_provider,
        trigger=row.trigger,
        pr_number=list(row.pr_number or []),
        llm_model=row.llm_model,
        agent_kind=row.agent_kind,
        metrics=metrics_from_row(row),
        parent_conversation_id=row.parent_conversation_id if parent_visible else None,
        sub_conversation_ids=list(sub_ids),
        execution_status=row.execution_status,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _public_relatives(conn: AsyncConnection, rows: Sequence[Any]) -> tuple[set[str], dict[str, list[str]]]:
    """Public parents of these rows, and their public sub-conversations (same owner only)."""
    if not rows:
        return set(), {}
    c = conversations.c
    owner = {r.id: r.user_id for r in rows}
    parent_ids = {r.parent_conversation_id for r in rows if r.parent_conversation_id}
    public_parents: set[tuple[str, str]] = set()
    if parent_ids:
        found = await conn.execute(select(c.id, c.user_id).where(c.id.in_(parent_ids), _is_public()))
        public_parents = {(pid, uid) for pid, uid in found.all()}
    children = await conn.execute(
        select(c.parent_conversation_id, c.id, c.user_id)
        .where(c.parent_conversation_id.in_(list(owner)), _is_public())
        .order_by(c.created_at, c.id)
    )
    subs: dict[str, list[str]] = {}
    for parent_id, child_id, user_id in children.all():
        if owner.get(parent_id) == user_id:
            subs.setdefault(parent_id, []).append(child_id)
    visible = {r.id for r in rows if (r.parent_conversation_id, r.user_id) in public_parents}
    return visible, subs


async def batch_get(db: Database, ids: Sequence[str]) -> list[SharedConversation | None]:
    """The shared views, in the order asked (repeats allowed); None for missing and non-public alike."""
    if not ids:
        return []
    async with db.read() as conn:
        rows = (await conn.execute(select(conversations).where(conversations.c.id.in_(set(ids)), _is_public()))).all()
        parent_visible, subs = await _public_relatives(conn, rows)
    found = {r.id: _to_shared(r, r.id in parent_visible, subs.get(r.id, ())) for r in rows}
    return [found.get(i) for i in ids]


async def require_public(conn: AsyncConnection, conversation_id: str) -> None:
    """404 unless the conversation exists and is public; missing and private answer alike."""
    c = conversations.c
    found = (await conn.execute(select(c.id).where(c.id == conversation_id, _is_public()))).first()
    if found is None:
        raise NotFound(f"conversation {conversation_id} not found")


def shareable_event(event: EventPayload) -> EventPayload:
    """The event as an anonymous reader sees it: agent state outside SHAREABLE_STATE_KEYS is withheld."""
    if event.get("kind") != "ConversationStateUpdateEvent":
        return event
    key, value = event.get("key"), event.get("value")
    if key == "full_state" and isinstance(value, dict):
        return {**event, "value": {k: v for k, v in value.items() if k in SHAREABLE_STATE_KEYS}}
    if key not in SHAREABLE_STATE_KEYS:
        return {**event, "value": None}
    return event


async def search_events(
    db: Database,
    secret: str,
    conversation_id: str,
    *,
    kind: str | None = None,
    timestamp_gte: datetime | None = None,
    timestamp_lt: datetime | None = None,
    sort: EventSortOrder = EventSortOrder.TIMESTAMP,
    limit: int = events_service.MAX_LIMIT,
    page_id: str | None = None,
) -> EventPage:
    """One page of a public conversation's events: the events service's listing, then `shareable_event`."""
    async with db.read() as conn:
        await require_public(conn, conversation_id)
    page = await events_service.search_events(
        db,
        secret,
        conversation_id,
        kind=kind,
        timestamp_gte=timestamp_gte,
        timestamp_lt=timestamp_lt,
        sort=sort,
        limit=limit,
        page_id=page_id,
    )
    decoded = page.decoded()
    return EventPage(items=[shareable_event(e) for e in decoded.items], next_page_id=decoded.next_page_id)
