"""From stored records to wire models: the one place that knows how a record looks on the wire."""

from __future__ import annotations

import enum
import types
from dataclasses import dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from typing_extensions import TypedDict

from threadline.conversations.etag import etag_for
from threadline.conversations.models import (
    AppConversation,
    AppConversationPage,
    ConversationExecutionStatus,
    ConversationTrigger,
    MetricsSnapshot,
    ProviderType,
)
from threadline.conversations.records import ConversationRecord, ListedConversation, StoredConversation
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
    return _metrics(
        record.metrics_model_name, record.accumulated_cost, record.max_budget_per_task, record.prompt_tokens,
        record.completion_tokens, record.cache_read_tokens, record.cache_write_tokens, record.reasoning_tokens,
        record.context_window, record.per_turn_token, record.response_id,
    )  # fmt: skip


def _metrics(
    model_name: str,
    accumulated_cost: float,
    max_budget_per_task: float | None,
    prompt_tokens: int,
    completion_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    reasoning_tokens: int,
    context_window: int,
    per_turn_token: int,
    response_id: str,
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "accumulated_cost": accumulated_cost,
        "max_budget_per_task": max_budget_per_task,
        "accumulated_token_usage": {
            "model": model_name if model_name != "default" else "",
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens,
            "context_window": context_window,
            "per_turn_token": per_turn_token,
            "response_id": response_id,
        },
    }


def metrics_snapshot(record: ConversationRecord) -> MetricsSnapshot | None:
    data = metrics_of(record)
    return MetricsSnapshot.model_validate(data) if data is not None else None


# Enum members by value: a dict lookup, where calling the enum class costs a few microseconds a row. An
# unknown stored value fails (KeyError) as the call would (ValueError).
_PROVIDERS = ProviderType._value2member_map_
_TRIGGERS = ConversationTrigger._value2member_map_


def to_wire(stored: StoredConversation | ListedConversation, live: LiveState = NOT_RUNNING) -> dict[str, Any]:
    """The conversation as wire data: AppConversation's fields, in its order, with the values it would hold.
    Pages are serialised from this directly (`PAGE_JSON`), without a model validated per row.

    Made from the record's values by position (`ConversationRecord.values()`; a page's conversations come
    as values, not records): unpacked once, not read field by field."""
    (
        conversation_id, user_id, sandbox_id, selected_repository, selected_branch, git_provider, title,
        _title_set_by_user, trigger, pr_number, llm_model, agent_kind, parent_conversation_id, public, tags,
        _execution_status, _execution_status_at, metrics_model_name, accumulated_cost, max_budget_per_task,
        prompt_tokens, completion_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, context_window,
        per_turn_token, response_id, has_metrics, version, created_at, updated_at,
    ) = stored.values  # fmt: skip
    metrics = (
        _metrics(
            metrics_model_name,
            accumulated_cost,
            max_budget_per_task,
            prompt_tokens,
            completion_tokens,
            cache_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
            context_window,
            per_turn_token,
            response_id,
        )
        if has_metrics
        else None
    )
    return {
        "id": conversation_id,
        "created_by_user_id": user_id,
        "sandbox_id": sandbox_id,
        "selected_repository": selected_repository,
        "selected_branch": selected_branch,
        "git_provider": _PROVIDERS[git_provider] if git_provider else None,
        "title": title,
        "trigger": _TRIGGERS[trigger] if trigger else None,
        "pr_number": list(pr_number or []),
        "llm_model": llm_model,
        "agent_kind": agent_kind,
        "metrics": metrics,
        "parent_conversation_id": parent_conversation_id,
        "sub_conversation_ids": list(stored.sub_conversation_ids),
        "public": public,
        "tags": dict(tags or {}),
        "created_at": created_at,
        "updated_at": updated_at,
        "sandbox_status": live.sandbox_status,
        "execution_status": live.execution_status,
        "conversation_url": live.conversation_url,
        "session_api_key": live.session_api_key,
        "acp_server": None,
        "launched_agent_profile": None,
        "etag": etag_for(conversation_id, version),
    }


def to_app_conversation(stored: StoredConversation, live: LiveState = NOT_RUNNING) -> AppConversation:
    return AppConversation.model_validate(to_wire(stored, live))


def _wire_type(annotation: Any) -> Any:
    """A model's field type with every model in it replaced by its wire TypedDict, and every string enum by
    `str`: a member is a `str` and serialises as its value either way, but as `str` in Rust, where an enum
    field has pydantic call back into Python for each value (a page of 100: 250 -> 180 us)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return wire_typed_dict(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum) and issubclass(annotation, str):
        return str
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
