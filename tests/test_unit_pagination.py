"""Unit tests (no server, no database) of `threadline.core.pagination`: signed page tokens (round trip, wrong
secret, tampering, wrong kind/sort/filters, garbage), the filters fingerprint, and the keyset condition
`keyset` adds to a query (checked on the compiled SQL text)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, select

from threadline.core.pagination import (
    BadPageToken,
    PageCursor,
    decode_page_token,
    encode_page_token,
    filters_fingerprint,
    keyset,
)

SECRET = "server-secret"
KEY = ["2025-01-01T12:00:00+00:00", "0" * 31 + "1"]
ISSUED_ELSEWHERE = "page_id is not a token this server issued"


def _token(**overrides: Any) -> str:
    values: dict[str, Any] = {"secret": SECRET, "kind": "conversations", "sort": "CREATED_AT", "fingerprint": "f1"}
    values.update(overrides)
    return encode_page_token(values["secret"], values["kind"], values["sort"], values["fingerprint"], KEY)


def _decode(token: str, **overrides: Any) -> PageCursor:
    values: dict[str, Any] = {"secret": SECRET, "kind": "conversations", "sort": "CREATED_AT", "fingerprint": "f1"}
    values.update(overrides)
    return decode_page_token(values["secret"], token, values["kind"], values["sort"], values["fingerprint"])


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- tokens ----------------------------------------------------------------------------------------


def test_round_trip() -> None:
    assert _decode(_token()) == PageCursor(sort="CREATED_AT", key=KEY)


@pytest.mark.parametrize("key", [[], [None], [1, 2.5, "x", True], ["ünïcödé", {"a": [1]}]])
def test_round_trip_of_any_json_key(key: list[Any]) -> None:
    token = encode_page_token(SECRET, "events", "TIMESTAMP", "f", key)
    assert decode_page_token(SECRET, token, "events", "TIMESTAMP", "f") == PageCursor("TIMESTAMP", key)


def test_token_is_url_safe_without_padding() -> None:
    for n in range(6):  # payload lengths that need 0, 1 and 2 padding characters
        token = encode_page_token(SECRET, "k" * n, "s", "f", [])
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert decode_page_token(SECRET, token, "k" * n, "s", "f").key == []


def test_token_is_deterministic() -> None:
    assert _token() == _token()
    assert _token() != _token(secret="other")


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(BadPageToken, match=ISSUED_ELSEWHERE):
        _decode(_token(secret="another-server"))


def test_tampered_payload_is_refused() -> None:
    raw = _raw(_token())
    sig, payload = raw[:12], json.loads(raw[12:])
    payload["c"] = ["2030-01-01T00:00:00+00:00", "f" * 32]
    forged = _b64(sig + json.dumps(payload, separators=(",", ":")).encode())
    with pytest.raises(BadPageToken, match=ISSUED_ELSEWHERE):
        _decode(forged)


@pytest.mark.parametrize("position", [0, 5, 11])
def test_tampered_signature_is_refused(position: int) -> None:
    raw = bytearray(_raw(_token()))
    raw[position] ^= 0x01
    with pytest.raises(BadPageToken, match=ISSUED_ELSEWHERE):
        _decode(_b64(bytes(raw)))


@pytest.mark.parametrize("cut", [1, 4, 13])
def test_truncated_token_is_refused(cut: int) -> None:
    token = _token()
    with pytest.raises(BadPageToken, match=ISSUED_ELSEWHERE):
        _decode(token[:-cut] if cut < 13 else token[:cut])


@pytest.mark.parametrize("token", ["", "a", "abc", "!!!!", "é", "\x00", "====", "AAAA", "A" * 16, "%2F%2F"])
def test_garbage_is_refused_cleanly(token: str) -> None:
    with pytest.raises(BadPageToken, match=ISSUED_ELSEWHERE) as refused:
        _decode(token)
    assert refused.value.status == 400 and refused.value.type_slug == "bad-page-token"


def test_wrong_kind_is_refused() -> None:
    with pytest.raises(BadPageToken, match="page_id was issued for another listing"):
        _decode(_token(kind="events"))


@pytest.mark.parametrize("overrides", [{"sort": "CREATED_AT_DESC"}, {"fingerprint": "f2"}])
def test_wrong_sort_or_filters_are_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(BadPageToken, match="issued for other filters or another sort_order"):
        _decode(_token(), **overrides)


# -- filters_fingerprint ------------------------------------------------------------------------------


def test_fingerprint_ignores_none_values_and_key_order() -> None:
    a = filters_fingerprint({"title__contains": "x", "tag": ["a:b"], "created_at__gte": None})
    b = filters_fingerprint({"tag": ["a:b"], "title__contains": "x"})
    assert a == b
    assert len(a) == 16 and int(a, 16) >= 0


def test_fingerprint_of_no_filters() -> None:
    assert filters_fingerprint({}) == filters_fingerprint({"a": None}) == "44136fa355b3678a"  # sha256("{}")


@pytest.mark.parametrize(
    "other",
    [
        {"title__contains": "y"},
        {"title__contains": "x", "tag": "a"},
        {"title_contains": "x"},
        {"title__contains": ["x"]},
        {"title__contains": ""},
    ],
)
def test_fingerprint_tells_filters_apart(other: dict[str, Any]) -> None:
    assert filters_fingerprint({"title__contains": "x"}) != filters_fingerprint(other)


def test_fingerprint_reads_non_json_values_as_text() -> None:
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    assert filters_fingerprint({"after": when}) == filters_fingerprint({"after": str(when)})


# -- keyset ------------------------------------------------------------------------------------------

items = Table("items", MetaData(), Column("id", String, primary_key=True), Column("at", DateTime(timezone=True)))
AT = "2025-01-01T12:00:00+00:00"


def _sql(descending: bool, after: list[Any] | None) -> tuple[str, dict[str, Any]]:
    compiled = keyset(select(items.c.id), items.c.at, items.c.id, descending=descending, after=after).compile()
    return " ".join(str(compiled).split()), compiled.params


def test_keyset_first_page_only_orders() -> None:
    assert _sql(False, None) == ("SELECT items.id FROM items ORDER BY items.at ASC, items.id ASC", {})
    assert _sql(True, None) == ("SELECT items.id FROM items ORDER BY items.at DESC, items.id DESC", {})


def test_keyset_ascending_starts_right_after_the_key() -> None:
    sql, params = _sql(False, [AT, "abc"])
    assert sql == (
        "SELECT items.id FROM items WHERE items.at >= :at_1 AND (items.at > :at_2 OR items.id > :id_1) "
        "ORDER BY items.at ASC, items.id ASC"
    )
    when = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
    assert params == {"at_1": when, "at_2": when, "id_1": "abc"}


def test_keyset_descending_starts_right_after_the_key() -> None:
    sql, params = _sql(True, ["2025-01-01T13:00:00+01:00", "abc"])
    assert sql == (
        "SELECT items.id FROM items WHERE items.at <= :at_1 AND (items.at < :at_2 OR items.id < :id_1) "
        "ORDER BY items.at DESC, items.id DESC"
    )
    assert params["at_1"] == dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
    assert params["id_1"] == "abc"


def test_keyset_key_time_must_be_iso() -> None:
    with pytest.raises(ValueError):
        _sql(False, ["yesterday", "abc"])
