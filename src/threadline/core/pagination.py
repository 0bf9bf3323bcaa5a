"""Opaque, signed keyset page tokens.

A token carries the sort key of the last item served, the sort order and a fingerprint of the
filters it was issued for. Keyset paging never skips or repeats rows when others are inserted or
deleted between pages; the signature makes a garbled or forged token a clean 4xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_

from threadline.core.errors import Problem

_SIG_BYTES = 12


class BadPageToken(Problem):
    status = 400
    type_slug = "bad-page-token"


@dataclass(frozen=True)
class PageCursor:
    sort: str
    key: list[Any]


def filters_fingerprint(filters: Mapping[str, Any]) -> str:
    canonical = json.dumps(
        {k: v for k, v in sorted(filters.items()) if v is not None}, default=str, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(secret: str, kind: str, sort: str, fingerprint: str, key: list[Any]) -> str:
    payload = json.dumps({"k": kind, "s": sort, "f": fingerprint, "c": key}, separators=(",", ":")).encode()
    sig = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_SIG_BYTES]
    return base64.urlsafe_b64encode(sig + payload).decode().rstrip("=")


def decode_page_token(secret: str, token: str, kind: str, sort: str, fingerprint: str) -> PageCursor:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError) as exc:
        raise BadPageToken("page_id is not a token this server issued") from exc
    sig, payload = raw[:_SIG_BYTES], raw[_SIG_BYTES:]
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:_SIG_BYTES]
    if len(sig) != _SIG_BYTES or not hmac.compare_digest(sig, expected):
        raise BadPageToken("page_id is not a token this server issued")
    data = json.loads(payload)
    if data.get("k") != kind:
        raise BadPageToken("page_id was issued for another listing")
    if data.get("s") != sort or data.get("f") != fingerprint:
        raise BadPageToken("page_id was issued for other filters or another sort_order; start again without it")
    return PageCursor(sort=data["s"], key=list(data["c"]))


def keyset(
    query: Select[Any],
    column: ColumnElement[Any],
    id_column: ColumnElement[Any],
    *,
    descending: bool,
    after: list[Any] | None,
) -> Select[Any]:
    """Order by (column, id) and, given the key [column value as ISO time, id] of the last item served,
    start right after it. The id breaks ties, so items sharing a time are never split badly."""
    if after is not None:
        value, last_id = datetime.fromisoformat(after[0]), after[1]
        if descending:
            query = query.where(or_(column < value, and_(column == value, id_column < last_id)))
        else:
            query = query.where(or_(column > value, and_(column == value, id_column > last_id)))
    if descending:
        return query.order_by(column.desc(), id_column.desc())
    return query.order_by(column.asc(), id_column.asc())
