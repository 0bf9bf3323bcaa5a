"""Reads of public conversations, for anyone: by id only (nothing lists or searches them), read-only.

Whether a conversation is public is checked on every request, so turning `public` off ends access at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from threadline.conversations import service as conversations_service
from threadline.conversations.mapping import metrics_snapshot
from threadline.conversations.models import ConversationExecutionStatus, ConversationTrigger, ProviderType
from threadline.conversations.records import PublicConversation
from threadline.db.engine import Database
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


def to_shared(public: PublicConversation) -> SharedConversation:
    """The one mapping from a public conversation's record to the shared view."""
    record = public.record
    return SharedConversation(
        id=record.id,
        title=record.title,
        selected_repository=record.selected_repository,
        selected_branch=record.selected_branch,
        git_provider=ProviderType(record.git_provider) if record.git_provider else None,
        trigger=ConversationTrigger(record.trigger) if record.trigger else None,
        pr_number=list(record.pr_number or []),
        llm_model=record.llm_model,
        agent_kind=record.agent_kind,
        metrics=metrics_snapshot(record),
        parent_conversation_id=record.parent_conversation_id if public.parent_visible else None,
        sub_conversation_ids=list(public.public_sub_conversation_ids),
        execution_status=(
            ConversationExecutionStatus(record.execution_status)
            if record.execution_status is not None
            and record.execution_status in ConversationExecutionStatus._value2member_map_
            else None
        ),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


async def batch_get(db: Database, ids: Sequence[str]) -> list[SharedConversation | None]:
    """The shared views, in the order asked (repeats allowed); None for missing and non-public alike."""
    found = {cid: to_shared(public) for cid, public in (await conversations_service.get_public(db, ids)).items()}
    return [found.get(i) for i in ids]


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
        await conversations_service.require_public(conn, conversation_id)
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
