"""Tag and field filters on conversation search and count: alone, combined, paged, validated, indexed."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import Database, LiveServer
from threadline.conversations import service
from threadline.conversations.models import ConversationExecutionStatus, ConversationTrigger, ProviderType, SortOrder
from threadline.conversations.tables import conversation_tags, conversations
from threadline.core.ids import new_id
from threadline.sandboxes.backend import SANDBOX_ENV

API = "/api/v1/app-conversations"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

REPOS = ["acme/widgets", "acme/gadgets", None]
PROVIDERS = ["github", "gitlab", "bitbucket", None]
TRIGGERS = ["gui", "openhands_api", "slack", "resolver", None]
PUBLIC = [True, False, None]
STATUSES = ["running", "finished", "error", None]
MODELS = ["openai/gpt-5", "anthropic/claude", None]


def _fields(i: int) -> dict[str, Any]:
    tags = {"team": ["core", "infra"][i % 2], "env": "prod" if i % 3 == 0 else "dev"}
    if i % 7 == 0:
        tags["rare"] = "yes"
    if i % 5 == 0:
        tags["url"] = "https://example.com:8080/x"
    if i % 10 == 9:
        tags = {}
    return {
        "title": f"conv {i}",
        "created_at": T0 + dt.timedelta(minutes=i),
        "selected_repository": REPOS[i % 3],
        "git_provider": PROVIDERS[i % 4],
        "trigger": TRIGGERS[i % 5],
        "public": PUBLIC[(i // 2) % 3],
        "execution_status": STATUSES[(i // 3) % 4],
        "llm_model": MODELS[(i // 5) % 3],
        "accumulated_cost": i * 0.5,
        "has_metrics": True,
        "tags": tags,
    }


@pytest.fixture
def running_sandbox(server: LiveServer, alice: tuple[Any, httpx.Client]) -> Iterator[str]:
    """A RUNNING sandbox of alice's, a process standing in for its agent server (one that does not answer:
    the stored execution statuses are shown). `execution_status__eq` matches only where it is RUNNING."""
    user, _ = alice
    sandbox_id = new_id()
    stand_in = subprocess.Popen(["sleep", "600"], env={**os.environ, SANDBOX_ENV: sandbox_id})
    try:
        server.sandbox(user.id, "RUNNING", id=sandbox_id, pid=stand_in.pid, url="http://127.0.0.1:9")
        yield sandbox_id
    finally:
        stand_in.kill()
        stand_in.wait()


@pytest.fixture
def dataset(
    server: LiveServer, alice: tuple[Any, httpx.Client], bob: tuple[Any, httpx.Client], running_sandbox: str
) -> list[dict[str, Any]]:
    """30 of alice's conversations with varied fields (newest first, as search lists them); bob has look-alikes."""
    user, _ = alice
    convs = [
        dict(server.conversation(user.id, sandbox_id=running_sandbox, **_fields(i)), _fields=_fields(i))
        for i in range(30)
    ]
    for i in (0, 1, 7):
        server.conversation(bob[0].id, **_fields(i))
    return list(reversed(convs))


def _matches(fields: dict[str, Any], params: dict[str, Any]) -> bool:
    tags = fields["tags"]
    for name, wanted in params.items():
        if name == "tag":
            for item in wanted if isinstance(wanted, list) else [wanted]:
                key, _, value = item.partition(":")
                if tags.get(key) != value:
                    return False
        elif name == "tag_key":
            if any(k not in tags for k in (wanted if isinstance(wanted, list) else [wanted])):
                return False
        elif name == "public__eq":
            if bool(fields["public"]) != (wanted == "true"):
                return False
        elif name == "accumulated_cost__gte":
            if fields["accumulated_cost"] < float(wanted):
                return False
        elif fields[name.removesuffix("__eq")] != wanted:
            return False
    return True


def _all_pages(client: httpx.Client, params: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    page_id = None
    for _ in range(200):
        r = client.get(f"{API}/search", params={**params, **({"page_id": page_id} if page_id else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= int(params.get("limit", 100))
        ids.extend(item["id"] for item in body["items"])
        page_id = body["next_page_id"]
        if not page_id:
            return ids
    raise AssertionError("paging did not end")


SINGLE_FILTERS: list[dict[str, Any]] = [
    {"tag": "team:core"},
    {"tag": "env:prod"},
    {"tag": "rare:yes"},
    {"tag": "url:https://example.com:8080/x"},  # split at the first ':' only
    {"tag": "team:nobody"},
    {"tag_key": "rare"},
    {"tag_key": "url"},
    {"tag_key": "absent"},
    {"selected_repository__eq": "acme/widgets"},
    {"selected_repository__eq": "acme/nothing"},
    {"git_provider__eq": "gitlab"},
    {"git_provider__eq": "azure_devops"},
    {"trigger__eq": "slack"},
    {"trigger__eq": "gui"},
    {"public__eq": "true"},
    {"public__eq": "false"},
    {"execution_status__eq": "finished"},
    {"execution_status__eq": "idle"},
    {"llm_model__eq": "anthropic/claude"},
    {"accumulated_cost__gte": "7.5"},
    {"accumulated_cost__gte": "0"},
    {"accumulated_cost__gte": "1000"},
]


def test_each_filter_alone(alice: tuple[Any, httpx.Client], dataset: list[dict[str, Any]]) -> None:
    _, client = alice
    for params in SINGLE_FILTERS:
        expected = [c["id"] for c in dataset if _matches(c["_fields"], params)]
        assert _all_pages(client, params) == expected, params
        count = client.get(f"{API}/count", params=params)
        assert count.status_code == 200 and count.json() == len(expected), params


EMPTY_CASES = [p for p in SINGLE_FILTERS if p.get("tag") == "team:nobody" or "absent" in str(p) or "nothing" in str(p)]


def test_the_dataset_exercises_every_filter() -> None:
    # Guard against a dataset where a filter matches everything or nothing and so proves nothing.
    fields = [_fields(i) for i in range(30)]
    for params in SINGLE_FILTERS:
        n = sum(_matches(f, params) for f in fields)
        if params in ({"git_provider__eq": "azure_devops"}, {"execution_status__eq": "idle"}):
            assert n == 0
        elif params in ({"accumulated_cost__gte": "1000"}, *EMPTY_CASES):
            assert n == 0
        elif params == {"accumulated_cost__gte": "0"}:
            assert n == len(fields)
        else:
            assert 0 < n < len(fields), params


COMBINED: list[dict[str, Any]] = [
    {"tag": ["team:core", "env:dev"]},
    {"tag": ["team:core", "env:dev"], "tag_key": ["url"]},
    {"tag_key": ["team", "env"], "public__eq": "false"},
    {"tag": "team:infra", "accumulated_cost__gte": "4", "trigger__eq": "gui"},
    {"selected_repository__eq": "acme/widgets", "public__eq": "false", "accumulated_cost__gte": "2.5"},
    {"git_provider__eq": "github", "execution_status__eq": "running"},
    {"llm_model__eq": "openai/gpt-5", "tag": "env:dev", "title__contains": "conv 1"},
]


@pytest.mark.parametrize("sort_order", ["CREATED_AT_DESC", "CREATED_AT"])
def test_combined_filters_page_and_count_agree(
    alice: tuple[Any, httpx.Client], dataset: list[dict[str, Any]], sort_order: str
) -> None:
    _, client = alice
    for params in COMBINED:
        field_filters = {k: v for k, v in params.items() if k != "title__contains"}
        title_part = params.get("title__contains", "")
        expected = [c["id"] for c in dataset if _matches(c["_fields"], field_filters) and title_part in c["title"]]
        if sort_order == "CREATED_AT":
            expected.reverse()
        assert len(expected) >= 2, f"{params} must match several conversations to page"
        # Pages of one and of two: every page boundary falls somewhere else.
        for limit in (1, 2):
            paged = _all_pages(client, {**params, "limit": limit, "sort_order": sort_order})
            assert paged == expected, (params, limit)
        assert client.get(f"{API}/count", params=params).json() == len(expected), params


def test_tags_changed_by_patch_are_searchable_at_once(
    alice: tuple[Any, httpx.Client], dataset: list[dict[str, Any]]
) -> None:
    _, client = alice
    target = dataset[0]
    assert client.get(f"{API}/count", params={"tag": "stage:beta"}).json() == 0
    client.patch(f"{API}/{target['id']}", json={"tags": {"stage": "beta", "team": None}})
    assert _all_pages(client, {"tag": "stage:beta"}) == [target["id"]]
    assert target["id"] not in _all_pages(client, {"tag_key": "team"})
    client.patch(f"{API}/{target['id']}", json={"tags": None})
    assert client.get(f"{API}/count", params={"tag_key": "stage"}).json() == 0
    assert client.get(f"{API}/count", params={"tag_key": "env"}).json() == sum(
        1 for c in dataset[1:] if "env" in c["_fields"]["tags"]
    )


def test_filters_never_see_other_users(bob: tuple[Any, httpx.Client], dataset: list[dict[str, Any]]) -> None:
    _, client = bob
    for params in ({"tag": "rare:yes"}, {"tag_key": "team"}, {"trigger__eq": "gui"}, {"public__eq": "true"}):
        ids = _all_pages(client, params)
        assert all(c["id"] not in ids for c in dataset)
        expected = sum(_matches(_fields(i), params) for i in (0, 1, 7))
        assert len(ids) == expected == client.get(f"{API}/count", params=params).json()


def test_parent_filter_includes_sub_conversations(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    parent = server.conversation(user.id, title="parent", created_at=T0)
    other = server.conversation(user.id, title="other parent", created_at=T0)
    kids = [
        server.conversation(
            user.id, title=f"kid {i}", parent_conversation_id=parent["id"], created_at=T0 + dt.timedelta(seconds=i + 1)
        )
        for i in range(3)
    ]
    server.conversation(user.id, title="other kid", parent_conversation_id=other["id"])
    expected = [k["id"] for k in reversed(kids)]
    for form in (parent["id"], str(uuid.UUID(parent["id"])), str(uuid.UUID(parent["id"])).upper()):
        for include in ("false", "true"):
            params = {"parent_conversation_id__eq": form, "include_sub_conversations": include}
            assert _all_pages(client, {**params, "limit": 1}) == expected
            assert client.get(f"{API}/count", params=params).json() == 3
    assert client.get(f"{API}/count", params={"parent_conversation_id__eq": uuid.uuid4().hex}).json() == 0
    assert client.get(f"{API}/count").json() == 2


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"tag": "nocolon"}, "tag"),
    ({"tag": ":value"}, "tag"),
    ({"tag": ["team:core", "bad"]}, "tag"),
    ({"tag_key": ""}, "tag_key"),
    ({"tag": [f"k{i}:v" for i in range(51)]}, "tag"),
    ({"git_provider__eq": "sourcehut"}, "git_provider__eq"),
    ({"trigger__eq": "cron"}, "trigger__eq"),
    ({"public__eq": "maybe"}, "public__eq"),
    ({"parent_conversation_id__eq": "not-an-id"}, "parent_conversation_id__eq"),
    ({"parent_conversation_id__eq": "g" * 32}, "parent_conversation_id__eq"),
    ({"execution_status__eq": "done"}, "execution_status__eq"),
    ({"execution_status__eq": "RUNNING"}, "execution_status__eq"),
    ({"accumulated_cost__gte": "-0.01"}, "accumulated_cost__gte"),
    ({"accumulated_cost__gte": "cheap"}, "accumulated_cost__gte"),
    ({"accumulated_cost__gte": "inf"}, "accumulated_cost__gte"),
    ({"accumulated_cost__gte": "nan"}, "accumulated_cost__gte"),
]


def test_invalid_filter_values_are_422(alice: tuple[Any, httpx.Client]) -> None:
    _, client = alice
    for params, field in INVALID:
        for path in ("search", "count"):
            r = client.get(f"{API}/{path}", params=params)
            assert r.status_code == 422, (params, path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert problem["status"] == 422 and field in problem["detail"], (params, problem)
            assert any(e["loc"] == ["query", field] for e in problem["errors"]), (params, problem["errors"])
    # The edges that are fine: an empty tag value, a value holding ':', a cost of exactly 0.
    for params in ({"tag": "team:"}, {"tag": "a:b:c"}, {"accumulated_cost__gte": "0"}):
        assert client.get(f"{API}/count", params=params).status_code == 200, params


def test_page_token_is_bound_to_the_new_filters(alice: tuple[Any, httpx.Client], dataset: list[dict[str, Any]]) -> None:
    _, client = alice
    base = {"tag": ["team:core", "env:dev"], "limit": 1}
    token = client.get(f"{API}/search", params=base).json()["next_page_id"]
    assert token
    # The same filters, the repeated parameters in another order: the same listing.
    again = client.get(f"{API}/search", params={**base, "tag": ["env:dev", "team:core"], "page_id": token})
    assert again.status_code == 200
    for change in (
        {"tag": ["team:core"]},
        {"tag": ["team:core", "env:prod"]},
        {"tag_key": "url"},
        {"selected_repository__eq": "acme/widgets"},
        {"git_provider__eq": "github"},
        {"trigger__eq": "gui"},
        {"public__eq": "false"},
        {"parent_conversation_id__eq": dataset[0]["id"]},
        {"execution_status__eq": "running"},
        {"llm_model__eq": "openai/gpt-5"},
        {"accumulated_cost__gte": "1"},
    ):
        r = client.get(f"{API}/search", params={**base, **change, "page_id": token})
        assert r.status_code == 400, change
        assert r.headers["content-type"].startswith("application/problem+json")


# -- the query plan ---------------------------------------------------------------------------------

BULK = 3000


def _bulk_rows(user_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Many ordinary conversations, a handful of rare ones: a selective filter should use its index."""
    rows, tags = [], []
    for i in range(BULK):
        rare = i % 600 == 0
        conversation_id = uuid.uuid4().hex
        rows.append(
            {
                "id": conversation_id,
                "user_id": user_id,
                "sandbox_id": uuid.uuid4().hex,
                "selected_repository": "rare/repo" if rare else "common/repo",
                "git_provider": "forgejo" if rare else "github",
                "trigger": "slack" if rare else "gui",
                "public": rare,
                "execution_status": "stuck" if rare else "finished",
                "llm_model": "rare-model" if rare else "common-model",
                "accumulated_cost": 1000.0 if rare else 1.0,
                "pr_number": [],
                "tags": {},
                "created_at": T0 + dt.timedelta(seconds=i),
                "updated_at": T0 + dt.timedelta(seconds=i),
            }
        )
        tags.append({"conversation_id": conversation_id, "key": "team", "value": "core", "user_id": user_id})
        if rare:
            tags.append({"conversation_id": conversation_id, "key": "rare", "value": "yes", "user_id": user_id})
    return rows, tags


# (filters, the index the plan must name, whether SQLite's planner takes it too). SQLite keeps only
# average rows per value (no histograms without STAT4), so for a column filter it walks the
# (user_id, created_at) index for the ORDER BY instead; the tag filters it does drive from their index.
PLAN_CASES: list[tuple[service.ConversationFilters, str, bool]] = [
    (service.ConversationFilters(tags=(("rare", "yes"),)), "ix_conversation_tags_user_key_value", True),
    (service.ConversationFilters(tag_keys=("rare",)), "ix_conversation_tags_user_key_value", True),
    (
        service.ConversationFilters(selected_repository__eq="rare/repo"),
        "ix_conversations_user_selected_repository",
        False,
    ),
    (service.ConversationFilters(git_provider__eq=ProviderType.forgejo), "ix_conversations_user_git_provider", False),
    (service.ConversationFilters(trigger__eq=ConversationTrigger.slack), "ix_conversations_user_trigger", False),
    (service.ConversationFilters(public__eq=True), "ix_conversations_user_public", False),
    # Matched only in RUNNING sandboxes: the planner starts from those (none here) and the sandbox index.
    (
        service.ConversationFilters(execution_status__eq=ConversationExecutionStatus.stuck),
        "ix_conversations_sandbox",
        False,
    ),
    (service.ConversationFilters(llm_model__eq="rare-model"), "ix_conversations_user_llm_model", False),
    (service.ConversationFilters(accumulated_cost__gte=500.0), "ix_conversations_user_cost", False),
]


def test_filtered_search_uses_the_indexes(
    server: LiveServer, database: Database, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    rows, tag_rows = _bulk_rows(user.id)
    db = server.ctx.db
    postgres = database.backend == "postgresql"

    async def explain_all() -> list[str]:
        async with db.write() as conn:
            await conn.execute(conversations.insert(), rows)
            await conn.execute(conversation_tags.insert(), tag_rows)
            for table in ("conversations", "conversation_tags"):
                await conn.execute(text(f"ANALYZE {table}"))
        plans = []
        for filters, _, _ in PLAN_CASES:
            query = service.search_query(user.id, filters)
            async with db.read() as conn:
                sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                if postgres:
                    # Small tables are cheaper to scan: forbid that, and see which index the planner takes.
                    await conn.execute(text("SET LOCAL enable_seqscan = off"))
                    result = await conn.execute(text(f"EXPLAIN {sql}"))
                else:
                    result = await conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))
                plans.append("\n".join(" ".join(str(v) for v in row) for row in result.all()))
        return plans

    plans = server.run(explain_all(), timeout=120)
    checked = 0
    for (filters, index, on_sqlite), plan in zip(PLAN_CASES, plans, strict=True):
        if postgres or on_sqlite:
            assert index in plan, f"{filters}: expected {index} in the plan:\n{plan}"
            checked += 1
    assert checked == (len(PLAN_CASES) if postgres else 2)
    # And the filters find exactly the rare rows.
    assert client.get(f"{API}/count", params={"tag": "rare:yes"}).json() == BULK // 600
    assert client.get(f"{API}/count", params={"trigger__eq": "slack", "public__eq": "true"}).json() == BULK // 600


@pytest.mark.parametrize("sort", list(SortOrder))
def test_a_search_page_comes_in_index_order_also_after_analyze(
    server: LiveServer, database: Database, alice: tuple[Any, httpx.Client], sort: SortOrder
) -> None:
    """The default search (top-level conversations, any sort order) reads its page from the (user, parent,
    time) index, in order: no sort step, with planner statistics present (on SQLite ANALYZE used to turn
    this into a scan of the parent index plus a sort of all the user's top-level conversations)."""
    user, _ = alice
    rows, _ = _bulk_rows(user.id)
    db = server.ctx.db
    postgres = database.backend == "postgresql"
    time = "created" if sort.value.startswith("CREATED") else "updated"
    index = f"ix_conversations_user_{time}" if postgres else f"ix_conversations_user_parent_{time}"

    async def explain() -> str:
        async with db.write() as conn:
            await conn.execute(conversations.insert(), rows)
            await conn.execute(text("ANALYZE conversations" if postgres else "ANALYZE"))
        query = service.search_query(user.id, service.ConversationFilters(), sort=sort)
        async with db.read() as conn:
            sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            if postgres:
                # 3,000 rows are cheaper to sort than to walk: on PostgreSQL (which takes the index at scale,
                # see W2 in docs/performance.md) this shows which index gives the page in order.
                for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                    await conn.execute(text(f"SET LOCAL {setting} = off"))
            result = await conn.execute(text(("EXPLAIN " if postgres else "EXPLAIN QUERY PLAN ") + sql))
            return "\n".join(" ".join(str(v) for v in row) for row in result.all())

    plan = server.run(explain(), timeout=120)
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
