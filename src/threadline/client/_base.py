"""What the sync and async clients share: configuration, request descriptions, retries, query building.

A resource method builds a `Call` (method, path, query, body, headers, how to read the answer, whether
it may be retried); `Threadline` and `AsyncThreadline` only differ in how they send it.
"""

from __future__ import annotations

import codecs
import enum
import json
import logging
import os
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypedDict, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from threadline.client.errors import (
    ConnectionFailed,
    InvalidResponse,
    ThreadlineError,
    error_from_response,
    parse_retry_after,
)
from threadline.client_env import ENV_API_KEY as ENV_API_KEY
from threadline.client_env import ENV_URL as ENV_URL
from threadline.conversations.models import AppConversation

log = logging.getLogger("threadline.client")
# A library does not print on its own: retries are logged, and shown only where the application wants.
log.addHandler(logging.NullHandler())
T = TypeVar("T")

IDEMPOTENCY_HEADER = "Idempotency-Key"
CONVERSATIONS = "/api/v1/app-conversations"
SANDBOXES = "/api/v1/sandboxes"
MAX_BATCH = 100
MAX_PAGE_SIZE = 100

# Requests that can be repeated without changing the outcome.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# Failures before the request reached the server: any request may be sent again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Transport errors that are not worth a retry (a bad URL stays bad).
_PERMANENT = (httpx.UnsupportedProtocol, httpx.InvalidURL)
_RETRY_STATUSES = frozenset({502, 503, 504})


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset.UNSET
"""An argument that was not given: the field is left as it is (None, by contrast, clears it)."""
Unset = Literal[_Unset.UNSET]


@dataclass(frozen=True)
class ClientOptions:
    base_url: str
    api_key: str
    timeout: float | httpx.Timeout = 30.0
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        api_key: str | None,
        **kwargs: Any,
    ) -> ClientOptions:
        url = base_url or os.environ.get(ENV_URL)
        key = api_key or os.environ.get(ENV_API_KEY)
        if not url:
            raise ValueError(f"no server URL: pass base_url or set {ENV_URL}")
        if not key:
            raise ValueError(f"no API key: pass api_key or set {ENV_API_KEY}")
        if kwargs.get("max_retries", 0) < 0:
            raise ValueError("max_retries must be >= 0")
        return cls(base_url=url.rstrip("/"), api_key=key, **kwargs)

    def url(self, path: str) -> str:
        return self.base_url + path

    def request_headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"}
        headers.update(self.headers)
        headers.update(extra)
        return headers


@dataclass
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    json: Any = None
    has_body: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def idempotent(self) -> bool:
        """GET/HEAD/DELETE, or a request carrying an Idempotency-Key: safe to send again after any failure."""
        return self.method in _IDEMPOTENT_METHODS or IDEMPOTENCY_HEADER in self.headers


def with_idempotency_key(headers: dict[str, str], key: str | None) -> dict[str, str]:
    """Add an Idempotency-Key (the caller's, else a fresh one): it is the same on every retry of the call."""
    headers[IDEMPOTENCY_HEADER] = key or f"tl-{uuid.uuid4()}"
    return headers


def _problem_slug(response: httpx.Response) -> str:
    if "json" not in response.headers.get("content-type", ""):
        return ""
    try:
        body = response.json()
    except ValueError:
        return ""
    type_ = body.get("type") if isinstance(body, dict) else None
    return type_.rstrip("/").rsplit("/", 1)[-1] if isinstance(type_, str) else ""


class RetryPolicy:
    """When to send a call again and how long to wait first (exponential backoff, jitter, Retry-After)."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options

    def backoff(self, attempt: int) -> float:
        """Equal jitter: half the exponential delay fixed, half random, so clients spread out."""
        ceiling = min(self.options.max_backoff, self.options.backoff * (2**attempt))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def after_error(self, call: Call[Any], attempt: int, exc: httpx.TransportError) -> float | None:
        if attempt >= self.options.max_retries or isinstance(exc, _PERMANENT):
            return None
        if isinstance(exc, _NOT_SENT) or call.idempotent:
            return self.backoff(attempt)
        return None

    def after_response(self, call: Call[Any], attempt: int, response: httpx.Response) -> float | None:
        if attempt >= self.options.max_retries:
            return None
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            # A rate-limited request was refused before anything happened: any call may be repeated.
            # The sandbox cap is a quota, not a rate: waiting does not help.
            if _problem_slug(response) == "sandbox-limit-reached":
                return None
        elif status in _RETRY_STATUSES:
            if not call.idempotent:
                return None
        elif status == 409 and IDEMPOTENCY_HEADER in call.headers:
            # The first request with this key is still running: ask again shortly for its answer.
            if _problem_slug(response) != "idempotency-key-in-flight":
                return None
            retry_after = retry_after if retry_after is not None else 1.0
        else:
            return None
        if retry_after is None:
            return self.backoff(attempt)
        if retry_after > self.options.max_retry_after:
            return None
        return retry_after + random.uniform(0, 0.1)

    def describe(self, call: Call[Any], attempt: int, delay: float, reason: str) -> None:
        log.warning(
            "%s %s: %s; retry %d of %d in %.2f s",
            call.method,
            call.path,
            reason,
            attempt + 1,
            self.options.max_retries,
            delay,
        )


def connection_failed(options: ClientOptions, call: Call[Any], exc: httpx.TransportError) -> ThreadlineError:
    return ConnectionFailed(f"{call.method} {options.url(call.path)} failed: {type(exc).__name__}: {exc}".rstrip(": "))


def failure(response: httpx.Response) -> ThreadlineError:
    return error_from_response(response)


# -- reading answers ---------------------------------------------------------------------------------


def model_parser(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        try:
            return adapter.validate_json(response.content)
        except ValidationError as exc:
            raise InvalidResponse(
                f"{response.request.method} {response.request.url.path}: unexpected answer: "
                f"{exc.error_count()} validation error(s): {exc.errors(include_url=False)[:3]}",
                status=response.status_code,
                response=response,
            ) from exc

    return parse


def ignore_body(response: httpx.Response) -> None:
    return None


def one_or_not_found(items: list[T | None], what: str, id_: str) -> T:
    from threadline.client.errors import NotFound

    if not items or items[0] is None:
        raise NotFound(f"{what} {id_} not found", status=404, title="Not Found")
    return items[0]


# -- building queries --------------------------------------------------------------------------------


def query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class ConversationFilters(TypedDict, total=False):
    """Filters of conversation search and count (the server's `*__eq`, `*__gte`... parameters)."""

    title_contains: str
    created_at_gte: datetime | str
    created_at_lt: datetime | str
    updated_at_gte: datetime | str
    updated_at_lt: datetime | str
    sandbox_id: str
    include_sub_conversations: bool
    tags: Mapping[str, str]
    """Every key:value must match."""
    tag_keys: Iterable[str]
    """Every key must be present."""
    selected_repository: str
    git_provider: str
    trigger: str
    public: bool
    parent_conversation_id: str
    execution_status: str
    llm_model: str
    accumulated_cost_gte: float


_FILTER_PARAMS = {
    "title_contains": "title__contains",
    "created_at_gte": "created_at__gte",
    "created_at_lt": "created_at__lt",
    "updated_at_gte": "updated_at__gte",
    "updated_at_lt": "updated_at__lt",
    "sandbox_id": "sandbox_id__eq",
    "include_sub_conversations": "include_sub_conversations",
    "selected_repository": "selected_repository__eq",
    "git_provider": "git_provider__eq",
    "trigger": "trigger__eq",
    "public": "public__eq",
    "parent_conversation_id": "parent_conversation_id__eq",
    "execution_status": "execution_status__eq",
    "llm_model": "llm_model__eq",
    "accumulated_cost_gte": "accumulated_cost__gte",
}


def conversation_filter_params(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    unknown = set(filters) - set(_FILTER_PARAMS) - {"tags", "tag_keys"}
    if unknown:
        raise TypeError(f"unknown conversation filter(s): {', '.join(sorted(unknown))}")
    params: list[tuple[str, str]] = []
    for name, param in _FILTER_PARAMS.items():
        value = filters.get(name)
        if value is not None:
            params.append((param, query_value(value)))
    for key, value in (filters.get("tags") or {}).items():
        params.append(("tag", f"{key}:{value}"))
    for key in filters.get("tag_keys") or ():
        params.append(("tag_key", key))
    return params


def ids_chunks(ids: Sequence[str]) -> list[list[str]]:
    ids = list(ids)
    return [ids[i : i + MAX_BATCH] for i in range(0, len(ids), MAX_BATCH)]


def page_size_for(page_size: int, limit: int | None) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1-{MAX_PAGE_SIZE}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    return min(page_size, limit) if limit else page_size


def drop_unset(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not UNSET}


def message_body(message: str | Mapping[str, Any] | None, run: bool | None = None) -> dict[str, Any] | None:
    """A message body from text (or a ready-made message mapping, passed on as given)."""
    if message is None:
        return None
    if isinstance(message, str):
        body: dict[str, Any] = {"role": "user", "content": [{"type": "text", "text": message}]}
    else:
        body = dict(message)
    if run is not None:
        body["run"] = run
    return body


def jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


# -- paging ------------------------------------------------------------------------------------------


@dataclass
class PageState:
    """Where an auto-paging iteration is: the next token, how many items are still wanted."""

    page_id: str | None
    remaining: int | None
    started: bool = False
    seen_tokens: set[str] = field(default_factory=set)

    @property
    def done(self) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return True
        return self.started and self.page_id is None

    def advance(self, items: list[T], next_page_id: str | None) -> list[T]:
        self.started = True
        if self.remaining is not None:
            items = items[: self.remaining]
            self.remaining -= len(items)
        # A server that hands the same token back would page forever: stop instead.
        if next_page_id is not None and (next_page_id in self.seen_tokens or not items):
            next_page_id = None
        if next_page_id is not None:
            self.seen_tokens.add(next_page_id)
        self.page_id = next_page_id
        return items


# -- stream-start: a JSON array that arrives element by element --------------------------------------


class JsonArrayStream:
    """Feed chunks of a streamed JSON array; get each complete element as soon as it has arrived."""

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._opened = False

    def feed(self, chunk: bytes) -> list[Any]:
        self._buffer += self._text.decode(chunk)
        items: list[Any] = []
        while True:
            self._buffer = self._buffer.lstrip()
            if not self._opened:
                if not self._buffer:
                    return items
                if self._buffer[0] != "[":
                    raise ValueError("the stream is not a JSON array")
                self._opened = True
                self._buffer = self._buffer[1:]
                continue
            if self._buffer[:1] in (",", "]"):
                self._buffer = self._buffer[1:]
                continue
            if not self._buffer:
                return items
            try:
                item, end = self._decoder.raw_decode(self._buffer)
            except json.JSONDecodeError:
                return items  # incomplete: wait for more
            items.append(item)
            self._buffer = self._buffer[end:]


@dataclass(frozen=True)
class SseMessage:
    """One Server-Sent Events message: its `event` type ("message" unless named), `data` and `id`."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Feed chunks of a text/event-stream; get each complete message as soon as its blank line has arrived.

    Follows the WHATWG parsing rules: CR, LF or CRLF end lines; `:` lines are comments (heartbeats);
    `data:` lines join with a newline; `id:` sets the id every later message carries until another is
    set; `retry:` sets `retry_ms`; a message without data is not dispatched."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseMessage]:
        self._buffer += self._text.decode(chunk)
        messages: list[SseMessage] = []
        while True:
            ends = [i for i in (self._buffer.find("\r"), self._buffer.find("\n")) if i != -1]
            if not ends:
                return messages
            end = min(ends)
            # A CR at the end of what has arrived may be the first half of a CRLF: wait for the next chunk.
            if self._buffer[end] == "\r" and end + 1 == len(self._buffer):
                return messages
            line = self._buffer[:end]
            skip = 2 if self._buffer[end : end + 2] == "\r\n" else 1
            self._buffer = self._buffer[end + skip :]
            message = self._line(line)
            if message is not None:
                messages.append(message)

    def _line(self, line: str) -> SseMessage | None:
        if line == "":
            data, event = self._data, self._event
            self._data, self._event = [], ""
            if not data:
                return None
            return SseMessage(event or "message", "\n".join(data), self.last_id)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


@dataclass(frozen=True)
class ConversationChange:
    """One message of the conversation-change stream: `kind` is "created", "updated" or "deleted";
    `conversation` is the conversation as GET answers it (None when deleted)."""

    kind: str
    id: str
    conversation: AppConversation | None

    @classmethod
    def from_message(cls, message: SseMessage) -> ConversationChange:
        data = json.loads(message.data)
        if message.event == "deleted":
            return cls("deleted", str(data["id"]), None)
        conversation = AppConversation.model_validate(data)
        return cls(message.event, conversation.id, conversation)
