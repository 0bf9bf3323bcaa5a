"""The requests of the API, one function each, shared by the sync and async clients.

Answers are read into the server's own wire models (imported, not copied), so the client and the server
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from threadline.client._base import (
    CONVERSATIONS,
    SANDBOXES,
    Call,
    conversation_filter_params,
    drop_unset,
    ignore_body,
    jsonable,
    message_body,
    model_parser,
    query_value,
    with_idempotency_key,
)
from threadline.conversations.models import AppConversation, AppConversationPage
from threadline.conversations.start_models import AppConversationStartTask, AppSendMessageResponse
from threadline.events.models import EventPage
from threadline.sandboxes.models import SandboxInfo, SandboxPage
from threadline.secrets.models import SecretInfo, SecretList
from threadline.settings.models import LLMSettings

if TYPE_CHECKING:
    from threadline.auth.routes import UserInfo

_conversation = TypeAdapter(AppConversation)
_conversations = TypeAdapter(list[AppConversation | None])
_conversation_page = TypeAdapter(AppConversationPage)
_task = TypeAdapter(AppConversationStartTask)
_tasks = TypeAdapter(list[AppConversationStartTask | None])
_send_response = TypeAdapter(AppSendMessageResponse)
_event_page = TypeAdapter(EventPage)
_count = TypeAdapter(int)
_sandbox = TypeAdapter(SandboxInfo)
_sandboxes = TypeAdapter(list[SandboxInfo | None])
_sandbox_page = TypeAdapter(SandboxPage)
_settings = TypeAdapter(LLMSettings)
_secret = TypeAdapter(SecretInfo)
_secret_list = TypeAdapter(SecretList)


def _seg(value: str) -> str:
    """An id as one path segment, whatever it holds."""
    return quote(value, safe="")


@cache
def _user() -> TypeAdapter[UserInfo]:
    # UserInfo lives with its route, whose module loads the server's auth stack: only when first needed.
    from threadline.auth.routes import UserInfo

    return TypeAdapter(UserInfo)


def me() -> Call[UserInfo]:
    return Call("GET", "/api/v1/users/me", model_parser(_user()))


# -- conversations -----------------------------------------------------------------------------------


def start(body: Mapping[str, Any], idempotency_key: str | None, stream: bool = False) -> Call[AppConversationStartTask]:
    path = f"{CONVERSATIONS}/stream-start" if stream else CONVERSATIONS
    return Call(
        "POST",
        path,
        model_parser(_task),
        json=jsonable(body),
        has_body=True,
        headers=with_idempotency_key({}, idempotency_key),
    )


def start_body(initial_message: str | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in fields.items() if v is not None}
    message = message_body(initial_message)
    if message is not None:
        body["initial_message"] = message
    return body


def start_tasks(ids: Sequence[str]) -> Call[list[AppConversationStartTask | None]]:
    return Call("GET", f"{CONVERSATIONS}/start-tasks", model_parser(_tasks), params=[("ids", i) for i in ids])


def get_many(ids: Sequence[str]) -> Call[list[AppConversation | None]]:
    # The reference has no single GET: a batch of one works on every server of this API.
    return Call("GET", CONVERSATIONS, model_parser(_conversations), params=[("ids", i) for i in ids])


def search(
    filters: Mapping[str, Any], sort_order: str | None, page_size: int, page_id: str | None
) -> Call[AppConversationPage]:
    params = conversation_filter_params(filters)
    if sort_order is not None:
        params.append(("sort_order", query_value(sort_order)))
    params.append(("limit", str(page_size)))
    if page_id is not None:
        params.append(("page_id", page_id))
    return Call("GET", f"{CONVERSATIONS}/search", model_parser(_conversation_page), params=params)


def count(filters: Mapping[str, Any]) -> Call[int]:
    return Call("GET", f"{CONVERSATIONS}/count", model_parser(_count), params=conversation_filter_params(filters))


def update(conversation_id: str, fields: Mapping[str, Any], if_match: str | None) -> Call[AppConversation]:
    headers = {"If-Match": if_match} if if_match else {}
    return Call(
        "PATCH",
        f"{CONVERSATIONS}/{_seg(conversation_id)}",
        model_parser(_conversation),
        json=jsonable(drop_unset(fields)),
        has_body=True,
        headers=headers,
    )


def delete(conversation_id: str, if_match: str | None) -> Call[None]:
    headers = {"If-Match": if_match} if if_match else {}
    return Call("DELETE", f"{CONVERSATIONS}/{_seg(conversation_id)}", ignore_body, headers=headers)


def send_message(
    conversation_id: str, message: str | Mapping[str, Any], run: bool, idempotency_key: str | None
) -> Call[AppSendMessageResponse]:
    return Call(
        "POST",
        f"{CONVERSATIONS}/{_seg(conversation_id)}/send-message",
        model_parser(_send_response),
        json=jsonable(message_body(message, run)),
        has_body=True,
        headers=with_idempotency_key({}, idempotency_key),
    )


def _event_params(
    kind: str | None, timestamp_gte: datetime | str | None, timestamp_lt: datetime | str | None
) -> list[tuple[str, str]]:
    params = []
    if kind is not None:
        params.append(("kind__eq", kind))
    if timestamp_gte is not None:
        params.append(("timestamp__gte", query_value(timestamp_gte)))
    if timestamp_lt is not None:
        params.append(("timestamp__lt", query_value(timestamp_lt)))
    return params


def events(
    conversation_id: str,
    kind: str | None,
    timestamp_gte: datetime | str | None,
    timestamp_lt: datetime | str | None,
    sort_order: str | None,
    page_size: int,
    page_id: str | None,
) -> Call[EventPage]:
    params = _event_params(kind, timestamp_gte, timestamp_lt)
    if sort_order is not None:
        params.append(("sort_order", query_value(sort_order)))
    params.append(("limit", str(page_size)))
    if page_id is not None:
        params.append(("page_id", page_id))
    return Call(
        "GET", f"/api/v1/conversation/{_seg(conversation_id)}/events/search", model_parser(_event_page), params=params
    )


def count_events(
    conversation_id: str, kind: str | None, timestamp_gte: datetime | str | None, timestamp_lt: datetime | str | None
) -> Call[int]:
    return Call(
        "GET",
        f"/api/v1/conversation/{_seg(conversation_id)}/events/count",
        model_parser(_count),
        params=_event_params(kind, timestamp_gte, timestamp_lt),
    )


def _streamed(response: httpx.Response) -> None:
    """A stream's answer is read as it arrives (SseParser), not parsed whole."""
    return None


def stream_events(conversation_id: str, *, last_event_id: str | None, shared: bool = False) -> Call[None]:
    base = "/api/v1/shared-conversations" if shared else "/api/v1/conversation"
    headers, params = {"Accept": "text/event-stream"}, []
    if last_event_id is not None:
        # The header is what an EventSource sends; an id that is not ASCII goes in the query instead.
        if last_event_id.isascii() and last_event_id.isprintable():
            headers["Last-Event-ID"] = last_event_id
        else:
            params.append(("last_event_id", last_event_id))
    path = f"{base}/{_seg(conversation_id)}/events/stream"
    return Call("GET", path, _streamed, params=params, headers=headers)


def conversation_changes() -> Call[None]:
    return Call("GET", f"{CONVERSATIONS}/stream", _streamed, headers={"Accept": "text/event-stream"})


# -- sandboxes ---------------------------------------------------------------------------------------


def sandbox_search(page_size: int, page_id: str | None) -> Call[SandboxPage]:
    params = [("limit", str(page_size))]
    if page_id is not None:
        params.append(("page_id", page_id))
    return Call("GET", f"{SANDBOXES}/search", model_parser(_sandbox_page), params=params)


def sandbox_get_many(ids: Sequence[str]) -> Call[list[SandboxInfo | None]]:
    return Call("GET", SANDBOXES, model_parser(_sandboxes), params=[("id", i) for i in ids])


def sandbox_start(sandbox_spec_id: str | None, idempotency_key: str | None) -> Call[SandboxInfo]:
    params = [("sandbox_spec_id", sandbox_spec_id)] if sandbox_spec_id else []
    return Call(
        "POST", SANDBOXES, model_parser(_sandbox), params=params, headers=with_idempotency_key({}, idempotency_key)
    )


def sandbox_action(sandbox_id: str, action: str) -> Call[None]:
    return Call("POST", f"{SANDBOXES}/{_seg(sandbox_id)}/{action}", ignore_body)


def sandbox_delete(sandbox_id: str) -> Call[None]:
    # The reference also wants the id as a query parameter.
    return Call("DELETE", f"{SANDBOXES}/{_seg(sandbox_id)}", ignore_body, params=[("sandbox_id", sandbox_id)])


# -- settings ----------------------------------------------------------------------------------------


def settings_get() -> Call[LLMSettings]:
    return Call("GET", "/api/v1/settings", model_parser(_settings))


def settings_update(fields: Mapping[str, Any]) -> Call[LLMSettings]:
    return Call("POST", "/api/v1/settings", model_parser(_settings), json=drop_unset(fields), has_body=True)


def secrets_list() -> Call[SecretList]:
    return Call("GET", "/api/v1/secrets", model_parser(_secret_list))


def secret_get(name: str) -> Call[SecretInfo]:
    return Call("GET", f"/api/v1/secrets/{_seg(name)}", model_parser(_secret))


def secret_create(name: str, value: str, description: str | None) -> Call[SecretInfo]:
    body = {"name": name, "value": value, **({"description": description} if description is not None else {})}
    return Call("POST", "/api/v1/secrets", model_parser(_secret), json=body, has_body=True)


def secret_update(name: str, fields: Mapping[str, Any]) -> Call[SecretInfo]:
    return Call("PATCH", f"/api/v1/secrets/{_seg(name)}", model_parser(_secret), json=drop_unset(fields), has_body=True)


def secret_delete(name: str) -> Call[None]:
    return Call("DELETE", f"/api/v1/secrets/{_seg(name)}", ignore_body)
