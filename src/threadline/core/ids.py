"""Identifiers: UUIDs written as 32 lowercase hex characters; input accepts hex or dashed."""

from __future__ import annotations

import uuid

# What parse_id accepts, as the published OpenAPI states it (32 hex characters or a dashed UUID).
ID_PATTERN = r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
ID_SCHEMA = {"type": "string", "pattern": ID_PATTERN}


def id_list_schema(max_items: int) -> dict[str, object]:
    """`json_schema_extra` of a repeated id query parameter (the array's own schema is FastAPI's)."""
    return {"items": ID_SCHEMA, "maxItems": max_items}


class MalformedId(ValueError):
    pass


def new_id() -> str:
    return uuid.uuid4().hex


def parse_id(value: str) -> str:
    """Normalise a hex or dashed UUID to 32 lowercase hex characters, or raise MalformedId."""
    text = value.strip()
    if len(text) not in (32, 36):
        raise MalformedId(value)
    try:
        return uuid.UUID(text).hex
    except ValueError as exc:
        raise MalformedId(value) from exc
