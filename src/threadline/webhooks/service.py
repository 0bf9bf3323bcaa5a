"""Callbacks from agent servers: conversation updates and event batches.

Each delivery is applied in one transaction holding the conversation's row lock, so concurrent
deliveries serialise: counters only ever move up (metrics are cumulative snapshots, applied as a
per-field maximum, so a late or duplicated delivery can neither lose nor double an increment), an older
execution status never overwrites a newer one, and fields a user set (title, public, created_at,
tags...) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from threadline.conversations.models import ConversationExecutionStatus
from threadline.conversations.records import ConversationRecord
from threadline.conversations.service import get_record_for_any_user
from threadline.conversations.tables import conversations
from threadline.core.errors import NotFound
from threadline.core.ids import MalformedId, parse_id
from threadline.core.time import as_utc
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.events.service import clean_text, store_events
from threadline.observability.metrics import Metrics
from threadline.sandboxes.agent_client import metrics_from_stats

_STATUSES = {s.value for s in ConversationExecutionStatus}
_TOKEN_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "context_window",
)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: a valid time whose UTC instant is out of range
        return None


class Delta:
    """What one delivery says about a conversation."""

    def __init__(self) -> None:
        self.execution_status: str | None = None
        self.status_at: datetime | None = None
        self.title: str | None = None
        self.llm_model: str | None = None
        self.metrics: dict[str, Any] | None = None

    def status(self, value: Any, at: datetime | None) -> None:
        if isinstance(value, str) and value in _STATUSES:
            if self.status_at is None or at is None or at >= self.status_at:
                self.execution_status, self.status_at = value, at


def _text(value: str, limit: int) -> str:
    # Agent text comes from an LLM: it may hold what the database cannot store (NUL on PostgreSQL).
    return clean_text(value)[:limit]


def _changes(row: ConversationRecord, delta: Delta) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if delta.execution_status is not None:
        at = delta.status_at or utcnow()
        if row.execution_status_at is None or at >= row.execution_status_at:
            if delta.execution_status != row.execution_status:
                changes["execution_status"] = delta.execution_status
            changes["execution_status_at"] = at
    title = _text(delta.title, 1000) if delta.title else None
    if title and not row.title_set_by_user and title != row.title:
        changes["title"] = title
    model = _text(delta.llm_model, 256) if delta.llm_model else None
    if model and model != row.llm_model:
        changes["llm_model"] = model
    if delta.metrics is not None:
        usage = delta.metrics.get("accumulated_token_usage") or {}
        cost = float(delta.metrics.get("accumulated_cost") or 0.0)
        if cost > row.accumulated_cost:
            changes["accumulated_cost"] = cost
        for column in _TOKEN_COLUMNS:
            value = int(usage.get(column) or 0)
            if value > getattr(row, column):
                changes[column] = value
        if any(c in changes for c in ("accumulated_cost", *_TOKEN_COLUMNS)) or not row.has_metrics:
            changes["has_metrics"] = True
            changes["metrics_model_name"] = _text(str(delta.metrics.get("model_name") or row.metrics_model_name), 256)
            changes["per_turn_token"] = int(usage.get("per_turn_token") or 0)
            changes["response_id"] = _text(str(usage.get("response_id") or ""), 256)
            if delta.metrics.get("max_budget_per_task") is not None:
                changes["max_budget_per_task"] = float(delta.metrics["max_budget_per_task"])
    return changes


async def _apply(conn: AsyncConnection, *, sandbox_id: str, conversation_id: str, delta: Delta) -> ConversationRecord:
    row = await get_record_for_any_user(conn, conversation_id, lock=True)
    if row is None or row.sandbox_id != sandbox_id:
        # Another sandbox's conversation looks exactly like a missing one.
        raise NotFound(f"conversation {conversation_id} not found")
    changes = _changes(row, delta)
    visible = {k for k in changes if k != "execution_status_at"}
    if visible:
        changes["version"] = row.version + 1
        changes["updated_at"] = max(utcnow(), row.updated_at + timedelta(microseconds=1))
    if changes:
        await conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**changes))
        updated = await get_record_for_any_user(conn, conversation_id)
        assert updated is not None  # locked above, in this transaction
        return updated
    return row


def _conversation_id(value: Any) -> str:
    try:
        return parse_id(str(value))
    except MalformedId as exc:
        raise NotFound(f"conversation {value!r} not found") from exc


async def on_conversation_update(db: Database, *, sandbox_id: str, info: Mapping[str, Any]) -> ConversationRecord:
    conversation_id = _conversation_id(info.get("id"))
    delta = Delta()
    delta.status(info.get("execution_status"), _parse_time(info.get("updated_at")))
    title = info.get("title")
    delta.title = title if isinstance(title, str) and title.strip() else None
    agent = info.get("agent")
    if isinstance(agent, Mapping) and isinstance(agent.get("llm"), Mapping):
        model = agent["llm"].get("model")
        delta.llm_model = model if isinstance(model, str) else None
    if isinstance(info.get("stats"), Mapping):
        delta.metrics = metrics_from_stats(info)
    async with db.write() as conn:
        return await _apply(conn, sandbox_id=sandbox_id, conversation_id=conversation_id, delta=delta)


async def on_events(
    db: Database,
    *,
    sandbox_id: str,
    conversation_id: str,
    items: list[Any],
    metrics: Metrics | None = None,
) -> int:
    """Apply and store a batch of events; `metrics` observes the batch's lag once it is stored."""
    arrived = utcnow()
    conversation_id = _conversation_id(conversation_id)
    delta = Delta()
    events = [e for e in items if isinstance(e, Mapping)]
    # By instant, not by text: agents write times with and without offsets; ties keep delivery order.
    earliest = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(enumerate(events), key=lambda p: (_parse_time(p[1].get("timestamp")) or earliest, p[0]))
    for _, event in ordered:
        if event.get("kind") != "ConversationStateUpdateEvent":
            continue
        key, value = event.get("key"), event.get("value")
        if key == "execution_status":
            delta.status(value, _parse_time(event.get("timestamp")))
        elif key == "stats" and isinstance(value, Mapping):
            delta.metrics = metrics_from_stats(event)
        elif key == "title" and isinstance(value, str) and value.strip():
            delta.title = value
    async with db.write() as conn:
        await _apply(conn, sandbox_id=sandbox_id, conversation_id=conversation_id, delta=delta)
        stored = await store_events(conn, conversation_id=conversation_id, items=[dict(e) for e in events])
    if metrics is not None:
        metrics.observe_event_batch((_parse_time(e.get("timestamp")) for e in events), now=arrived)
    return stored
