"""The shared view of a conversation: what anyone holding its id may read once it is public.

A separate model, not AppConversation with fields nulled: what it lacks cannot leak by mistake. It has no
owner id, no sandbox id or status, no conversation_url or session_api_key, and no tags (the owner's own
labels); related ids appear only when those conversations are public too.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from threadline.conversations.models import (
    ConversationExecutionStatus,
    ConversationTrigger,
    MetricsSnapshot,
    ProviderType,
    UTCTimestamp,
)


class SharedConversation(BaseModel):
    id: str
    title: str | None = None
    selected_repository: str | None = None
    selected_branch: str | None = None
    git_provider: ProviderType | None = None
    trigger: ConversationTrigger | None = None
    pr_number: list[int] = Field(default_factory=list)
    llm_model: str | None = None
    agent_kind: str = "openhands"
    metrics: MetricsSnapshot | None = None
    parent_conversation_id: str | None = Field(default=None, description="Only when the parent is public too")
    sub_conversation_ids: list[str] = Field(
        default_factory=list, description="The sub-conversations that are public too"
    )
    execution_status: ConversationExecutionStatus | None = Field(
        default=None, description="The last execution status the agent reported"
    )
    created_at: UTCTimestamp
    updated_at: UTCTimestamp
