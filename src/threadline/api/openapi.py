"""The published OpenAPI documents our errors as they are sent: `application/problem+json`.

FastAPI documents a 422 `HTTPValidationError` (`{"detail": [...]}` as application/json) that this server
never sends, and no other error at all. Here every operation gets:

- its 422 (when it has one) as `ValidationProblem` (a `Problem` with the per-field `errors` list);
- every other documented 4xx/5xx without a body description as `Problem`;
- a `default` response, `Problem`, for the errors any operation may answer (401, 404, 413, 429, 500...).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from threadline.core.errors import PROBLEM_JSON


class ProblemSchema(BaseModel):
    """RFC 9457 problem details. Some problems add members (`errors`, `etag`, `limit`, `current`...).
    (The schema of what `core.errors.Problem` renders; published as `Problem`.)"""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="A URI naming the kind of problem")
    title: str
    status: int
    detail: str
    request_id: str | None = Field(default=None, description="The request's id, as in the X-Request-ID response header")


class FieldError(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ValidationProblemSchema(ProblemSchema):
    """422: what was wrong with which part of the request."""

    model_config = ConfigDict(extra="allow", title="ValidationProblem")

    errors: list[FieldError] = Field(default_factory=list)


_REF = "#/components/schemas/{model}"
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def _content(name: str) -> dict[str, Any]:
    return {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model=name)}}}


def document_problems(spec: dict[str, Any]) -> dict[str, Any]:
    """Rewrite an OpenAPI document (in place) so its error responses are the problem+json we send."""
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    for component, model in (
        ("Problem", ProblemSchema),
        ("FieldError", FieldError),
        ("ValidationProblem", ValidationProblemSchema),
    ):
        definition = model.model_json_schema(ref_template=_REF)
        for name, nested in definition.pop("$defs", {}).items():
            schemas.setdefault(name, nested)
        schemas[component] = definition
    for path_item in spec.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            for code, response in responses.items():
                if code[:1] not in ("4", "5"):
                    continue
                if code == "422":
                    response["content"] = _content("ValidationProblem")
                    response["description"] = "Validation error"
                elif not response.get("content"):
                    response["content"] = _content("Problem")
            responses.setdefault(
                "default", {"description": "Error (RFC 9457 problem details)", "content": _content("Problem")}
            )
    text = repr(spec.get("paths", {}))
    for name in _FASTAPI_VALIDATION:
        if f"/{name}'" not in text:
            schemas.pop(name, None)
    return spec


def state_tag_limits(spec: dict[str, Any], max_tags: int, max_key_length: int, max_value_length: int) -> None:
    """State the configured tag limits (THREADLINE_MAX_TAG*) on the request bodies that set tags.

    Settings, not constants: so stated here, on the document of this server, and not in the models. A PATCH
    is checked against the merged tags, so one within these limits can still exceed `max_tags` in total.
    """
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("AppConversationStartRequest", "AppConversationUpdateRequest"):
        tags = schemas.get(name, {}).get("properties", {}).get("tags")
        if tags is None:
            continue
        for variant in tags.get("anyOf", [tags]):
            if variant.get("type") != "object":
                continue
            variant["maxProperties"] = max_tags
            variant["propertyNames"] = {"minLength": 1, "maxLength": max_key_length}
            values = variant.get("additionalProperties", {})
            for value in values.get("anyOf", [values]):
                if value.get("type") == "string":
                    value["maxLength"] = max_value_length


def install_problem_docs(app: FastAPI, tag_limits: tuple[int, int, int] | None = None) -> None:
    """Make `app.openapi()` (and so /openapi.json) return the rewritten document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = document_problems(generate())
            if tag_limits is not None:
                state_tag_limits(spec, *tag_limits)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
