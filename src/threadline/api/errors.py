"""RFC 9457 problem details: one error shape for every failure a client can cause."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

PROBLEM_JSON = "application/problem+json"
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
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _validation_detail(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


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
            if "input" in err:
                item["input"] = err["input"]
            errors.append(item)
        return problem_response(422, _validation_detail(errors), type_slug="validation-error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "Internal server error; the event was logged.")
