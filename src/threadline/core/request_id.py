"""The id of the request being handled: a context variable set by the request middleware, read by log
records and problem bodies."""

from __future__ import annotations

import contextvars
import re
import uuid

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("threadline_request_id", default=None)

# A client-sent X-Request-ID is kept only when it is this (no spaces, quotes or control characters that
# could forge log lines or headers).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def sane_request_id(value: str | None) -> str | None:
    """The client's X-Request-ID if it is 1-128 characters of [A-Za-z0-9._-], else None."""
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex
