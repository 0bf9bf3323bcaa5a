"""Identifiers: UUIDs written as 32 lowercase hex characters; input accepts hex or dashed."""

from __future__ import annotations

import uuid


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
