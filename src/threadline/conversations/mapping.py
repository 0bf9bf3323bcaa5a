"""From stored records to wire models: the one place that knows how a record looks on the wire."""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from threadline.conversations.models import (
    AppConversation,
    AppConversationPage,
    ConversationExecutionStatus,
    ConversationTrigger,
    MetricsSnapshot,
    ProviderType,
)
from threadline.conversations.records import ConversationRecord, StoredConversation
from threadline.sandboxes.status import SandboxStatus


@dataclass(frozen=True, slots=True)
class LiveState:
    """The fields that come from the sandbox and its agent server, not from the record."""

    sandbox_status: SandboxStatus = SandboxStatus.MISSING
    execution_status: ConversationExecutionStatus | None = None
    conversation_url: str | None = None
    session_api_key: str | None = None


NOT_RUNNING = LiveState()


def metrics_of(record: ConversationRecord) -> dict[str, Any] | None:
    """The metrics as wire data (MetricsSnapshot's fields, in order)."""
    if not record.has_metrics:
        return None
    return {
        "model_name": record.metrics_model_name,
        "accumulated_cost": record.accumulated_cost,
        "max_budget_per_task": record.max_budget_per_task,
        "accumulated_token_usage": {
            "model": record.metrics_model_name if record.metrics_model_name != "default" else "",
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cache_read_tokens": record.cache_read_tokens,
            "cache_write_tokens": record.cache_write_tokens,
            "reasoning_tokens": record.reasoning_tokens,
            "context_window": record.context_window,
            "per_turn_token": record.per_turn_token,
            "response_id": record.response_id,
        },
    }


def metrics_snapshot(record: ConversationRecord) -> MetricsSnapshot | None:
    data = metrics_of(record)
    return MetricsSnapshot.model_validate(data) if data is not None else None


def to_wire(stored: StoredConversation, live: LiveState = NOT_RUNNING) -> dict[str, Any]:
    """The conversation as wire data: AppConversation's fields, in its order, with the values it would hold.
    Pages are serialised from this directly (`PAGE_JSON`), without a model validated per row."""
    record = stored.record
    return {
        "id": record.id,
        "created_by_user_id": record.user_id,
        "sandbox_id": record.sandbox_id,
        "selected_repository": record.selected_repository,
        "selected_branch": record.selected_branch,
        "git_provider": ProviderType(record.git_provider) if record.git_provider else None,
        "title": record.title,
        "trigger": ConversationTrigger(record.trigger) if record.trigger else None,
        "pr_number": list(record.pr_number or []),
        "llm_model": record.llm_model,
        "agent_kind": record.agent_kind,
        "metrics": metrics_of(record),
        "parent_conversation_id": record.parent_conversation_id,
        "sub_conversation_ids": list(stored.sub_conversation_ids),
        "public": record.public,
        "tags": dict(record.tags or {}),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "sandbox_status": live.sandbox_status,
        "execution_status": live.execution_status,
        "conversation_url": live.conversation_url,
        "session_api_key": live.session_api_key,
        "acp_server": None,
        "launched_agent_profile": None,
        "etag": record.etag,
    }


def to_app_conversation(stored: StoredConversation, live: LiveState = NOT_RUNNING) -> AppConversation:
    return AppConversation.model_validate(to_wire(stored, live))


def _wire_type(annotation: Any) -> Any:
    """A model's field type with every model in it replaced by its wire TypedDict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return wire_typed_dict(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return Union[tuple(_wire_type(arg) for arg in args)]  # noqa: UP007 (built from a runtime tuple)
    if origin is list:
        return list[_wire_type(args[0])]  # type: ignore[misc]
    return annotation


@cache
def wire_typed_dict(model: type[BaseModel]) -> Any:
    """A TypedDict with the model's fields and types (models within replaced the same way): pydantic
    serialises data of it exactly as it serialises the model (same field serialisers, same order), without
    validating anything first. Derived, not written out, so it cannot drift from the model."""
    fields = {name: _wire_type(field.annotation) for name, field in model.model_fields.items()}
    return TypedDict(f"{model.__name__}Wire", fields)  # type: ignore[operator]


# One conversation, a search page and a batch (ids not found are null), from `to_wire` data.
CONVERSATION_JSON: TypeAdapter[Any] = TypeAdapter(wire_typed_dict(AppConversation))
PAGE_JSON: TypeAdapter[Any] = TypeAdapter(wire_typed_dict(AppConversationPage))
BATCH_JSON: TypeAdapter[Any] = TypeAdapter(list[wire_typed_dict(AppConversation) | None])  # type: ignore[misc,arg-type]
