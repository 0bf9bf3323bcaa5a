"""The synchronous client: `Threadline`.

Generated from `_async.py` by `scripts/unasync.py`; edit that file and run the script, not this one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import httpx
from typing_extensions import Unpack

from threadline.client import _calls as calls
from threadline.client._base import (
    UNSET,
    Call,
    ClientOptions,
    ConversationChange,
    ConversationFilters,
    JsonArrayStream,
    PageState,
    RetryPolicy,
    SseParser,
    Unset,
    connection_failed,
    failure,
    ids_chunks,
    one_or_not_found,
    page_size_for,
)
from threadline.client.errors import ConnectionFailed, InvalidResponse, StartFailed, StartTimeout
from threadline.conversations.models import AppConversation, ProviderType, SortOrder
from threadline.conversations.start_models import (
    TERMINAL_STATUSES,
    AppConversationStartTask,
    AppConversationStartTaskStatus,
    AppSendMessageResponse,
)
from threadline.events.models import EventPayload, EventSortOrder
from threadline.sandboxes.models import SandboxInfo
from threadline.secrets.models import SecretInfo
from threadline.settings.models import LLMSettings

if TYPE_CHECKING:
    from threadline.auth.routes import UserInfo

T = TypeVar("T")


class PageIterator(Generic[T]):
    """Items of a search, page after page (following `next_page_id`), fetched as you iterate.

    `limit` caps the number of items; `pages()` iterates whole pages instead. Each iteration starts over.
    """

    def __init__(self, fetch: Callable[[str | None], tuple[list[T], str | None]], limit: int | None) -> None:
        self._fetch = fetch
        self._limit = limit

    def pages(self) -> Iterator[list[T]]:
        state = PageState(page_id=None, remaining=self._limit)
        while not state.done:
            items, next_page_id = self._fetch(state.page_id)
            items = state.advance(items, next_page_id)
            if items:
                yield items

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page

    def to_list(self) -> list[T]:
        return list(self)


class _Resource:
    def __init__(self, client: Threadline) -> None:
        self._client = client

    def _send(self, call: Call[T]) -> T:
        return self._client._send(call)


class Conversations(_Resource):
    """`/api/v1/app-conversations`: start, read, search, change and delete conversations; their events."""

    def start(
        self,
        initial_message: str | Mapping[str, Any] | None = None,
        *,
        title: str | None = None,
        selected_repository: str | None = None,
        selected_branch: str | None = None,
        git_provider: ProviderType | str | None = None,
        tags: Mapping[str, str] | None = None,
        public: bool | None = None,
        llm_model: str | None = None,
        trigger: str | None = None,
        sandbox_id: str | None = None,
        parent_conversation_id: str | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AppConversationStartTask:
        """Ask for a new conversation; answers the start task at once (status WORKING).

        `initial_message` is text (or a full message mapping). Other fields of the start request
        (`pr_number`, `agent_type`, `secrets`, ...) may be given as keyword arguments. The request carries
        an Idempotency-Key (yours, else a fresh one), so a retry never starts a second conversation.
        """
        body = calls.start_body(
            initial_message,
            dict(
                title=title,
                selected_repository=selected_repository,
                selected_branch=selected_branch,
                git_provider=git_provider,
                tags=tags,
                public=public,
                llm_model=llm_model,
                trigger=trigger,
                sandbox_id=sandbox_id,
                parent_conversation_id=parent_conversation_id,
                **fields,
            ),
        )
        return self._send(calls.start(body, idempotency_key))

    def start_and_wait(
        self,
        initial_message: str | Mapping[str, Any] | None = None,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        on_status: Callable[[AppConversationStartTask], None] | None = None,
        **start_fields: Any,
    ) -> AppConversation:
        """Start a conversation and wait until it is READY; answers the conversation.

        Polls the start task every `poll_interval` seconds; `on_status` is called with the task whenever
        its status changes. Raises StartFailed if the task ends in ERROR, StartTimeout after `timeout`
        seconds (the start goes on on the server).
        """
        deadline = time.monotonic() + timeout
        task = self.start(initial_message, **start_fields)
        last: AppConversationStartTaskStatus | None = None
        while True:
            if task.status != last:
                last = task.status
                if on_status is not None:
                    on_status(task)
            if task.status in TERMINAL_STATUSES:
                break
            if time.monotonic() >= deadline:
                raise StartTimeout(task, timeout)
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))
            task = self.get_start_task(task.id)
        if task.status == AppConversationStartTaskStatus.ERROR:
            raise StartFailed(task)
        if task.app_conversation_id is None:
            raise InvalidResponse(f"start task {task.id} is READY without app_conversation_id")
        return self.get(task.app_conversation_id)

    def stream_start(
        self,
        initial_message: str | Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Iterator[AppConversationStartTask]:
        """Start a conversation with `stream-start`: yields the start task at each status as it happens."""
        body = calls.start_body(initial_message, fields)
        call = calls.start(body, idempotency_key, stream=True)
        with self._client._stream(call) as response:
            parser = JsonArrayStream()
            for chunk in response.iter_bytes():
                for item in parser.feed(chunk):
                    yield AppConversationStartTask.model_validate(item)

    def get_start_task(self, task_id: str) -> AppConversationStartTask:
        return one_or_not_found(self._send(calls.start_tasks([task_id])), "start task", task_id)

    def get(self, conversation_id: str) -> AppConversation:
        """One conversation; NotFound when it is missing or not yours."""
        return one_or_not_found(self.get_many([conversation_id]), "conversation", conversation_id)

    def get_many(self, conversation_ids: Sequence[str]) -> list[AppConversation | None]:
        """Conversations in the order asked, None for each one missing (any number of ids)."""
        found: list[AppConversation | None] = []
        for chunk in ids_chunks(conversation_ids):
            batch = self._send(calls.get_many(chunk))
            found.extend(batch)
        return found

    def search(
        self,
        *,
        sort_order: SortOrder | str | None = None,
        page_size: int = 100,
        limit: int | None = None,
        page_id: str | None = None,
        **filters: Unpack[ConversationFilters],
    ) -> PageIterator[AppConversation]:
        """Every conversation matching the filters, newest first unless `sort_order` says otherwise.

        Iterating fetches page after page; `limit` caps the number of items, `page_id` starts from a
        `next_page_id` the server gave earlier.
        """
        size = page_size_for(page_size, limit)
        calls.search(filters, sort_order, size, None)  # reject unknown filters now, not on first iteration
        first = page_id

        def fetch(token: str | None) -> tuple[list[AppConversation], str | None]:
            page = self._send(calls.search(filters, sort_order, size, token or first))
            return page.items, page.next_page_id

        return PageIterator(fetch, limit)

    def count(self, **filters: Unpack[ConversationFilters]) -> int:
        return self._send(calls.count(filters))

    def update(
        self,
        conversation_id: str,
        *,
        title: str | Unset | None = UNSET,
        public: bool | Unset | None = UNSET,
        selected_repository: str | Unset | None = UNSET,
        selected_branch: str | Unset | None = UNSET,
        git_provider: ProviderType | str | Unset | None = UNSET,
        tags: Mapping[str, str | None] | Unset | None = UNSET,
        if_match: str | None = None,
    ) -> AppConversation:
        """Change a conversation's metadata: an argument not given keeps the value, None clears it.

        `tags` is a merge patch: `{"k": "v"}` sets a tag, `{"k": None}` removes one, `tags=None` removes
        all. `if_match` (an `etag`) makes the change only if nobody changed the conversation meanwhile
        (PreconditionFailed otherwise, with the current `etag`).
        """
        fields = dict(
            title=title,
            public=public,
            selected_repository=selected_repository,
            selected_branch=selected_branch,
            git_provider=git_provider,
            tags=tags,
        )
        return self._send(calls.update(conversation_id, fields, if_match))

    def delete(self, conversation_id: str, *, if_match: str | None = None) -> None:
        self._send(calls.delete(conversation_id, if_match))

    def send_message(
        self,
        conversation_id: str,
        message: str | Mapping[str, Any],
        *,
        run: bool = True,
        idempotency_key: str | None = None,
    ) -> AppSendMessageResponse:
        """Send a user message to the conversation's agent (`run`: let the agent act on it)."""
        return self._send(calls.send_message(conversation_id, message, run, idempotency_key))

    def events(
        self,
        conversation_id: str,
        *,
        kind: str | None = None,
        timestamp_gte: datetime | str | None = None,
        timestamp_lt: datetime | str | None = None,
        sort_order: EventSortOrder | str | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> PageIterator[EventPayload]:
        """The conversation's events as the agent server reported them (dicts with `id`, `kind`, `timestamp`)."""
        size = page_size_for(page_size, limit)

        def fetch(token: str | None) -> tuple[list[EventPayload], str | None]:
            page = self._send(calls.events(conversation_id, kind, timestamp_gte, timestamp_lt, sort_order, size, token))
            return page.items, page.next_page_id

        return PageIterator(fetch, limit)

    def stream_events(
        self, conversation_id: str, *, last_event_id: str | None = None, shared: bool = False
    ) -> Iterator[EventPayload]:
        """The conversation's events as they are stored, live (`GET .../events/stream`, a Threadline
        extension): every stored event first (after `last_event_id` when given), then each new one as it
        arrives, forever; stop iterating to stop. A dropped connection, or a server that restarted, is
        reconnected with `Last-Event-ID`: no event is missed or repeated. Ends (NotFound) when the
        conversation is deleted. `shared`: the public stream of a public conversation (no API key needed)."""
        while True:
            parser = SseParser()
            call = calls.stream_events(conversation_id, last_event_id=last_event_id, shared=shared)
            try:
                with self._client._stream(call) as response:
                    for chunk in response.iter_bytes():
                        for message in parser.feed(chunk):
                            last_event_id = message.id or last_event_id
                            yield json.loads(message.data)
            except ConnectionFailed:
                if parser.retry_ms is None:
                    raise  # not even the stream's first line arrived: the retries of the call are spent
            # The server ended the stream (it shut down, or the conversation went away) or the connection
            # dropped: reconnect after the delay the server asked for, as an EventSource would.
            time.sleep((parser.retry_ms or 1000) / 1000)

    def stream_changes(self) -> Iterator[ConversationChange]:
        """Changes of your conversations as they happen (`GET /api/v1/app-conversations/stream`, a Threadline
        extension): created, updated (title, tags, public, status, cost...) and deleted. Not resumable: it
        ends (ConnectionFailed) when the connection drops; start it again and re-read the list."""
        with self._client._stream(calls.conversation_changes()) as response:
            parser = SseParser()
            for chunk in response.iter_bytes():
                for message in parser.feed(chunk):
                    yield ConversationChange.from_message(message)

    def count_events(
        self,
        conversation_id: str,
        *,
        kind: str | None = None,
        timestamp_gte: datetime | str | None = None,
        timestamp_lt: datetime | str | None = None,
    ) -> int:
        return self._send(calls.count_events(conversation_id, kind, timestamp_gte, timestamp_lt))


class Sandboxes(_Resource):
    """`/api/v1/sandboxes`: the sandboxes conversations run in."""

    def search(self, *, page_size: int = 100, limit: int | None = None) -> PageIterator[SandboxInfo]:
        size = page_size_for(page_size, limit)

        def fetch(token: str | None) -> tuple[list[SandboxInfo], str | None]:
            page = self._send(calls.sandbox_search(size, token))
            return page.items, page.next_page_id

        return PageIterator(fetch, limit)

    def get(self, sandbox_id: str) -> SandboxInfo:
        return one_or_not_found(self.get_many([sandbox_id]), "sandbox", sandbox_id)

    def get_many(self, sandbox_ids: Sequence[str]) -> list[SandboxInfo | None]:
        found: list[SandboxInfo | None] = []
        for chunk in ids_chunks(sandbox_ids):
            batch = self._send(calls.sandbox_get_many(chunk))
            found.extend(batch)
        return found

    def start(self, *, sandbox_spec_id: str | None = None, idempotency_key: str | None = None) -> SandboxInfo:
        return self._send(calls.sandbox_start(sandbox_spec_id, idempotency_key))

    def pause(self, sandbox_id: str) -> None:
        self._send(calls.sandbox_action(sandbox_id, "pause"))

    def resume(self, sandbox_id: str) -> None:
        self._send(calls.sandbox_action(sandbox_id, "resume"))

    def delete(self, sandbox_id: str) -> None:
        self._send(calls.sandbox_delete(sandbox_id))


class Settings(_Resource):
    """`/api/v1/settings`: your LLM settings (the API key is write-only)."""

    def get(self) -> LLMSettings:
        return self._send(calls.settings_get())

    def update(
        self,
        *,
        llm_model: str | Unset | None = UNSET,
        llm_base_url: str | Unset | None = UNSET,
        llm_api_key: str | Unset | None = UNSET,
    ) -> LLMSettings:
        """An argument not given keeps the value; None clears yours so the server's default applies."""
        return self._send(
            calls.settings_update(dict(llm_model=llm_model, llm_base_url=llm_base_url, llm_api_key=llm_api_key))
        )


class Secrets(_Resource):
    """`/api/v1/secrets`: secrets your agents may use (values are write-only: never returned)."""

    def all(self) -> list[SecretInfo]:
        """Your secrets, by name: names, descriptions and times."""
        return (self._send(calls.secrets_list())).secrets

    def get(self, name: str) -> SecretInfo:
        return self._send(calls.secret_get(name))

    def create(self, name: str, value: str, *, description: str | None = None) -> SecretInfo:
        return self._send(calls.secret_create(name, value, description))

    def update(
        self,
        name: str,
        *,
        value: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        new_name: str | Unset = UNSET,
    ) -> SecretInfo:
        """An argument not given keeps the value; `description=None` clears it; `new_name` renames."""
        return self._send(calls.secret_update(name, dict(value=value, description=description, name=new_name)))

    def delete(self, name: str) -> None:
        self._send(calls.secret_delete(name))


class Threadline:
    """Client of a Threadline (or any OpenHands App Conversations API v1) server.

    `base_url` and `api_key` default to `THREADLINE_URL` and `THREADLINE_API_KEY`. Failed calls are sent
    again (at most `max_retries` times, exponential backoff with jitter, Retry-After honoured) when that
    is safe: GET/DELETE, and POSTs carrying an Idempotency-Key, after a connection error, 429, 502, 503
    or 504; any call that never reached the server or was rate limited.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._options = ClientOptions.resolve(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            headers=dict(headers or {}),
        )
        self._retry = RetryPolicy(self._options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)
        self.conversations = Conversations(self)
        self.sandboxes = Sandboxes(self)
        self.settings = Settings(self)
        self.secrets = Secrets(self)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    def me(self) -> UserInfo:
        """The user the API key belongs to."""
        return self._send(calls.me())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self, call: Call[Any]) -> httpx.Request:
        return self._http.build_request(
            call.method,
            self._options.url(call.path),
            params=tuple(call.params),
            json=call.json if call.has_body else None,
            headers=self._options.request_headers(call.headers),
        )

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(self._build(call))
            except httpx.TransportError as exc:
                delay = self._retry.after_error(call, attempt, exc)
                if delay is None:
                    raise connection_failed(self._options, call, exc) from exc
                reason = type(exc).__name__
            else:
                if response.is_success:
                    return call.parse(response)
                delay = self._retry.after_response(call, attempt, response)
                if delay is None:
                    raise failure(response)
                reason = f"HTTP {response.status_code}"
            self._retry.describe(call, attempt, delay, reason)
            time.sleep(delay)
            attempt += 1

    @contextmanager
    def _stream(self, call: Call[Any]) -> Iterator[httpx.Response]:
        """Send a call whose answer is read as it arrives; retried only until the answer starts."""
        attempt = 0
        while True:
            try:
                response = self._http.send(self._build(call), stream=True)
            except httpx.TransportError as exc:
                delay = self._retry.after_error(call, attempt, exc)
                if delay is None:
                    raise connection_failed(self._options, call, exc) from exc
                reason = type(exc).__name__
            else:
                if response.is_success:
                    try:
                        yield response
                    except httpx.TransportError as exc:
                        raise connection_failed(self._options, call, exc) from exc
                    finally:
                        response.close()
                    return
                response.read()
                response.close()
                delay = self._retry.after_response(call, attempt, response)
                if delay is None:
                    raise failure(response)
                reason = f"HTTP {response.status_code}"
            self._retry.describe(call, attempt, delay, reason)
            time.sleep(delay)
            attempt += 1
