"""Wire models for starting conversations, start tasks and follow-up messages (names follow the reference)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from threadline.conversations.models import ConversationTrigger, ProviderType, SandboxStatus
from threadline.conversations.validation import BranchName, RepositoryName
from threadline.core.wire import Bool


class TextContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cache_prompt: Bool = False
    type: Literal["text"] = "text"
    text: str


class ImageContent(BaseModel):
    cache_prompt: Bool = False
    type: Literal["image"] = "image"
    image_urls: list[str]


class SendMessageRequest(BaseModel):
    role: Literal["user", "system", "assistant", "tool"] = "user"
    content: list[TextContent | ImageContent] = Field(default_factory=list)
    run: Bool = False


class AgentType(StrEnum):
    default = "default"
    plan = "plan"


class AppConversationStartRequest(BaseModel):
    """Start conversation request. Every field given is stored with the conversation."""

    model_config = ConfigDict(extra="forbid", title="AppConversationStartRequest")

    sandbox_id: str | None = None
    conversation_id: uuid.UUID | None = None
    initial_message: SendMessageRequest | None = None
    system_message_suffix: str | None = None
    processors: list[dict[str, Any]] | None = None
    llm_model: str | None = Field(default=None, max_length=256)
    agent_profile_id: str | None = None
    selected_repository: RepositoryName | None = None
    selected_branch: BranchName | None = None
    git_provider: ProviderType | None = None
    suggested_task: dict[str, Any] | None = None
    title: str | None = Field(default=None, max_length=1000)
    trigger: ConversationTrigger | None = None
    pr_number: list[int] = Field(default_factory=list)
    parent_conversation_id: uuid.UUID | None = None
    agent_type: AgentType = AgentType.default
    public: Bool | None = None
    plugins: list[dict[str, Any]] | None = None
    secrets: dict[str, str] | None = Field(
        default=None, description="Secrets for the conversation (write-only: redacted in start tasks)."
    )
    tags: dict[str, str] = Field(default_factory=dict)


class AppConversationStartTaskStatus(StrEnum):
    WORKING = "WORKING"
    WAITING_FOR_SANDBOX = "WAITING_FOR_SANDBOX"
    PREPARING_REPOSITORY = "PREPARING_REPOSITORY"
    RUNNING_SETUP_SCRIPT = "RUNNING_SETUP_SCRIPT"
    SETTING_UP_GIT_HOOKS = "SETTING_UP_GIT_HOOKS"
    SETTING_UP_SKILLS = "SETTING_UP_SKILLS"
    STARTING_CONVERSATION = "STARTING_CONVERSATION"
    READY = "READY"
    ERROR = "ERROR"


TERMINAL_STATUSES = (AppConversationStartTaskStatus.READY, AppConversationStartTaskStatus.ERROR)


class AppConversationStartTaskSortOrder(StrEnum):
    CREATED_AT = "CREATED_AT"
    CREATED_AT_DESC = "CREATED_AT_DESC"
    UPDATED_AT = "UPDATED_AT"
    UPDATED_AT_DESC = "UPDATED_AT_DESC"


class StartTaskTransition(BaseModel):
    status: AppConversationStartTaskStatus
    at: datetime


class AppConversationStartTask(BaseModel):
    id: str
    created_by_user_id: str | None
    status: AppConversationStartTaskStatus = AppConversationStartTaskStatus.WORKING
    detail: str | None = None
    app_conversation_id: str | None = Field(default=None, description="The id of the app_conversation, if READY")
    sandbox_id: str | None = Field(default=None, description="The id of the sandbox, if READY")
    agent_server_url: str | None = Field(default=None, description="The agent server url, if READY")
    request: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    history: list[StartTaskTransition] = Field(default_factory=list, description="Every status passed, in order.")


class AppConversationStartTaskPage(BaseModel):
    items: list[AppConversationStartTask]
    next_page_id: str | None = None


# The agent is sent the text parts (messages.message_text): a message needs one that is not empty.
_A_TEXT_PART: JsonDict = {
    "type": "object",
    "required": ["text"],
    "additionalProperties": False,
    "properties": {
        "cache_prompt": {"type": "boolean"},
        "type": {"const": "text"},
        "text": {"type": "string", "minLength": 1},
    },
}


class AppSendMessageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user"] = "user"
    content: list[TextContent | ImageContent] = Field(min_length=1, json_schema_extra={"contains": _A_TEXT_PART})
    run: bool = True


class AppSendMessageResponse(BaseModel):
    success: bool
    sandbox_status: SandboxStatus
    message: str | None = None
