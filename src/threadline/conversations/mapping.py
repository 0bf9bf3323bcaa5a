"""From stored records to wire models: the one place that knows how a record looks on the wire."""

from __future__ import annotations

from dataclasses import dataclass

from threadline.conversations.models import (
    AppConversation,
    ConversationExecutionStatus,
    ConversationTrigger,
    MetricsSnapshot,
    ProviderType,
    TokenUsage,
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


def metrics_of(record: ConversationRecord) -> MetricsSnapshot | None:
    if not record.has_metrics:
        return None
    return MetricsSnapshot(
        model_name=record.metrics_model_name,
        accumulated_cost=record.accumulated_cost,
        max_budget_per_task=record.max_budget_per_task,
        accumulated_token_usage=TokenUsage(
            model=record.metrics_model_name if record.metrics_model_name != "default" else "",
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            cache_read_tokens=record.cache_read_tokens,
            cache_write_tokens=record.cache_write_tokens,
            reasoning_tokens=record.reasoning_tokens,
            context_window=record.context_window,
            per_turn_token=record.per_turn_token,
            response_id=record.response_id,
        ),
    )


def to_app_conversation(stored: StoredConversation, live: LiveState = NOT_RUNNING) -> AppConversation:
    record = stored.record
    return AppConversation(
        id=record.id,
        created_by_user_id=record.user_id,
        sandbox_id=record.sandbox_id,
        selected_repository=record.selected_repository,
        selected_branch=record.selected_branch,
        git_provider=ProviderType(record.git_provider) if record.git_provider else None,
        title=record.title,
        trigger=ConversationTrigger(record.trigger) if record.trigger else None,
        pr_number=list(record.pr_number or []),
        llm_model=record.llm_model,
        agent_kind=record.agent_kind,
        metrics=metrics_of(record),
        parent_conversation_id=record.parent_conversation_id,
        sub_conversation_ids=list(stored.sub_conversation_ids),
        public=record.public,
        tags=dict(record.tags or {}),
        created_at=record.created_at,
        updated_at=record.updated_at,
        sandbox_status=live.sandbox_status,
        execution_status=live.execution_status,
        conversation_url=live.conversation_url,
        session_api_key=live.session_api_key,
        etag=record.etag,
    )
