"""Search pages read the fast way (issue 14, W2): the common searches are statements built once with bound
parameters, rows are read as the driver gives them and decoded in one pass (`db.rows`), and a page's
conversations are values, not records (`ListedConversation`). Checked here against the slow ways, on SQLite
and PostgreSQL: the decoded values are SQLAlchemy's, the pages are those of a search built per request and of
sorting in Python, and a page after a token reads a range of the index (not the index up to the token)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from tests.conftest import LiveServer
from threadline.conversations import service
from threadline.conversations.mapping import PAGE_JSON, to_wire
from threadline.conversations.models import SortOrder
from threadline.conversations.records import ConversationRecord, ListedConversation, StoredConversation
from threadline.conversations.tables import conversations

API = "/api/v1/app-conversations"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _rows(user_id: str, n: int) -> list[dict[str, Any]]:
    """Conversations with every kind of value: nulls and not, booleans, JSON, whole seconds and not, times
    shared by several conversations (the id breaks the tie), sub-conversations."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        created = T0 + dt.timedelta(seconds=i // 3, microseconds=0 if i % 2 else 123456 * (i % 5))
        parent = rows[i - 4]["id"] if i % 9 == 4 and rows[i - 4]["parent_conversation_id"] is None else None
        rows.append(
            {
                "id": uuid.uuid4().hex,
                "user_id": user_id,
                "sandbox_id": uuid.uuid4().hex,
                "selected_repository": None if i % 4 == 0 else f"org/repo{i % 3}",
                "selected_branch": None if i % 3 else "main",
                "git_provider": [None, "github", "gitlab"][i % 3],
                "title": None if i % 6 == 0 else f"conversation {i} ünïcödé",
                "title_set_by_user": i % 2 == 0,
                "trigger": [None, "gui", "slack", "resolver"][i % 4],
                "pr_number": [i, i + 1] if i % 5 == 0 else [],
                "llm_model": None if i % 2 else "openai/gpt-5",
                "parent_conversation_id": parent,
                "public": [None, True, False][i % 3],
                "tags": {"team": "core", "n": str(i)} if i % 2 else {},
                "execution_status": None if i % 4 else "running",
                "execution_status_at": None if i % 4 else created + dt.timedelta(seconds=1),
                "metrics_model_name": "default" if i % 2 else "openai/gpt-5",
                "accumulated_cost": float(i) if i % 2 else i * 0.25,
                "max_budget_per_task": None if i % 3 else 10.0,
                "prompt_tokens": i * 1000,
                "has_metrics": i % 3 != 1,
                "version": 1 + i % 4,
                "created_at": created,
                "updated_at": created + dt.timedelta(microseconds=(i * 7919) % 1000),
            }
        )
    return rows


@pytest.fixture
def listed(server: LiveServer, alice: tuple[Any, httpx.Client]) -> list[dict[str, Any]]:
    user, _ = alice
    rows = _rows(user.id, 95)

    async def insert() -> None:
        async with server.ctx.db.write() as conn:
            await conn.execute(conversations.insert(), rows)

    server.run(insert())
    return rows


def test_raw_rows_decode_to_the_values_sqlalchemy_gives(server: LiveServer, listed: list[dict[str, Any]]) -> None:
    def both(conn: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        order = conversations.c.id
        rows = conn.execute(select(conversations).order_by(order)).all()
        typed = [record.values() for record in ConversationRecord.all_of(rows)]
        decode = service._RAW.decoder(conn.dialect)
        raw = [decode(row) for row in conn.execute(select(*service._RAW.columns).order_by(order)).all()]
        return typed, raw

    typed, raw = server.run(server.ctx.db.run_read(both))
    assert len(typed) == len(listed)
    assert raw == typed
    # Equal is not enough (1 == 1.0 == True): the types are the same too, or the JSON would differ.
    assert [[type(v) for v in values] for values in raw] == [[type(v) for v in values] for values in typed]
    assert all(values[-1].tzinfo is dt.UTC for values in raw)


def _all_pages(server: LiveServer, user_id: str, filters: service.ConversationFilters, sort: SortOrder) -> list[Any]:
    pages, page_id = [], None
    while True:
        page = server.run(
            service.search(
                server.ctx.db, secret="s", user_id=user_id, filters=filters, sort=sort, limit=7, page_id=page_id
            )
        )
        pages.append(page.items)
        page_id = page.next_page_id
        if page_id is None:
            return pages


@pytest.mark.parametrize("sort", list(SortOrder))
@pytest.mark.parametrize("include_sub_conversations", [False, True])
def test_the_prebuilt_pages_are_those_of_a_search_built_per_request_and_of_sorting(
    server: LiveServer,
    alice: tuple[Any, httpx.Client],
    listed: list[dict[str, Any]],
    sort: SortOrder,
    include_sub_conversations: bool,
) -> None:
    user, _ = alice
    common = service.ConversationFilters(include_sub_conversations=include_sub_conversations)
    # A filter every conversation passes: the same rows through a statement built per request.
    built = service.ConversationFilters(
        include_sub_conversations=include_sub_conversations, created_at__gte=T0 - dt.timedelta(days=1)
    )
    assert common in service._NO_FILTERS and built not in service._NO_FILTERS
    prebuilt_pages = _all_pages(server, user.id, common, sort)
    built_pages = _all_pages(server, user.id, built, sort)

    def wire(pages: list[list[ListedConversation]]) -> list[bytes]:
        return [PAGE_JSON.dump_json({"items": [to_wire(i) for i in page], "next_page_id": None}) for page in pages]

    assert wire(prebuilt_pages) == wire(built_pages)
    column = "created_at" if sort.value.startswith("CREATED") else "updated_at"
    wanted = [r for r in listed if include_sub_conversations or r["parent_conversation_id"] is None]
    wanted.sort(key=lambda r: (r[column], r["id"]), reverse=sort.value.endswith("DESC"))
    assert [item.values[0] for page in prebuilt_pages for item in page] == [r["id"] for r in wanted]
    # The sub-conversations and the count agree with the pages.
    children = {r["parent_conversation_id"] for r in listed if r["parent_conversation_id"]}
    assert {item.values[0] for page in prebuilt_pages for item in page if item.sub_conversation_ids} == children
    total = server.run(service.count(server.ctx.db, user_id=user.id, filters=common))
    assert total == len(wanted)


def test_a_listed_conversation_goes_on_the_wire_as_the_stored_one(
    server: LiveServer, alice: tuple[Any, httpx.Client], listed: list[dict[str, Any]]
) -> None:
    user, _ = alice
    page = server.run(
        service.search(server.ctx.db, secret="s", user_id=user.id, filters=service.ConversationFilters(), limit=100)
    )
    for item in page.items:
        stored = StoredConversation(item.record, item.sub_conversation_ids, item.sandbox)
        assert to_wire(item) == to_wire(stored)
        assert stored.with_record(item.record).values == item.with_record(item.record).values == item.values


def test_a_page_after_a_token_reads_a_range_of_the_index(
    server: LiveServer, alice: tuple[Any, httpx.Client], listed: list[dict[str, Any]]
) -> None:
    """With bound parameters (as the server runs it, not with the values written in), the position is a bound
    of the index scan: with `time < :v OR (time = :v AND id < :id)` alone SQLite walked the index from the
    start of the user's conversations up to the token, and PostgreSQL filtered them all."""
    user, _ = alice
    db = server.ctx.db
    filters = service.ConversationFilters()
    pager = service._pager("s", SortOrder.CREATED_AT_DESC, filters)
    statement = service.page_statement(user.id, filters, pager, SortOrder.CREATED_AT_DESC, after=True)
    last = listed[40]
    parameters = {"user_id": user.id, "after_value": last["created_at"], "after_id": last["id"], "rows": 101}

    async def explain() -> str:
        async with db.read() as conn:
            compiled = statement.compile(dialect=conn.dialect)
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                # A hundred rows are cheaper to scan than to look up: show which index bounds the scan.
                for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                    await conn.execute(text(f"SET LOCAL {setting} = off"))
            positional = tuple(compiled.construct_params(parameters)[name] for name in compiled.positiontup or ())
            processors = compiled._bind_processors
            bound = tuple(
                processors[name](value) if name in processors else value
                for name, value in zip(compiled.positiontup or (), positional, strict=True)
            )
            prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            result = await conn.exec_driver_sql(prefix + compiled.string, bound)
            return "\n".join(" ".join(str(v) for v in row) for row in result.all())

    plan = server.run(explain())
    if server.ctx.db.is_sqlite:
        assert "ix_conversations_user_parent_created" in plan and "created_at<?" in plan, plan
    else:
        assert "ix_conversations_user_created" in plan and "created_at <=" in plan, plan
