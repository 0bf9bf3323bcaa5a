"""Wire models of the App Conversations API; names, types and enum values follow the reference."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from threadline.conversations.validation import BranchName, RepositoryName

# Re-exported (the wire models' names); defined without pydantic for the CLI.
from threadline.core.enums import ConversationExecutionStatus as ConversationExecutionStatus
from threadline.core.enums import ConversationTrigger as ConversationTrigger
from threadline.core.enums import ProviderType as ProviderType
from threadline.core.enums import SortOrder as SortOrder
from threadline.core.wire import Bool, UTCTimestamp
from threadline.core.wire import Success as Success
from threadline.sandboxes.status import SandboxStatus as SandboxStatus


class TokenUsage(BaseModel):
    model: str = ""
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    context_window: int = Field(default=0, ge=0)
    per_turn_token: int = Field(default=0, ge=0)
    response_id: str = ""


class MetricsSnapshot(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = "default"
    accumulated_cost: float = Field(default=0.0, ge=0)
    max_budget_per_task: float | None = None
    accumulated_token_usage: TokenUsage | None = None


class LaunchedAgentProfile(BaseModel):
    agent_profile_id: str
    revision: int = Field(ge=0)


class AppConversation(BaseModel):
    id: str
    created_by_user_id: str | None
    sandbox_id: str
    selected_repository: str | None = None
    selected_branch: str | None = None
    git_provider: ProviderType | None = None
    title: str | None = None
    trigger: ConversationTrigger | None = None
    pr_number: list[int] = Field(default_factory=list)
    llm_model: str | None = None
    agent_kind: str = "openhands"
    metrics: MetricsSnapshot | None = None
    parent_conversation_id: str | None = None
    sub_conversation_ids: list[str] = Field(default_factory=list)
    public: bool | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    created_at: UTCTimestamp
    updated_at: UTCTimestamp
    sandbox_status: SandboxStatus = Field(
        default=SandboxStatus.MISSING,
        description="Current sandbox status. Will be MISSING if the sandbox does not exist.",
    )
    execution_status: ConversationExecutionStatus | None = Field(
        default=None, description="Current agent status. Will be None if the sandbox_status is not RUNNING"
    )
    conversation_url: str | None = Field(default=None, description="The URL where the conversation may be accessed")
    session_api_key: str | None = Field(default=None, description="The Session Api Key for REST operations.")
    acp_server: str | None = None
    launched_agent_profile: LaunchedAgentProfile | None = None
    etag: str = Field(
        default="",
        description=(
            "Threadline: the strong entity tag of this stored version, quotes included, as in the ETag header "
            "of a single GET; send it as If-Match on PATCH or DELETE to change only this version."
        ),
    )


class AppConversationPage(BaseModel):
    items: list[AppConversation]
    next_page_id: str | None = None


class AppConversationUpdateRequest(BaseModel):
    """Request model for updating conversation metadata.

    All fields are optional: an absent field keeps its stored value, a field sent as null is cleared.
    `tags` is a JSON merge patch: a key with a string value is set, a key with null is removed.
    """

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(max_length=1000)] | None = None
    public: Bool | None = None
    selected_repository: RepositoryName | None = None
    selected_branch: BranchName | None = None
    git_provider: ProviderType | None = None
    tags: dict[str, str | None] | None = None
