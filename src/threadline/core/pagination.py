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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Integer, Select, and_, bindparam, or_

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


def after_key(
    column: ColumnElement[Any], id_column: ColumnElement[Any], value: Any, last_id: Any, descending: bool
) -> ColumnElement[bool]:
    """The rows after the key (value, last_id) in the order (column, id), ascending or descending.

    Written `column <= value AND (column < value OR id < last_id)` (descending) rather than the plain
    `column < value OR (column = value AND id < last_id)`: with bound values, SQLite's planner takes no range
    from the OR alone and walks the index from the start of the listing to the key (a page after 10,000
    conversations: 3.6 ms instead of 0.7 ms); the bound alongside gives it, and PostgreSQL, the range."""
    if descending:
        return and_(column <= value, or_(column < value, id_column < last_id))
    return and_(column >= value, or_(column > value, id_column > last_id))


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
        query = query.where(after_key(column, id_column, datetime.fromisoformat(after[0]), after[1], descending))
    if descending:
        return query.order_by(column.desc(), id_column.desc())
    return query.order_by(column.asc(), id_column.asc())


@dataclass(frozen=True)
class Pager:
    """The keyset paging of one listing, written once for every search: which listing (`kind`, so a token
    of one listing is refused by another), its order, the fingerprint of its filters, and the (time, id)
    columns it pages over. `query` starts a SELECT right after the page a token points at; `split` cuts
    the rows fetched into the page and the next page's token."""

    secret: str
    kind: str
    sort: str
    fingerprint: str
    column: Column[Any]
    id_column: Column[Any]
    descending: bool

    def query(self, query: Select[Any], page_id: str | None, limit: int) -> Select[Any]:
        """`query` ordered, started after `page_id` (BadPageToken for a token not of this listing, order
        and filters), and limited to one row more than a page (to tell whether another page follows)."""
        after = decode_page_token(self.secret, page_id, self.kind, self.sort, self.fingerprint).key if page_id else None
        return keyset(query, self.column, self.id_column, descending=self.descending, after=after).limit(limit + 1)

    def after(self, page_id: str | None) -> dict[str, Any]:
        """The parameters of a statement from `statement()` that start it after `page_id` (empty for the first
        page); BadPageToken for a token not of this listing, order and filters."""
        if not page_id:
            return {}
        key = decode_page_token(self.secret, page_id, self.kind, self.sort, self.fingerprint).key
        try:
            return {"after_value": datetime.fromisoformat(key[0]), "after_id": key[1]}
        except (TypeError, ValueError, IndexError) as exc:
            raise BadPageToken("page_id is not a token this server issued") from exc

    def statement(self, query: Select[Any], *, after: bool) -> Select[Any]:
        """What `query()` builds, with the position as the bound parameters `after_value` and `after_id`
        (see `after()`) and the number of rows as `rows` (`limit + 1`) instead of values: built once per
        shape and kept, such a statement is not built again nor its compiled form looked up by walking it,
        per request."""
        c, i = self.column, self.id_column
        if after:
            value, last_id = bindparam("after_value", type_=c.type), bindparam("after_id", type_=i.type)
            query = query.where(after_key(c, i, value, last_id, self.descending))
        ordered = query.order_by(c.desc(), i.desc()) if self.descending else query.order_by(c.asc(), i.asc())
        return ordered.limit(bindparam("rows", type_=Integer))

    def split(self, rows: Sequence[Any], limit: int) -> tuple[list[Any], str | None]:
        """The page (at most `limit` rows) and the token of the next one (None when this is the last)."""
        page = list(rows[:limit])
        if len(rows) <= limit or not page:
            return page, None
        last = page[-1]
        return page, self.token(getattr(last, self.column.key), getattr(last, self.id_column.key))

    def token(self, value: datetime, last_id: str) -> str:
        """The token of the page that starts right after the item with this key (its time and id)."""
        return encode_page_token(self.secret, self.kind, self.sort, self.fingerprint, [value.isoformat(), last_id])
