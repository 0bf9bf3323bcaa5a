"""Types the wire is strict about, where pydantic's lax mode would guess.

- booleans are JSON `true`/`false` only (lax mode takes "yes", 0, 1.0);
- date-times are ISO 8601 text (lax mode reads "0.5" or "1700000000" as a Unix time, which the schema,
  `format: date-time`, does not allow);
- a body that may hold a secret is validated without its values in the 422 (`parse_without_echo`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, StrictBool, TypeAdapter, ValidationError
from starlette.responses import Response

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")

Bool = StrictBool
# Page tokens are unpadded URL-safe base64 (pagination.py). A token of that shape that this server did not
# issue (or issued for other filters) is still a 400, as an unknown id is a 404.
PAGE_ID_SCHEMA: dict[str, Any] = {"pattern": r"^[A-Za-z0-9_-]*$"}
PAGE_ID_TITLE = "Optional next_page_id from the previously returned page"


def _iso_only(value: Any) -> Any:
    if (isinstance(value, int | float) and not isinstance(value, bool)) or (
        isinstance(value, str) and _NUMBER.match(value)
    ):
        raise ValueError("must be an ISO 8601 date-time such as 2026-01-31T12:00:00Z, not a number")
    return value


# Optional as a whole (not `IsoDateTime | None`): metadata on one member of a union is lost on parameters.
OptionalIsoDateTime = Annotated[datetime | None, BeforeValidator(_iso_only)]


Model = TypeVar("Model", bound=BaseModel)


def parse_without_echo(model: type[Model], raw: bytes) -> Model:
    """Validate a request body without ever echoing its values in the 422: the body may hold an API key
    or a secret. Routes that use it publish the model's schema with `openapi_extra`."""
    from fastapi.exceptions import RequestValidationError  # here: the wire types are used by the SDK too

    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestValidationError(errors) from None


# Aware UTC datetimes serialise as ISO-8601 with a trailing Z.
UTCTimestamp = datetime


class Success(BaseModel):
    """What an action without a result of its own answers (as upstream)."""

    success: bool = True


def json_response(content: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The model as JSON, serialised once. A handler that returns a model has FastAPI dump it to Python,
    validate it again against the response model and encode that; the response model stays declared on
    the route for the OpenAPI document, and what goes out is the same fields."""
    return Response(content.model_dump_json(), status_code=status_code, headers=headers, media_type=_JSON)


def json_adapter_response(
    adapter: TypeAdapter[Any], content: Any, *, headers: dict[str, str] | None = None
) -> Response:
    """Data as JSON, serialised once by `adapter` (a TypeAdapter built once: of a list of models, or of the
    plain data of a page, `conversations.mapping.PAGE_JSON`)."""
    return Response(adapter.dump_json(content), headers=headers, media_type=_JSON)


_JSON = "application/json"
