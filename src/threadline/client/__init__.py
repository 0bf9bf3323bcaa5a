"""Python client of Threadline and of any server of the OpenHands App Conversations API (v1).

    from threadline.client import Threadline

    client = Threadline()  # THREADLINE_URL and THREADLINE_API_KEY, or Threadline(url, key)
    conversation = client.conversations.start_and_wait("Fix the flaky test", tags={"team": "core"})
    for c in client.conversations.search(tags={"team": "core"}):
        print(c.id, c.title)

`AsyncThreadline` is the same with `await` (and `async for` over searches). Answers are the server's
own wire models; errors are `ThreadlineError` subclasses carrying the problem+json fields.
"""

from typing import TYPE_CHECKING, Any

from threadline.client._async import AsyncPageIterator, AsyncThreadline
from threadline.client._base import ENV_API_KEY, ENV_URL, UNSET, ConversationChange, ConversationFilters, Unset
from threadline.client._sync import PageIterator, Threadline
from threadline.client.errors import (
    AgentUnavailable,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Gone,
    InvalidResponse,
    NotFound,
    PreconditionFailed,
    RateLimited,
    SandboxLimitReached,
    ServerError,
    StartFailed,
    StartTimeout,
    ThreadlineError,
    Unauthorized,
    UnprocessableEntity,
)
from threadline.conversations.models import (
    AppConversation,
    ConversationExecutionStatus,
    ConversationTrigger,
    MetricsSnapshot,
    ProviderType,
    SandboxStatus,
    SortOrder,
    TokenUsage,
)
from threadline.conversations.start_models import (
    AppConversationStartTask,
    AppConversationStartTaskStatus,
    AppSendMessageResponse,
)
from threadline.events.models import EventPayload, EventSortOrder
from threadline.sandboxes.models import SandboxInfo
from threadline.settings.models import LLMSettings

if TYPE_CHECKING:
    from threadline.auth.routes import UserInfo


def __getattr__(name: str) -> Any:
    # UserInfo's module loads the server's auth stack: imported on first use, not with the client.
    if name == "UserInfo":
        from threadline.auth.routes import UserInfo

        return UserInfo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENV_API_KEY",
    "ENV_URL",
    "UNSET",
    "AgentUnavailable",
    "AppConversation",
    "AppConversationStartTask",
    "AppConversationStartTaskStatus",
    "AppSendMessageResponse",
    "AsyncPageIterator",
    "AsyncThreadline",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "ConversationChange",
    "ConversationExecutionStatus",
    "ConversationFilters",
    "ConversationTrigger",
    "EventPayload",
    "EventSortOrder",
    "Forbidden",
    "Gone",
    "InvalidResponse",
    "LLMSettings",
    "MetricsSnapshot",
    "NotFound",
    "PageIterator",
    "PreconditionFailed",
    "ProviderType",
    "RateLimited",
    "SandboxInfo",
    "SandboxLimitReached",
    "SandboxStatus",
    "ServerError",
    "SortOrder",
    "StartFailed",
    "StartTimeout",
    "Threadline",
    "ThreadlineError",
    "TokenUsage",
    "Unauthorized",
    "UnprocessableEntity",
    "Unset",
    "UserInfo",
]
