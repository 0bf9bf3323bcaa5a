"""Structured logs: one JSON object per line (or plain text), every record tagged with its request id.

The request id lives in a context variable set by the request middleware, so any record logged while a
request is handled (by Threadline, SQLAlchemy, httpx...) carries it, and so does every problem+json body.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from threadline.core.request_id import current_request_id

# Attributes every LogRecord has; anything else on a record was passed with `extra=` and is emitted.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime", "taskName"}
)
# The fields of a request's log line, in this order, after time, level, logger and message.
REQUEST_FIELDS = ("request_id", "method", "route", "path", "status", "duration_ms")
# Not emitted as extras: the standard ones, the request fields (emitted above when set), uvicorn's
# ANSI-coloured copy of its message.
_SKIPPED = _STANDARD_ATTRIBUTES | set(REQUEST_FIELDS) | {"color_message", "rid"}
FORMATS = ("json", "text")


class RequestIdFilter(logging.Filter):
    """Put the current request id on every record that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request fields, any `extra`, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        for name, value in vars(record).items():
            if name not in _SKIPPED and name not in entry and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.rid = f" [{request_id}]" if request_id else ""
        return super().format(record)


def make_handler(fmt: str = "json", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler with the given format and the request-id filter."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(fmt: str = "json", level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send every log record of the process (ours, uvicorn's, libraries') to one handler on the root logger."""
    handler = make_handler(fmt, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # uvicorn's own loggers are left without handlers and propagate here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Except its access lines: Threadline's middleware writes one per request, with the request id (a second
    # line from uvicorn doubled the log and cost each request a formatted record; uvicorn writes them when
    # anything would handle them, which a worker's logging set up after uvicorn's made the case).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    return handler
