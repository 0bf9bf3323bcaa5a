"""RFC 9457 problem details: one error shape for every failure a client can cause."""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse

from threadline.core.request_id import current_request_id

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error with an HTTP status, raised by services and rendered as problem+json."""

    status: int = 500
    type_slug: str = "error"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        type_slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        if type_slug is not None:
            self.type_slug = type_slug
        self.title = title or HTTPStatus(self.status).phrase
        self.headers = headers or {}
        self.extra = extra


class NotFound(Problem):
    status = 404
    type_slug = "not-found"


class Conflict(Problem):
    status = 409
    type_slug = "conflict"


class Invalid(Problem):
    """422 with the per-field list a client needs to point at the bad field."""

    status = 422
    type_slug = "validation-error"

    def __init__(self, field: str, message: str, *, location: str = "body", input: Any = None) -> None:
        super().__init__(
            f"{field}: {message}",
            errors=[{"loc": [location, field], "msg": message, "type": "value_error", "input": input}],
        )


class Unauthorized(Problem):
    status = 401
    type_slug = "unauthorized"


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    slug = type_slug or phrase.lower().replace(" ", "-").replace("'", "")
    body: dict[str, Any] = {
        "type": f"https://threadline.dev/problems/{slug}",
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    # An extension member (RFC 9457 section 3.2): the id to quote when reporting this error.
    request_id = current_request_id()
    if request_id is not None:
        body.setdefault("request_id", request_id)
    return ProblemResponse(jsonable_encoder(body), status_code=status, headers=headers)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (UnicodeEncodeError, ValueError):
            # A problem may echo what the client sent: JSON text may hold lone surrogates ("\ud800"), which
            # UTF-8 cannot encode, and Python's JSON reader takes NaN, Infinity and 1e999, which JSON cannot
            # write. Non-finite numbers are echoed as their names, every non-ASCII character escaped.
            return json.dumps(finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, Infinity, -Infinity) replaced by its name as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
