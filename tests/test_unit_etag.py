"""Unit tests of `threadline.conversations.etag`: the entity tag of a conversation version and the RFC 9110
If-Match (strong) / If-None-Match (weak) comparisons over leniently parsed tag lists."""

from __future__ import annotations

import hashlib

import pytest

from threadline.conversations.etag import (
    EntityTag,
    PreconditionFailed,
    TagList,
    check_if_match,
    etag_for,
    if_match_passes,
    if_none_match_matches,
    parse_tag_list,
)

CID = "0123456789abcdef0123456789abcdef"
DIGEST = hashlib.sha256(CID.encode()).hexdigest()[:12]
CURRENT = f'"3-{DIGEST}"'


def test_etag_for_is_quoted_version_and_id_hash() -> None:
    assert etag_for(CID, 3) == CURRENT
    assert etag_for(CID, 4) == f'"4-{DIGEST}"'
    assert etag_for("f" * 32, 3) != CURRENT


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", TagList(False, ())),
        ("*", TagList(True, ())),
        ('"a"', TagList(False, (EntityTag('"a"'),))),
        ('W/"a"', TagList(False, (EntityTag('"a"', weak=True),))),
        ('"a", W/"b", *', TagList(True, (EntityTag('"a"'), EntityTag('"b"', weak=True)))),
        ('  "a"  ,\t"b"  ', TagList(False, (EntityTag('"a"'), EntityTag('"b"')))),
        ("abc", TagList(False, (EntityTag('"abc"'),))),  # a tag that lost its quotes
        ('W/""', TagList(False, (EntityTag('""', weak=True),))),
        ('"unterminated, "b"', TagList(False, (EntityTag('"b"'),))),  # a garbled member does not void the rest
        (' , ,"x"', TagList(False, (EntityTag('"x"'),))),
        ('"a" "b"', TagList(False, ())),  # no comma between members: not a list
    ],
)
def test_parse_tag_list(header: str, expected: TagList) -> None:
    assert parse_tag_list(header) == expected


@pytest.mark.parametrize(
    ("header", "passes"),
    [
        ("*", True),
        (CURRENT, True),
        (f'"0-x", {CURRENT}', True),
        (CURRENT[1:-1], True),  # without quotes
        (f"W/{CURRENT}", False),  # strong comparison: a weak tag never matches
        (f'"2-{DIGEST}"', False),
        ("", False),
        ('"garbage', False),
    ],
)
def test_if_match_is_a_strong_comparison(header: str, passes: bool) -> None:
    assert if_match_passes(header, CURRENT) is passes


@pytest.mark.parametrize(
    ("header", "matches"),
    [("*", True), (CURRENT, True), (f"W/{CURRENT}", True), ('W/"0-x", "1-y"', False), ("", False)],
)
def test_if_none_match_is_a_weak_comparison(header: str, matches: bool) -> None:
    assert if_none_match_matches(header, CURRENT) is matches


def test_check_if_match_without_a_header_passes() -> None:
    check_if_match(None, CID, CURRENT)
    check_if_match(CURRENT, CID, CURRENT)


def test_check_if_match_failure_names_the_current_tag() -> None:
    with pytest.raises(PreconditionFailed) as failed:
        check_if_match('"1-old"', CID, CURRENT)
    problem = failed.value
    assert (problem.status, problem.type_slug) == (412, "precondition-failed")
    assert problem.headers == {"ETag": CURRENT}
    assert problem.extra == {"etag": CURRENT}
    assert CID in problem.detail and CURRENT in problem.detail
