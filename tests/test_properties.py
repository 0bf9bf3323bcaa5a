"""Property-based tests (Hypothesis) against the live server, on SQLite and PostgreSQL.

- PATCH `tags` is a JSON merge patch with limits: any sequence of patches leaves the conversation's tags
  equal to a plain dict the same patches were applied to (a rejected patch changes nothing), and the tag
  index behind `tag=` filters agrees after every step.
- Page tokens are keyset tokens: with conversations (or events) inserted at random positions between
  pages, paging never repeats an item and never skips one that existed when paging began, in any sort
  order, and every page is in order.
- Filter parsing: arbitrary text in every free-text filter is 200 or 422, never a 5xx; `tag` is split at
  the first ':' and needs a key; `title__contains` is a case-insensitive substring match where `%` and
  `_` match themselves; ids in `ids=` are accepted exactly when they name a UUID.

Examples are bounded and derandomized (the same examples every run), so a run takes seconds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer
from threadline.events.service import store_events

API = "/api/v1/app-conversations"
MAX_TAGS, MAX_KEY, MAX_VALUE = 50, 64, 512
SETTINGS = settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
_names = itertools.count()


def _fresh_user(server: LiveServer) -> tuple[Any, httpx.Client]:
    """Each example gets its own user, so examples never see each other's data."""
    user, key = server.user(f"prop-{next(_names)}-{uuid.uuid4().hex[:6]}")
    return user, server.client(key)


# Text JSON and every database can carry: no lone surrogates, and no NUL (PostgreSQL refuses it, which
# test_free_text_filters_never_fail covers on its own).
_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")

# -- PATCH tags -------------------------------------------------------------------------------------

_keys = st.one_of(
    st.sampled_from(["team", "env", "owner", "a:b", "ключ", "", "k" * MAX_KEY, "k" * (MAX_KEY + 1)]),
    st.from_regex(r"k[0-9]{1,2}", fullmatch=True),  # many distinct keys: the 50-tag limit gets reached
    st.text(_TEXT, min_size=0, max_size=8),
)
_values = st.one_of(
    st.sampled_from(["core", "", "x:y", "v" * MAX_VALUE, "v" * (MAX_VALUE + 1)]),
    st.text(_TEXT, max_size=10),
)
_patch = st.one_of(
    st.none(),  # "tags": null clears them all
    st.dictionaries(_keys, st.one_of(st.none(), _values), max_size=6),
    st.dictionaries(st.from_regex(r"k[0-9]{1,2}", fullmatch=True), _values, min_size=10, max_size=30),
)


def _merge(model: dict[str, str], patch: dict[str, str | None] | None) -> dict[str, str] | None:
    """The documented semantics; None when the result breaks a limit (the PATCH is 422, nothing changes)."""
    merged: dict[str, str] = {}
    if patch is not None:
        merged = dict(model)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    valid = len(merged) <= MAX_TAGS and all(1 <= len(k) <= MAX_KEY and len(v) <= MAX_VALUE for k, v in merged.items())
    return merged if valid else None


@SETTINGS
@given(patches=st.lists(_patch, min_size=1, max_size=6))
def test_patch_tags_is_a_merge_patch(server: LiveServer, patches: list[dict[str, str | None] | None]) -> None:
    user, client = _fresh_user(server)
    with client:
        conv = server.conversation(user.id, tags={"team": "core"})
        url = f"{API}/{conv['id']}"
        model = {"team": "core"}
        for patch in patches:
            r = client.patch(url, json={"tags": patch})
            expected = _merge(model, patch)
            if expected is None:
                assert r.status_code == 422, (patch, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
            else:
                assert r.status_code == 200, (patch, r.text)
                assert r.json()["tags"] == expected
                model = expected
        assert client.get(url).json()["tags"] == model
        # The tag index behind the filters is in step with the stored tags.
        for key, value in model.items():
            if ":" not in key:
                found = client.get(f"{API}/search", params={"tag": f"{key}:{value}"}).json()["items"]
                assert [c["id"] for c in found] == [conv["id"]], (key, value)
        assert client.get(f"{API}/count", params={"tag_key": list(model)}).json() == 1


# -- page tokens ----------------------------------------------------------------------------------

T0 = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
# Few distinct instants: many ties, which the (time, id) keyset must break.
_instants = st.integers(min_value=0, max_value=6).map(lambda s: T0 + dt.timedelta(seconds=s))
_SORTS = ["CREATED_AT", "CREATED_AT_DESC", "UPDATED_AT", "UPDATED_AT_DESC"]


def _check_order(items: list[dict[str, Any]], field: str, descending: bool) -> None:
    keys = [(c[field], c["id"]) for c in items]
    assert keys == sorted(keys, reverse=descending)


@SETTINGS
@given(
    initial=st.lists(_instants, max_size=12),
    inserts=st.lists(st.lists(_instants, max_size=3), max_size=6),
    limit=st.integers(min_value=1, max_value=4),
    sort=st.sampled_from(_SORTS),
)
def test_conversation_pages_never_skip_or_repeat(
    server: LiveServer, initial: list[dt.datetime], inserts: list[list[dt.datetime]], limit: int, sort: str
) -> None:
    user, client = _fresh_user(server)
    with client:
        existing = {server.conversation(user.id, created_at=at)["id"] for at in initial}
        seen: list[str] = []
        field = "created_at" if sort.startswith("CREATED") else "updated_at"
        params: dict[str, Any] = {"limit": limit, "sort_order": sort}
        pending = iter(inserts)
        while True:
            r = client.get(f"{API}/search", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            _check_order(page["items"], field, sort.endswith("DESC"))
            seen += [c["id"] for c in page["items"]]
            if not page["next_page_id"]:
                break
            params["page_id"] = page["next_page_id"]
            for at in next(pending, []):  # rows land before and after the position, and on it
                server.conversation(user.id, created_at=at)
        assert len(seen) == len(set(seen)), "an item was repeated"
        assert existing <= set(seen), f"skipped {existing - set(seen)}"


def _event(at: dt.datetime) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "MessageEvent", "timestamp": at.isoformat(), "source": "agent"}


@SETTINGS
@given(
    initial=st.lists(_instants, max_size=12),
    inserts=st.lists(st.lists(_instants, max_size=3), max_size=6),
    limit=st.integers(min_value=1, max_value=4),
    sort=st.sampled_from(["TIMESTAMP", "TIMESTAMP_DESC"]),
)
def test_event_pages_never_skip_or_repeat(
    server: LiveServer, initial: list[dt.datetime], inserts: list[list[dt.datetime]], limit: int, sort: str
) -> None:
    user, client = _fresh_user(server)
    conv = server.conversation(user.id)

    def store(items: list[dict[str, Any]]) -> None:
        async def run() -> int:
            async with server.ctx.db.write() as conn:
                return await store_events(conn, conversation_id=conv["id"], items=items)

        server.run(run())

    first = [_event(at) for at in initial]
    store(first)
    with client:
        seen: list[str] = []
        params: dict[str, Any] = {"limit": limit, "sort_order": sort}
        pending = iter(inserts)
        while True:
            r = client.get(f"/api/v1/conversation/{conv['id']}/events/search", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            _check_order(page["items"], "timestamp", sort.endswith("DESC"))
            seen += [e["id"] for e in page["items"]]
            if not page["next_page_id"]:
                break
            params["page_id"] = page["next_page_id"]
            store([_event(at) for at in next(pending, [])])
        assert len(seen) == len(set(seen)), "an event was repeated"
        assert {e["id"] for e in first} <= set(seen), "an event was skipped"


# -- filter parsing -------------------------------------------------------------------------------

_FREE_TEXT = ["title__contains", "tag", "tag_key", "selected_repository__eq", "llm_model__eq", "sandbox_id__eq"]


@SETTINGS
@example(name="title__contains", values=["a\x00"], endpoint="search")
@example(name="tag", values=["k:\x00"], endpoint="count")
@example(name="tag", values=["no-colon"], endpoint="search")
@given(
    name=st.sampled_from(_FREE_TEXT),
    # Any text, NUL included (lone surrogates cannot be put in a URL at all).
    values=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), min_size=1, max_size=3),
    endpoint=st.sampled_from(["search", "count"]),
)
def test_free_text_filters_never_fail(
    server: LiveServer, alice: tuple[Any, httpx.Client], name: str, values: list[str], endpoint: str
) -> None:
    _, client = alice
    r = client.get(f"{API}/{endpoint}", params={name: values if name in ("tag", "tag_key") else values[0]})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert r.headers["content-type"].startswith("application/problem+json")
    sent = values if name in ("tag", "tag_key") else values[:1]
    malformed = {
        "tag": any(":" not in v or v.startswith(":") for v in sent),
        "tag_key": "" in sent,
    }.get(name, False)
    # PostgreSQL cannot compare text holding NUL: 422 there (SQLite can).
    refused_nul = any("\x00" in v for v in sent) and not server.settings.is_sqlite
    assert r.status_code == (422 if malformed or refused_nul else 200), (sent, r.text)


_TITLE_CHARS = st.sampled_from("aAbB%_\\ .")


@SETTINGS
@given(
    tagged=st.lists(
        st.tuples(
            st.text(_TITLE_CHARS, max_size=6),
            st.dictionaries(st.sampled_from(["k", "team", "a"]), st.sampled_from(["v", "x:y", "", "core"]), max_size=3),
        ),
        max_size=6,
    ),
    needle=st.text(_TITLE_CHARS, max_size=3),
    tag_filters=st.lists(
        st.tuples(st.sampled_from(["k", "team", "a", "zz"]), st.sampled_from(["v", "x:y", "", "core"])), max_size=2
    ),
    key_filters=st.lists(st.sampled_from(["k", "team", "a", "zz"]), max_size=2),
)
def test_filters_match_their_model(
    server: LiveServer,
    tagged: list[tuple[str, dict[str, str]]],
    needle: str,
    tag_filters: list[tuple[str, str]],
    key_filters: list[str],
) -> None:
    user, client = _fresh_user(server)
    with client:
        made = {server.conversation(user.id, title=title, tags=tags)["id"]: (title, tags) for title, tags in tagged}

        def ids(**params: Any) -> set[str]:
            r = client.get(f"{API}/search", params=params)
            assert r.status_code == 200, r.text
            count = client.get(f"{API}/count", params=params).json()
            found = {c["id"] for c in r.json()["items"]}
            assert count == len(found)
            return found

        assert ids(title__contains=needle) == {i for i, (t, _) in made.items() if needle.lower() in t.lower()}
        # `tag=key:value` splits at the first ':', so values may hold ':' themselves.
        params = {"tag": [f"{k}:{v}" for k, v in tag_filters], "tag_key": key_filters}
        expected = {
            i
            for i, (_, tags) in made.items()
            if all(tags.get(k) == v for k, v in tag_filters) and all(k in tags for k in key_filters)
        }
        assert ids(**params) == expected


def _spellings(value: str) -> st.SearchStrategy[str]:
    u = uuid.UUID(value)
    return st.sampled_from([u.hex, str(u), u.hex.upper(), str(u).upper(), f" {u.hex} "])


@SETTINGS
@given(data=st.data())
def test_ids_are_accepted_exactly_when_they_name_a_uuid(
    server: LiveServer, alice: tuple[Any, httpx.Client], data: st.DataObject
) -> None:
    user, client = alice
    conv = server.conversation(user.id)
    candidate = data.draw(
        st.one_of(
            _spellings(conv["id"]),
            st.text(st.sampled_from("0123456789abcdefABCDEF-xg{} "), min_size=30, max_size=38),
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
        )
    )
    r = client.get(API, params={"ids": [candidate]})
    try:
        text = candidate.strip()
        named = uuid.UUID(text).hex if len(text) in (32, 36) else None
    except ValueError:
        named = None
    if named is None:
        assert r.status_code == 422, (candidate, r.text)
        assert r.json()["errors"][0]["loc"] == ["query", "ids"], r.text
    else:
        assert r.status_code == 200, (candidate, r.text)
        [found] = r.json()
        assert (found is not None) == (named == conv["id"])


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf", "1e309", "abc"])
def test_cost_filter_rejects_what_is_not_a_finite_nonnegative_number(
    alice: tuple[Any, httpx.Client], value: str
) -> None:
    _, client = alice
    r = client.get(f"{API}/count", params={"accumulated_cost__gte": value})
    assert r.status_code == 422, r.text
