"""Exceptions of the Threadline client: every error answer becomes one, carrying the problem+json fields.

Threadline answers errors as RFC 9457 problem details (`type`, `title`, `status`, `detail`, plus extra
members such as `errors` or `etag`). Servers that follow the upstream app server answer FastAPI's
`{"detail": ...}` (a string, or a list of validation errors) or even plain text; those are mapped to the
same exceptions, with `type` "about:blank" and the title taken from the HTTP status.
"""

from __future__ import annotations

import email.utils
import json
import time
from http import HTTPStatus
from typing import Any

import httpx

__all__ = [
    "AgentUnavailable",
    "BadRequest",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "Gone",
    "InvalidResponse",
    "NotFound",
    "PreconditionFailed",
    "RateLimited",
    "SandboxLimitReached",
    "ServerError",
    "StartFailed",
    "StartTimeout",
    "ThreadlineError",
    "Unauthorized",
    "UnprocessableEntity",
    "error_from_response",
    "parse_retry_after",
]

_PROBLEM_MEMBERS = ("type", "title", "status", "detail")
_MAX_TEXT_DETAIL = 500


class ThreadlineError(Exception):
    """Base of every error the client raises.

    `status` is the HTTP status (None when no answer arrived); `type`, `title` and `detail` are the
    problem+json members; `extra` holds any other members of the problem (e.g. `limit`, `sandbox_status`).
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str = "about:blank",
        title: str | None = None,
        extra: dict[str, Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.title = title if title is not None else _phrase(status)
        self.extra: dict[str, Any] = extra or {}
        self.response = response

    @property
    def request_id(self) -> str | None:
        """The id the server gave this request (the problem's `request_id`), to quote when reporting it."""
        value = self.extra.get("request_id")
        return value if isinstance(value, str) else None

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers if self.response is not None else httpx.Headers()

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        return f"{self.status} {self.title}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, detail={self.detail!r})"


class BadRequest(ThreadlineError):
    """400, e.g. a garbled or reused page token."""


class Unauthorized(ThreadlineError):
    """401: no API key, or an unknown or revoked one."""


class Forbidden(ThreadlineError):
    """403."""


class NotFound(ThreadlineError):
    """404: missing, or another user's (the two are indistinguishable)."""


class Conflict(ThreadlineError):
    """409, e.g. the conversation's sandbox is paused, or an Idempotency-Key is still in flight."""


class Gone(ThreadlineError):
    """410, e.g. the conversation's sandbox no longer exists."""


class PreconditionFailed(ThreadlineError):
    """412: If-Match did not match. `etag` is the current entity tag (from the body or the ETag header)."""

    @property
    def etag(self) -> str | None:
        value = self.extra.get("etag")
        if isinstance(value, str):
            return value
        return self.headers.get("ETag")


class UnprocessableEntity(ThreadlineError):
    """422. `errors` is the per-field list (`loc`, `msg`, `type`) when the server gave one."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        value = self.extra.get("errors")
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


class RateLimited(ThreadlineError):
    """429. `retry_after` is the seconds the server asked to wait (None when it did not say)."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


class SandboxLimitReached(RateLimited):
    """429 from Threadline's per-user sandbox cap: pause or delete a sandbox first (`limit`, `current`)."""

    @property
    def limit(self) -> int | None:
        value = self.extra.get("limit")
        return value if isinstance(value, int) else None

    @property
    def current(self) -> int | None:
        value = self.extra.get("current")
        return value if isinstance(value, int) else None


class ServerError(ThreadlineError):
    """5xx."""


class AgentUnavailable(ServerError):
    """503 `agent-unavailable`: the conversation's agent server did not answer; try again."""


class ConnectionFailed(ThreadlineError):
    """No answer: the server could not be reached or the connection broke (after the retries allowed)."""


class InvalidResponse(ThreadlineError):
    """A success answer whose body is not what the API promises."""


class StartFailed(ThreadlineError):
    """A start task ended in ERROR; `task` is the final AppConversationStartTask."""

    def __init__(self, task: Any) -> None:
        super().__init__(
            f"start task {task.id} failed: {task.detail or 'no detail given'}", title="Start failed", extra={}
        )
        self.task = task


class StartTimeout(ThreadlineError, TimeoutError):
    """The start task did not end in time; `task` is its last known state (the start goes on server-side)."""

    def __init__(self, task: Any, timeout: float) -> None:
        super().__init__(
            f"start task {task.id} still {task.status} after {timeout:g} s", title="Start timed out", extra={}
        )
        self.task = task


_BY_STATUS: dict[int, type[ThreadlineError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    422: UnprocessableEntity,
    429: RateLimited,
}
_BY_TYPE_SLUG: dict[str, type[ThreadlineError]] = {
    "agent-unavailable": AgentUnavailable,
    "sandbox-limit-reached": SandboxLimitReached,
}


def _phrase(status: int | None) -> str:
    if status is None:
        return "Error"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _summarise_validation(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def error_class(status: int, type_: str) -> type[ThreadlineError]:
    slug = type_.rstrip("/").rsplit("/", 1)[-1]
    if slug in _BY_TYPE_SLUG and type_ != "about:blank":
        return _BY_TYPE_SLUG[slug]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ThreadlineError


def error_from_response(response: httpx.Response) -> ThreadlineError:
    """The exception for an error answer: problem+json, FastAPI `{"detail": ...}`, or any other body."""
    status = response.status_code
    type_, title, detail = "about:blank", None, None
    extra: dict[str, Any] = {}
    body: Any = None
    try:
        body = json.loads(response.content) if response.content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("type"), str):
            type_ = body["type"]
        if isinstance(body.get("title"), str):
            title = body["title"]
        raw_detail = body.get("detail")
        extra = {k: v for k, v in body.items() if k not in _PROBLEM_MEMBERS}
        if isinstance(raw_detail, str):
            detail = raw_detail
        elif isinstance(raw_detail, list):
            # FastAPI's validation answer: the per-field list is the detail itself.
            extra.setdefault("errors", raw_detail)
            detail = _summarise_validation(raw_detail)
        elif raw_detail is not None:
            detail = json.dumps(raw_detail)
    elif response.content:
        text = response.text.strip()
        detail = text[:_MAX_TEXT_DETAIL] + ("…" if len(text) > _MAX_TEXT_DETAIL else "")
    if not detail:
        detail = title or _phrase(status)
    cls = error_class(status, type_)
    return cls(detail, status=status, type=type_, title=title, extra=extra, response=response)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
