"""Unit tests of input strictness: repository and branch names (`threadline.conversations.validation`, the
rules of `git check-ref-format --branch`), the wire types of `threadline.core.wire` (strict booleans, ISO-only
date-times, 422 without echoed values), and `threadline.core.crypto.SecretBox`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from threadline.conversations.validation import (
    MAX_BRANCH_LENGTH,
    MAX_REPOSITORY_LENGTH,
    check_branch,
    check_repository,
)
from threadline.core.crypto import SecretBox
from threadline.core.wire import Bool, OptionalIsoDateTime, parse_without_echo

# -- repositories ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["owner/name", "group/sub/name", "a/b", "Org_1/repo.name-2", "_x/y", "o/" + "r" * (MAX_REPOSITORY_LENGTH - 2)],
)
def test_valid_repository(name: str) -> None:
    assert check_repository(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "1-512 characters"),
        ("o/" + "r" * (MAX_REPOSITORY_LENGTH - 1), "1-512 characters"),
        ("name", "of the form owner/name"),
        ("a/../b", "'..'"),
        ("a/b..c", "'..'"),
        ("a//b", "each part"),
        ("/a/b", "each part"),
        ("a/b/", "each part"),
        ("-a/b", "each part"),
        ("a/.b", "each part"),
        ("a b/c", "each part"),
        ("a/b;rm -rf", "each part"),
        ("a/$(x)", "each part"),
        ("ä/b", "each part"),
    ],
)
def test_invalid_repository(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_repository(name)


@pytest.mark.parametrize("name", ["owner/name\n", "owner\n/name"])
def test_repository_with_a_trailing_newline_is_invalid(name: str) -> None:
    with pytest.raises(ValueError, match="each part"):
        check_repository(name)


# -- branches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["main", "feature/x", "a.b", "v1.0", "x@y", "@a", "ünïcode", "a-", "a/b.lock.d", "b" * MAX_BRANCH_LENGTH],
)
def test_valid_branch(name: str) -> None:
    assert check_branch(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "1-255 characters"),
        ("b" * (MAX_BRANCH_LENGTH + 1), "1-255 characters"),
        ("-x", "must not start with '-'"),
        ("@", "must not be '@'"),
        ("a b", "must not contain spaces"),
        ("a\tb", "must not contain spaces"),
        ("a\x7fb", "must not contain spaces"),
        *[(f"a{c}b", "must not contain spaces") for c in "~^:?*[\\"],
        ("a..b", "must not contain '..'"),
        ("a@{1}", "must not contain '@{'"),
        ("/a", "must not start or end with '/'"),
        ("a/", "must not start or end with '/'"),
        ("a//b", "contain '//'"),
        ("a.", "must not end with '.'"),
        (".a", "no path component may start with '.'"),
        ("a/.b", "no path component may start with '.'"),
        ("a.lock", "no path component may end with '.lock'"),
        ("a.lock/b", "no path component may end with '.lock'"),
    ],
)
def test_invalid_branch(name: str, problem: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_branch(name)
    assert problem in str(refused.value)


def test_invalid_branch_lists_every_problem() -> None:
    with pytest.raises(ValueError) as refused:
        check_branch("-a..b.")
    assert str(refused.value) == (
        "not a valid git branch name: must not start with '-'; must not contain '..'; must not end with '.'"
    )


# -- wire types --------------------------------------------------------------------------------------


class Body(BaseModel):
    flag: Bool = False
    at: OptionalIsoDateTime = None
    api_key: str = ""


@pytest.mark.parametrize("flag", [True, False])
def test_bool_accepts_json_booleans(flag: bool) -> None:
    assert Body.model_validate({"flag": flag}).flag is flag


@pytest.mark.parametrize("flag", ["yes", "true", 0, 1, 1.0, None])
def test_bool_refuses_everything_else(flag: Any) -> None:
    with pytest.raises(ValidationError):
        Body.model_validate({"flag": flag})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)),
        ("2026-01-31T13:00:00+01:00", dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)),
        (None, None),
    ],
)
def test_date_time_accepts_iso_text(text: str | None, expected: dt.datetime | None) -> None:
    assert Body.model_validate({"at": text}).at == expected


@pytest.mark.parametrize("value", [0, 1700000000, 0.5, "0.5", "1700000000", " -1e3 ", ".5", "+7"])
def test_date_time_refuses_numbers(value: Any) -> None:
    with pytest.raises(ValidationError, match="must be an ISO 8601 date-time"):
        Body.model_validate({"at": value})


def test_date_time_refuses_text_that_is_not_a_time() -> None:
    with pytest.raises(ValidationError) as refused:
        Body.model_validate({"at": "yesterday"})
    assert "ISO 8601" not in str(refused.value)  # pydantic's own datetime error


def test_parse_without_echo_returns_the_model() -> None:
    assert parse_without_echo(Body, b'{"flag": true, "api_key": "sk"}') == Body(flag=True, api_key="sk")


def test_parse_without_echo_never_echoes_values() -> None:
    with pytest.raises(RequestValidationError) as refused:
        parse_without_echo(Body, b'{"flag": "sk-very-secret", "api_key": 5}')
    errors = refused.value.errors()
    assert [e["loc"] for e in errors] == [("body", "flag"), ("body", "api_key")]
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)
    assert "sk-very-secret" not in repr(errors)


def test_parse_without_echo_of_broken_json() -> None:
    with pytest.raises(RequestValidationError) as refused:
        parse_without_echo(Body, b'{"api_key": "sk-secret"')
    assert [e["type"] for e in refused.value.errors()] == ["json_invalid"]
    assert "sk-secret" not in repr(refused.value.errors())


# -- SecretBox ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", ["", "sk-123", "ünïcödé ✓", "x" * 10_000])
def test_secret_box_round_trip(plaintext: str) -> None:
    box = SecretBox("server-secret")
    token = box.encrypt(plaintext)
    assert plaintext not in token or plaintext == ""
    assert SecretBox("server-secret").decrypt(token) == plaintext


def test_secret_box_encryption_is_randomised() -> None:
    box = SecretBox("s")
    assert box.encrypt("same") != box.encrypt("same")


@pytest.mark.parametrize("token", ["garbage", "", "gAAAAA"])
def test_secret_box_refuses_garbage(token: str) -> None:
    with pytest.raises(ValueError, match="cannot be decrypted with this server secret"):
        SecretBox("s").decrypt(token)


def test_secret_box_refuses_another_secret() -> None:
    token = SecretBox("one").encrypt("sk-123")
    with pytest.raises(ValueError, match="cannot be decrypted with this server secret"):
        SecretBox("two").decrypt(token)
