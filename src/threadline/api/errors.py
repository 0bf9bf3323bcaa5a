"""The app's error handlers: every failure a client can cause answers an RFC 9457 problem (the types are
in `threadline.core.errors`)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from threadline.console.pages import is_console_request, not_found
from threadline.core.errors import Problem, finite, problem_response

# PostgreSQL refusing text: "invalid byte sequence" (NUL in text), "untranslatable character" (\u0000 in
# JSON), "invalid input syntax" (an unpaired surrogate escape in JSON; our other columns take no text).
_TEXT_SQLSTATES = frozenset({"22021", "22P05", "22P02"})
log = logging.getLogger("threadline.errors")


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _unstorable_text(error: BaseException | None) -> bool:
    """Whether a database refused text a client sent: PostgreSQL refuses U+0000 (SQLite takes it), and no
    driver encodes an unpaired surrogate ("\ud800" is a valid JSON escape) as UTF-8. The driver's error may
    wrap the cause (asyncpg: a DataError caused by the UnicodeEncodeError of an array parameter)."""
    for _ in range(5):
        if error is None:
            return False
        if isinstance(error, UnicodeEncodeError):
            return "surrogates not allowed" in str(error)
        if getattr(error, "sqlstate", None) in _TEXT_SQLSTATES:
            return True
        error = error.__cause__
    return False


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
            if is_console_request(request.method, path, request.headers.get("accept", "")):
                # A browser on a path outside the API: the console's 404 page, not problem+json.
                return not_found(path)
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

    # No handler for other exceptions: the request middleware (observability) catches them, logs them
    # with the request id and answers the 500 problem, before any handler here could see them.
