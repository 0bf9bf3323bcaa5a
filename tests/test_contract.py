"""Our wire models must not drift from the reference OpenAPI of the upstream app server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from threadline.api.app import create_app
from threadline.config import Settings

# The upstream app server's OpenAPI (openhands-ai 1.11), copied in: a user's clone has no sibling folders.
REFERENCE = Path(__file__).resolve().parent / "data" / "openhands-app-server-v1.openapi.json"
COMPAT_DOC = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"
CHECKED = ["AppConversation", "AppConversationUpdateRequest", "MetricsSnapshot", "TokenUsage"]
ENUMS = ["ProviderType", "ConversationTrigger", "SandboxStatus", "ConversationExecutionStatus"]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        pytest.fail(f"reference OpenAPI not found at {REFERENCE}")
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data["components"]["schemas"]


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(home=tmp_path_factory.mktemp("home"), secret_key="x"))
    schemas: dict[str, Any] = app.openapi()["components"]["schemas"]
    return schemas


def _resolve(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _shape(schemas: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A comparable description of a property's type: type names, enums, nullability; not titles."""
    schema = _resolve(schemas, schema)
    if "anyOf" in schema:
        return sorted(json.dumps(_shape(schemas, s), sort_keys=True) for s in schema["anyOf"])
    if "enum" in schema:
        return {"enum": sorted(schema["enum"])}
    if schema.get("type") == "array":
        return {"array": _shape(schemas, schema.get("items", {}))}
    if schema.get("type") == "object" and "properties" in schema:
        return {"object": sorted(schema["properties"])}
    if schema.get("type") == "object":
        return {"map": _shape(schemas, schema.get("additionalProperties", {}))}
    return {"type": schema.get("type"), "format": schema.get("format")}


def _extra_fields_documented() -> str:
    return COMPAT_DOC.read_text() if COMPAT_DOC.exists() else ""


@pytest.mark.parametrize("name", CHECKED)
def test_model_matches_reference(reference: dict[str, Any], ours: dict[str, Any], name: str) -> None:
    theirs = reference[name]
    mine = ours[name]
    missing = set(theirs["properties"]) - set(mine["properties"])
    assert not missing, f"{name} lacks reference fields {missing}"
    doc = _extra_fields_documented()
    for extra in set(mine["properties"]) - set(theirs["properties"]):
        assert f"`{name}.{extra}`" in doc, f"extra field {name}.{extra} must be listed in docs/compatibility.md"
    for prop, schema in theirs["properties"].items():
        assert _shape(reference, schema) == _shape(ours, mine["properties"][prop]), f"{name}.{prop} drifted"
        if "default" in schema:
            assert mine["properties"][prop].get("default") == schema["default"], f"{name}.{prop} default"


@pytest.mark.parametrize("name", ENUMS)
def test_enum_matches_reference(reference: dict[str, Any], ours: dict[str, Any], name: str) -> None:
    assert reference[name]["enum"] == ours[name]["enum"]
