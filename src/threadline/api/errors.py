"""RFC 9457 problem details: one error shape for every failure a client can cause."""

from __future__ import annotations

import json
import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from threadline.observability.logging import current_request_id

PROBLEM_JSON = "application/problem+json"
# PostgreSQL refusing text: "invalid byte sequence" (NUL in text), "untranslatable character" (\u0000 in
# JSON), "invalid input syntax" (an unpaired surrogate escape in JSON; our other columns take no text).
_TEXT_SQLSTATES = frozenset({"22021", "22P05", "22P02"})
log = logging.getLogger("threadline.errors")


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


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _unstorable_text(error: BaseException | None) -> bool:
    """Whether a database refused text a client sent: PostgreSQL refuses U+0000 (SQLite takes it), and no
    driver encodes an unpaired surrogate ("\ud800" is a valid JSON escape) as UTF-8."""
    if isinstance(error, UnicodeEncodeError):
        return "surrogates not allowed" in str(error)
    return getattr(error, "sqlstate", None) in _TEXT_SQLSTATES


def _unstorable_text_problem() -> Response:
    return problem_response(
        422,
        "text must be valid Unicode without NUL characters (U+0000) or unpaired surrogates",
        # A type of its own: the OpenAPI document cannot state this of every string (docs/compatibility.md).
        type_slug="unstorable-text",
        errors=[],
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request, path: str | None = None) -> list[str]:
    """The methods some route serves at this path, asked of the router itself (each route matches one
    method; included routers do not list theirs)."""
    scope = dict(request.scope, path=path or request.url.path)
    allowed = []
    for method in _METHODS:
        probe = dict(scope, method=method)
        if any(route.matches(probe)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status, exc.detail, title=exc.title, type_slug=exc.type_slug, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for err in exc.errors():
            item = {k: err[k] for k in ("loc", "msg", "type") if k in err}
            if err.get("type") == "json_invalid":
                # pydantic says "JSON decode error" at ("body", <offset>): say what is wrong and where.
                offset = err.get("loc", ("body", None))[-1]
                reason = str((err.get("ctx") or {}).get("error") or "malformed")
                item = {
                    "loc": ["body"],
                    "msg": f"the body is not valid JSON: {reason} at character {offset}",
                    "type": "json_invalid",
                }
            elif "input" in err:
                item["input"] = finite(err["input"])
                if item["input"] != err["input"] and isinstance(err["input"], float):
                    item["msg"] = f"a non-finite number ({item['input']}) is not allowed: JSON numbers are finite"
            errors.append(item)
        return problem_response(422, _validation_detail(errors), type_slug="validation-error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # The router names only the first route whose path matched; a path has one route per method.
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        elif exc.status_code == 404 and detail == "Not Found":
            path = request.url.path
            if path.endswith("/") and path != "/" and _allowed_methods(request, path.rstrip("/")):
                detail = f"no such path: {path} (without the trailing slash: {path.rstrip('/')})"
            else:
                detail = f"no such path: {path}"
        return problem_response(exc.status_code, detail, headers=headers or None)

    @app.exception_handler(StatementError)
    async def _database(request: Request, exc: StatementError) -> Response:
        if _unstorable_text(exc.orig):
            return _unstorable_text_problem()
        log.exception("database error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal server error; the event was logged.")

    @app.exception_handler(UnicodeEncodeError)
    async def _unencodable(request: Request, exc: UnicodeEncodeError) -> Response:
        if _unstorable_text(exc):
            return _unstorable_text_problem()
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal server error; the event was logged.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal server error; the event was logged.")
