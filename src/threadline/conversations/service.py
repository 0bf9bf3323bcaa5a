"""Conversation records: create, read, search, count, update, delete — always scoped to one user."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import String, all_, bindparam, delete, exists, false, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.elements import BindParameter

from threadline.conversations.etag import check_if_match
from threadline.conversations.models import (
    AppConversationUpdateRequest,
    ConversationExecutionStatus,
    ConversationTrigger,
    ProviderType,
    SortOrder,
)
from threadline.conversations.records import (
    CONVERSATION_FIELDS,
    ConversationRecord,
    ListedConversation,
    PublicConversation,
    StoredConversation,
    StoredPage,
)
from threadline.conversations.tables import conversation_tags, conversations, start_tasks
from threadline.core.errors import Invalid, NotFound
from threadline.core.ids import new_id
from threadline.core.pagination import Pager, filters_fingerprint, keyset
from threadline.core.time import as_utc
from threadline.db.engine import Database
from threadline.db.lists import in_list, list_value
from threadline.db.rows import RawColumns
from threadline.db.types import utcnow
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.tables import sandboxes

MAX_BATCH_IDS = 100
_ONE_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class TagLimits:
    max_tags: int = 50
    max_key_length: int = 64
    max_value_length: int = 512


@dataclass(frozen=True)
class ConversationFilters:
    title__contains: str | None = None
    created_at__gte: datetime | None = None
    created_at__lt: datetime | None = None
    updated_at__gte: datetime | None = None
    updated_at__lt: datetime | None = None
    sandbox_id__eq: str | None = None
    include_sub_conversations: bool = False
    # (key, value) pairs that must all be present, and keys that must all be present; sorted, no repeats.
    tags: tuple[tuple[str, str], ...] = ()
    tag_keys: tuple[str, ...] = ()
    selected_repository__eq: str | None = None
    git_provider__eq: ProviderType | None = None
    trigger__eq: ConversationTrigger | None = None
    public__eq: bool | None = None
    # When given, sub-conversations are included whatever include_sub_conversations says.
    parent_conversation_id__eq: str | None = None
    execution_status__eq: ConversationExecutionStatus | None = None
    llm_model__eq: str | None = None
    accumulated_cost__gte: float | None = None

    def fingerprint(self) -> str:
        # Empty tag filters are left out, so page tokens issued before they existed stay valid.
        values = {k: v for k, v in asdict(self).items() if not (isinstance(v, tuple | list) and not v)}
        return filters_fingerprint(values)


def _where(user_id: str | BindParameter[str], f: ConversationFilters) -> list[ColumnElement[bool]]:
    # `user_id` is a value, or a bound parameter in statements built once.
    c = conversations.c
    clauses: list[ColumnElement[bool]] = [c.user_id == user_id]
    if f.title__contains is not None:
        # autoescape: '%' and '_' in the search text match themselves, not any characters.
        clauses.append(c.title.icontains(f.title__contains, autoescape=True))
    if f.created_at__gte is not None:
        clauses.append(c.created_at >= as_utc(f.created_at__gte))
    if f.created_at__lt is not None:
        clauses.append(c.created_at < as_utc(f.created_at__lt))
    if f.updated_at__gte is not None:
        clauses.append(c.updated_at >= as_utc(f.updated_at__gte))
    if f.updated_at__lt is not None:
        clauses.append(c.updated_at < as_utc(f.updated_at__lt))
    if f.sandbox_id__eq is not None:
        clauses.append(c.sandbox_id == f.sandbox_id__eq)
    if f.selected_repository__eq is not None:
        clauses.append(c.selected_repository == f.selected_repository__eq)
    if f.git_provider__eq is not None:
        clauses.append(c.git_provider == f.git_provider__eq.value)
    if f.trigger__eq is not None:
        clauses.append(c.trigger == f.trigger__eq.value)
    # `= true`/`= false`, not `IS TRUE`: only an equality can use the (user_id, public, ...) index.
    if f.public__eq is True:
        clauses.append(c.public == true())
    elif f.public__eq is False:
        # Never shared: public false, or never set (null).
        clauses.append(or_(c.public == false(), c.public.is_(None)))
    if f.execution_status__eq is not None:
        # Shown only while the sandbox is RUNNING (null otherwise), so matched only then too. Dead agent
        # servers are recorded before the query (SandboxService.settle_user), so RUNNING here is true.
        running = select(sandboxes.c.id).where(sandboxes.c.user_id == user_id, sandboxes.c.status == "RUNNING")
        clauses.append(c.execution_status == f.execution_status__eq.value)
        clauses.append(c.sandbox_id.in_(running))
    if f.llm_model__eq is not None:
        clauses.append(c.llm_model == f.llm_model__eq)
    if f.accumulated_cost__gte is not None:
        clauses.append(c.accumulated_cost >= f.accumulated_cost__gte)
    t = conversation_tags.c
    # Each tag filter is a semi-join on the tag table's (user_id, key, value) index. Written as an
    # uncorrelated IN: PostgreSQL plans it exactly like EXISTS, and SQLite can then drive the query from
    # that index (a correlated EXISTS makes SQLite probe it once per conversation of the user).
    for key, value in f.tags:
        matching = select(t.conversation_id).where(t.user_id == user_id, t.key == key, t.value == value)
        clauses.append(c.id.in_(matching))
    for key in f.tag_keys:
        clauses.append(c.id.in_(select(t.conversation_id).where(t.user_id == user_id, t.key == key)))
    if f.parent_conversation_id__eq is not None:
        clauses.append(c.parent_conversation_id == f.parent_conversation_id__eq)
    elif not f.include_sub_conversations:
        clauses.append(c.parent_conversation_id.is_(None))
    return clauses


# The statements of the hot requests (GET, PATCH, search pages) are built once, with bound parameters: a
# statement built per request costs about 50 us to build and 30 us more for SQLAlchemy to find its compiled
# form again, where a prebuilt one keeps its cache key (docs/performance.md).

# Children are looked up by parent only (ix_conversations_parent) and owner and order checked in Python:
# with the user in the WHERE clause, SQLite's planner walks all of the user's conversations instead.
_CHILDREN = {
    dialect: select(
        conversations.c.parent_conversation_id, conversations.c.id, conversations.c.user_id, conversations.c.created_at
    ).where(condition)
    for dialect, condition in in_list(conversations.c.parent_conversation_id, "parent_ids").items()
}
_SANDBOXES_BY_ID = {
    dialect: select(sandboxes).where(condition) for dialect, condition in in_list(sandboxes.c.id, "sandbox_ids").items()
}


# The storage helpers of the hot paths are synchronous functions over a `Connection`: a whole transaction
# runs as one function (`Database.run_read`/`run_write`: on SQLite one hop to a thread, not one per statement),
# and async callers inside `db.read()`/`db.write()` call them with `await conn.run_sync(helper, ...)`.


def _sub_ids(conn: Connection, *, user_id: str, parent_ids: Sequence[str]) -> dict[str, list[str]]:
    if not parent_ids:
        return {}
    dialect = conn.dialect.name
    rows = conn.execute(_CHILDREN[dialect], {"parent_ids": list_value(dialect, parent_ids)}).all()
    result: dict[str, list[str]] = {}
    for row in sorted((r for r in rows if r.user_id == user_id), key=lambda r: (r.created_at, r.id)):
        result.setdefault(row.parent_conversation_id, []).append(row.id)
    return result


def _stored(conn: Connection, *, user_id: str, rows: Sequence[Row[Any]]) -> list[StoredConversation]:
    records = ConversationRecord.all_of(rows)
    subs = _sub_ids(conn, user_id=user_id, parent_ids=[r.id for r in records])
    boxes = _sandboxes(conn, {r.sandbox_id for r in records})
    return [StoredConversation(r, tuple(subs.get(r.id, ())), boxes.get(r.sandbox_id)) for r in records]


def _sandboxes(conn: Connection, sandbox_ids: set[str]) -> dict[str, SandboxRecord]:
    """The sandbox records of conversations read, now: the live fields need them, and a transaction of their
    own would cost more than the page's query."""
    if not sandbox_ids:
        return {}
    dialect = conn.dialect.name
    rows = conn.execute(_SANDBOXES_BY_ID[dialect], {"sandbox_ids": list_value(dialect, list(sandbox_ids))}).all()
    return {b.id: b for b in SandboxRecord.all_of(rows)}


# One conversation with its sandbox in one statement (a single GET and PATCH): the sandbox's columns are
# labelled apart from the conversation's.
_SANDBOX_COLUMNS = [column.label(f"sandbox__{column.name}") for column in sandboxes.c]


_CHILD = conversations.alias("child")
# Most conversations have no sub-conversations: a probe of the parent index in the row's own statement
# saves the second statement (a round trip on PostgreSQL) for them.
_HAS_CHILDREN = exists().where(_CHILD.c.parent_conversation_id == conversations.c.id).label("has_children")
_WITH_SANDBOX = (
    select(conversations, *_SANDBOX_COLUMNS, _HAS_CHILDREN)
    .select_from(conversations.outerjoin(sandboxes, sandboxes.c.id == conversations.c.sandbox_id))
    .where(conversations.c.id == bindparam("conversation_id"), conversations.c.user_id == bindparam("user_id"))
)
_WITH_SANDBOX_LOCKED = _WITH_SANDBOX.with_for_update(of=conversations)


def _split(row: Row[Any]) -> tuple[ConversationRecord, SandboxRecord | None]:
    values = row._mapping
    record = ConversationRecord(**{column.name: values[column.name] for column in conversations.c})
    if values["sandbox__id"] is None:
        return record, None
    return record, SandboxRecord(**{column.name: values[f"sandbox__{column.name}"] for column in sandboxes.c})


def _one_stored(conn: Connection, *, user_id: str, conversation_id: str, lock: bool = False) -> StoredConversation:
    """The user's conversation with its sub-conversations and sandbox (404 when missing or another user's)."""
    query = _WITH_SANDBOX_LOCKED if lock else _WITH_SANDBOX
    row = conn.execute(query, {"conversation_id": conversation_id, "user_id": user_id}).first()
    if row is None:
        raise NotFound(f"conversation {conversation_id} not found")
    record, sandbox = _split(row)
    subs = _sub_ids(conn, user_id=user_id, parent_ids=[record.id]) if row.has_children else {}
    return StoredConversation(record, tuple(subs.get(record.id, ())), sandbox)


async def create_record(
    db: Database,
    *,
    user_id: str,
    conversation_id: str | None = None,
    sandbox_id: str | None = None,
    created_at: datetime | None = None,
    **fields: Any,
) -> StoredConversation:
    """Insert a conversation record. Starting a conversation (with a sandbox) builds on this."""
    now = created_at or utcnow()
    values: dict[str, Any] = {
        "id": conversation_id or new_id(),
        "user_id": user_id,
        "sandbox_id": sandbox_id or new_id(),
        "selected_repository": None,
        "selected_branch": None,
        "git_provider": None,
        "title": None,
        "title_set_by_user": fields.get("title") is not None,
        "trigger": None,
        "pr_number": [],
        "llm_model": None,
        "agent_kind": "openhands",
        "parent_conversation_id": None,
        "public": None,
        "tags": {},
        "execution_status": None,
        "execution_status_at": None,
        "metrics_model_name": "default",
        "accumulated_cost": 0.0,
        "max_budget_per_task": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "context_window": 0,
        "per_turn_token": 0,
        "response_id": "",
        "has_metrics": False,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    unknown = set(fields) - set(values)
    if unknown:
        raise TypeError(f"unknown conversation fields: {sorted(unknown)}")
    values.update({k: (v.value if hasattr(v, "value") else v) for k, v in fields.items()})
    return await db.run_write(_insert_record, user_id=user_id, values=values)


def _insert_record(conn: Connection, *, user_id: str, values: dict[str, Any]) -> StoredConversation:
    conn.execute(conversations.insert().values(**values))
    _store_tags(conn, conversation_id=values["id"], user_id=user_id, tags=values["tags"])
    if values["parent_conversation_id"] is not None:
        _bump_version(conn, user_id=user_id, conversation_id=values["parent_conversation_id"])
    row = conn.execute(select(conversations).where(conversations.c.id == values["id"])).one()
    return _stored(conn, user_id=user_id, rows=[row])[0]


_DELETE_TAGS = delete(conversation_tags).where(conversation_tags.c.conversation_id == bindparam("of_conversation"))
_DELETE_TAG = delete(conversation_tags).where(
    conversation_tags.c.conversation_id == bindparam("of_conversation"), conversation_tags.c.key == bindparam("of_key")
)
_INSERT_TAGS = conversation_tags.insert()


def _upsert_tags() -> dict[str, Any]:
    """Per dialect: insert a tag, or set the value of the one with that key (one statement, whatever the tag
    table held)."""
    statements: dict[str, Any] = {}
    for name, insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert)):
        statement = insert(conversation_tags)
        statements[name] = statement.on_conflict_do_update(
            index_elements=[conversation_tags.c.conversation_id, conversation_tags.c.key],
            set_={"value": statement.excluded.value},
        )
    return statements


_UPSERT_TAGS = _upsert_tags()


def _store_tags(conn: Connection, *, conversation_id: str, user_id: str, tags: dict[str, str]) -> None:
    """Index a new conversation's tags (same transaction)."""
    if tags:
        conn.execute(
            _INSERT_TAGS,
            [{"conversation_id": conversation_id, "key": k, "value": v, "user_id": user_id} for k, v in tags.items()],
        )


def _change_tags(
    conn: Connection, *, conversation_id: str, user_id: str, before: dict[str, str], after: dict[str, str]
) -> None:
    """Keep the tag index table in step with a change of the conversation's tags (same transaction): only the
    tags that went or changed are written, in one statement each kind (a PATCH usually sets a tag or two)."""
    if not after:
        conn.execute(_DELETE_TAGS, {"of_conversation": conversation_id})
        return
    gone = [{"of_conversation": conversation_id, "of_key": key} for key in before if key not in after]
    if gone:
        conn.execute(_DELETE_TAG, gone)
    changed = [
        {"conversation_id": conversation_id, "key": k, "value": v, "user_id": user_id}
        for k, v in after.items()
        if before.get(k) != v
    ]
    if changed:
        conn.execute(_UPSERT_TAGS[conn.dialect.name], changed)


async def _owned_row(conn: AsyncConnection, *, user_id: str, conversation_id: str, lock: bool = False) -> Row[Any]:
    query = select(conversations).where(conversations.c.id == conversation_id, conversations.c.user_id == user_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        # Another user's conversation is indistinguishable from a missing one.
        raise NotFound(f"conversation {conversation_id} not found")
    return row


async def get_record(conn: AsyncConnection, *, user_id: str, conversation_id: str) -> ConversationRecord:
    """The user's conversation (404 when missing or another user's)."""
    return ConversationRecord.of(await _owned_row(conn, user_id=user_id, conversation_id=conversation_id))


_OWNED = select(conversations.c.id).where(
    conversations.c.id == bindparam("conversation_id"), conversations.c.user_id == bindparam("user_id")
)


def require_owned(conn: Connection, *, user_id: str, conversation_id: str) -> None:
    """404 unless the conversation exists and is the user's; reads only its key. Synchronous: in an async
    transaction, `await conn.run_sync(require_owned, user_id=..., conversation_id=...)`."""
    found = conn.execute(_OWNED, {"conversation_id": conversation_id, "user_id": user_id}).first()
    if found is None:
        raise NotFound(f"conversation {conversation_id} not found")


async def get(db: Database, *, user_id: str, conversation_id: str) -> StoredConversation:
    return await db.run_read(_one_stored, user_id=user_id, conversation_id=conversation_id)


async def batch_get(db: Database, *, user_id: str, ids: Sequence[str]) -> list[StoredConversation | None]:
    if not ids:
        return []
    found = {s.record.id: s for s in await db.run_read(_batch, user_id=user_id, ids=list(set(ids)))}
    return [found.get(i) for i in ids]


def _batch(conn: Connection, *, user_id: str, ids: list[str]) -> list[StoredConversation]:
    query = select(conversations).where(conversations.c.id.in_(ids), conversations.c.user_id == user_id)
    return _stored(conn, user_id=user_id, rows=conn.execute(query).all())


_SORT_COLUMNS = {
    SortOrder.CREATED_AT: ("created_at", False),
    SortOrder.CREATED_AT_DESC: ("created_at", True),
    SortOrder.UPDATED_AT: ("updated_at", False),
    SortOrder.UPDATED_AT_DESC: ("updated_at", True),
}


def _keyset(query: Select[Any], sort: SortOrder, after: list[Any] | None) -> Select[Any]:
    column_name, descending = _SORT_COLUMNS[sort]
    return keyset(query, conversations.c[column_name], conversations.c.id, descending=descending, after=after)


def search_query(
    user_id: str,
    filters: ConversationFilters,
    *,
    sort: SortOrder = SortOrder.CREATED_AT_DESC,
    after: list[Any] | None = None,
    limit: int = 101,
) -> Select[Any]:
    """The SELECT behind one search page with its values in it (what the query-plan test explains with
    literal values; `page_statement` is the same with bound parameters)."""
    return _keyset(select(conversations).where(*_where(user_id, filters)), sort, after).limit(limit)


# A page's rows are read as the driver gives them and decoded in one pass per row (`db.rows`), into the
# record's values: neither SQLAlchemy's result processing nor a record per row (`ListedConversation`).
_RAW = RawColumns(conversations)
if _RAW.names != CONVERSATION_FIELDS:
    raise RuntimeError("the conversations table's columns must be ConversationRecord's fields, in order")
_SANDBOX_ID = _RAW.names.index("sandbox_id")
_SORT_POSITIONS = {sort: _RAW.names.index(column) for sort, (column, _) in _SORT_COLUMNS.items()}

# The common searches (no filter but the user's, top-level conversations or all of them, any order, first
# page or after a token), built once with bound parameters (`user_id`, `after_value`, `after_id`, `rows`).
_NO_FILTERS = frozenset({ConversationFilters(), ConversationFilters(include_sub_conversations=True)})
_PAGE_STATEMENTS: dict[tuple[SortOrder, bool, bool], Select[Any]] = {}


@lru_cache(maxsize=256)
def _fingerprint(filters: ConversationFilters) -> str:
    # A JSON document and a hash per request otherwise; filters of the same shape repeat (a client paging).
    return filters.fingerprint()


def _pager(secret: str, sort: SortOrder, filters: ConversationFilters) -> Pager:
    column_name, descending = _SORT_COLUMNS[sort]
    column = conversations.c[column_name]
    return Pager(secret, "conversations", sort.value, _fingerprint(filters), column, conversations.c.id, descending)


def page_statement(
    user_id: str, filters: ConversationFilters, pager: Pager, sort: SortOrder, *, after: bool
) -> Select[Any]:
    """The SELECT of a search page, with the position (`after_value`, `after_id`, when `after`) and the number
    of rows (`rows`) as bound parameters, and the user too (`user_id`) in the common searches, whose statements
    are built once; a search with other filters has their values in it, built per request."""
    if filters in _NO_FILTERS:
        key = (sort, filters.include_sub_conversations, after)
        statement = _PAGE_STATEMENTS.get(key)
        if statement is None:
            base = select(*_RAW.columns).where(*_where(bindparam("user_id"), filters))
            statement = _PAGE_STATEMENTS[key] = pager.statement(base, after=after)
        return statement
    return pager.statement(select(*_RAW.columns).where(*_where(user_id, filters)), after=after)


async def search(
    db: Database,
    *,
    secret: str,
    user_id: str,
    filters: ConversationFilters,
    sort: SortOrder = SortOrder.CREATED_AT_DESC,
    limit: int = 100,
    page_id: str | None = None,
) -> StoredPage:
    pager = _pager(secret, sort, filters)
    parameters = {"user_id": user_id, **pager.after(page_id), "rows": limit + 1}
    statement = page_statement(user_id, filters, pager, sort, after="after_id" in parameters)
    return await db.run_read(
        _page, user_id=user_id, statement=statement, parameters=parameters, pager=pager, sort=sort, limit=limit
    )


def _page(
    conn: Connection,
    *,
    user_id: str,
    statement: Select[Any],
    parameters: dict[str, Any],
    pager: Pager,
    sort: SortOrder,
    limit: int,
) -> StoredPage:
    rows = conn.execute(statement, parameters).all()
    decode = _RAW.decoder(conn.dialect)
    page = [decode(row) for row in rows[:limit]]
    next_page_id = None
    if len(rows) > limit and page:
        last = page[-1]
        next_page_id = pager.token(last[_SORT_POSITIONS[sort]], last[0])
    return StoredPage(items=_listed(conn, user_id=user_id, page=page), next_page_id=next_page_id)


def _listed(conn: Connection, *, user_id: str, page: list[tuple[Any, ...]]) -> list[ListedConversation]:
    """`_stored` for a page's record values."""
    subs = _sub_ids(conn, user_id=user_id, parent_ids=[values[0] for values in page])
    boxes = _sandboxes(conn, {values[_SANDBOX_ID] for values in page})
    return [
        ListedConversation(values, tuple(subs.get(values[0], ())), boxes.get(values[_SANDBOX_ID])) for values in page
    ]


async def count(db: Database, *, user_id: str, filters: ConversationFilters) -> int:
    return await db.run_read(_count, user_id=user_id, filters=filters)


def _count(conn: Connection, *, user_id: str, filters: ConversationFilters) -> int:
    query = select(func.count()).select_from(conversations).where(*_where(user_id, filters))
    return int(conn.execute(query).scalar_one())


def _merge_tags(current: dict[str, str], patch: dict[str, str | None] | None, limits: TagLimits) -> dict[str, str]:
    if patch is None:
        return {}
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
            continue
        merged[key] = value
    check_tags(merged, limits)
    return merged


def check_tags(tags: dict[str, str], limits: TagLimits) -> None:
    for key, value in tags.items():
        if not key or len(key) > limits.max_key_length:
            raise Invalid("tags", f"tag keys must be 1-{limits.max_key_length} characters", input=key)
        if len(value) > limits.max_value_length:
            raise Invalid("tags", f"tag {key!r}: values must be at most {limits.max_value_length} characters")
    if len(tags) > limits.max_tags:
        raise Invalid("tags", f"at most {limits.max_tags} tags per conversation (this would make {len(tags)})")


def _changes(record: ConversationRecord, request: AppConversationUpdateRequest, limits: TagLimits) -> dict[str, Any]:
    sent = request.model_fields_set
    wanted: dict[str, Any] = {}
    for field in ("title", "public", "selected_repository", "selected_branch", "git_provider"):
        if field in sent:
            value = getattr(request, field)
            wanted[field] = value.value if hasattr(value, "value") else value
    if "selected_repository" in sent and request.selected_repository is None:
        # A branch or provider without a repository means nothing: clear them too, unless also sent.
        wanted.setdefault("selected_branch", None)
        wanted.setdefault("git_provider", None)
    if "tags" in sent:
        wanted["tags"] = _merge_tags(dict(record.tags or {}), request.tags, limits)
    if "title" in sent:
        wanted["title_set_by_user"] = request.title is not None
    return {k: v for k, v in wanted.items() if getattr(record, k) != v}


_UPDATE_RETURNING = (
    update(conversations).where(conversations.c.id == bindparam("of_conversation")).returning(*conversations.c)
)


async def update_conversation(
    db: Database,
    *,
    user_id: str,
    conversation_id: str,
    request: AppConversationUpdateRequest,
    limits: TagLimits,
    expected_etag: str | None = None,
) -> StoredConversation:
    """Apply a PATCH. `expected_etag` is the If-Match value, 412 if stale: checked against the version the
    change is made to.

    PostgreSQL: the row is read, then changed by one compare-and-set statement (the row if its version is
    still the one read, and the tag index with it), each committing on its own: two round trips instead of
    five (BEGIN, the row locked, UPDATE, the tags, COMMIT). When another change came between the two, the
    PATCH is made again in a transaction holding the row's lock, so nothing is lost. SQLite: that
    transaction always (one writer at a time; one thread hop)."""
    patch = _Patch(user_id, conversation_id, request, limits, expected_etag)
    if not db.is_sqlite:
        # Made twice at worst (a connection found closed): a merge patch applied again changes nothing.
        stored = await db.run_autocommit(_compare_and_set, patch)
        if stored is not None:
            return stored
    return await db.run_write(_update, patch)


@dataclass(frozen=True, slots=True)
class _Patch:
    user_id: str
    conversation_id: str
    request: AppConversationUpdateRequest
    limits: TagLimits
    expected_etag: str | None

    def planned(self, stored: StoredConversation) -> dict[str, Any]:
        """The columns this PATCH changes on the row as read (none: nothing to write), with its new version and
        time; 412 if the row is not the version If-Match names."""
        record = stored.record
        check_if_match(self.expected_etag, record.id, record.etag)
        changes = _changes(record, self.request, self.limits)
        if changes:
            changes["updated_at"] = max(utcnow(), record.updated_at + _ONE_TICK)
            changes["version"] = record.version + 1
        return changes


def _update(conn: Connection, patch: _Patch) -> StoredConversation:
    stored = _one_stored(conn, user_id=patch.user_id, conversation_id=patch.conversation_id, lock=True)
    changes = patch.planned(stored)
    if not changes:
        return stored
    # The row as updated comes back with the UPDATE: no second read. The columns set are the
    # parameters' keys (one compiled form per set of changed columns, cached).
    updated = conn.execute(_UPDATE_RETURNING, {**changes, "of_conversation": patch.conversation_id}).one()
    if "tags" in changes:
        _change_tags(
            conn,
            conversation_id=patch.conversation_id,
            user_id=patch.user_id,
            before=dict(stored.record.tags or {}),
            after=changes["tags"],
        )
    return dataclasses.replace(stored, record=ConversationRecord.of(updated))


def _compare_and_set(conn: Connection, patch: _Patch) -> StoredConversation | None:
    """PostgreSQL, statements committing one by one: `_update` without the lock, None if the row's version
    moved between the read and the write (then nothing was written)."""
    stored = _one_stored(conn, user_id=patch.user_id, conversation_id=patch.conversation_id)
    changes = patch.planned(stored)
    if not changes:
        return stored
    parameters = {f"new_{name}": value for name, value in changes.items()}
    parameters.update(of_conversation=patch.conversation_id, of_version=stored.record.version, of_user=patch.user_id)
    if "tags" in changes:
        before, after = dict(stored.record.tags or {}), changes["tags"]
        changed = [(k, v) for k, v in after.items() if before.get(k) != v]
        parameters.update(
            kept_keys=list(after), changed_keys=[k for k, _ in changed], changed_values=[v for _, v in changed]
        )
    updated = conn.execute(_compare_and_set_statement(frozenset(changes)), parameters).first()
    if updated is None:
        return None
    return dataclasses.replace(stored, record=ConversationRecord.of(updated))


@lru_cache(maxsize=64)
def _compare_and_set_statement(columns: frozenset[str]) -> Select[Any]:
    """PostgreSQL: one statement that sets `columns` of a conversation whose version is still `of_version` and
    returns the row, and, when the tags change, keeps the tag index in step (data-modifying CTEs, all on one
    snapshot; the tag writes happen only if the row was updated). One compiled form per set of columns."""
    c = conversations.c
    changed = (
        update(conversations)
        .where(c.id == bindparam("of_conversation"), c.version == bindparam("of_version"))
        .values({name: bindparam(f"new_{name}", type_=c[name].type) for name in sorted(columns)})
        .returning(*c)
        .cte("changed")
    )
    statement = select(changed)
    if "tags" not in columns:
        return statement
    t = conversation_tags.c
    took = exists(select(changed.c.id))
    conversation_id = bindparam("of_conversation", type_=t.conversation_id.type)
    # Tags whose key is gone (`<> ALL` of an empty array: every tag of the conversation).
    gone = (
        delete(conversation_tags)
        .where(t.conversation_id == conversation_id, t.key != all_(bindparam("kept_keys", type_=ARRAY(String))), took)
        .cte("tags_gone")
    )
    pairs = (
        func.unnest(bindparam("changed_keys", type_=ARRAY(String)), bindparam("changed_values", type_=ARRAY(String)))
        .table_valued("key", "value")
        .render_derived()
    )
    rows = select(conversation_id, pairs.c.key, pairs.c.value, bindparam("of_user", type_=t.user_id.type)).where(took)
    upsert = postgresql_insert(conversation_tags).from_select(["conversation_id", "key", "value", "user_id"], rows)
    upsert = upsert.on_conflict_do_update(
        index_elements=[t.conversation_id, t.key], set_={"value": upsert.excluded.value}
    )
    return statement.add_cte(gone, upsert.cte("tags_set"))


async def get_record_for_any_user(
    conn: AsyncConnection, conversation_id: str, *, lock: bool = False
) -> ConversationRecord | None:
    """For callers that authorise otherwise (agent callbacks authenticate by sandbox session key)."""
    query = select(conversations).where(conversations.c.id == conversation_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return ConversationRecord.of(row) if row is not None else None


async def ids_on_sandbox(conn: AsyncConnection, sandbox_id: str, *, limit: int | None = None) -> list[str]:
    """The conversations a sandbox runs (any user's)."""
    query = select(conversations.c.id).where(conversations.c.sandbox_id == sandbox_id).order_by(conversations.c.id)
    return list((await conn.execute(query.limit(limit))).scalars())


def _bump_version(conn: Connection, *, user_id: str, conversation_id: str) -> None:
    """A change others see (its sub_conversation_ids) without a change of stored fields: a new ETag."""
    c = conversations.c
    conn.execute(
        update(conversations).where(c.id == conversation_id, c.user_id == user_id).values(version=c.version + 1)
    )


async def delete_conversation(
    db: Database, *, user_id: str, conversation_id: str, expected_etag: str | None = None
) -> ConversationRecord:
    """Delete the record and everything hanging off it (its events go with it: a foreign key's cascade);
    returns the deleted record.

    `expected_etag` is the If-Match value: checked under the row lock, 412 if stale.
    """
    async with db.write() as conn:
        parent_id = (await get_record(conn, user_id=user_id, conversation_id=conversation_id)).parent_conversation_id
        if parent_id is not None:
            # The parent's sub_conversation_ids change. Its row is locked before this one, the order
            # deleting a parent takes (parent, then its children), so the two can never deadlock.
            await conn.run_sync(_bump_version, user_id=user_id, conversation_id=parent_id)
        record = ConversationRecord.of(
            await _owned_row(conn, user_id=user_id, conversation_id=conversation_id, lock=True)
        )
        check_if_match(expected_etag, conversation_id, record.etag)
        # Sub-conversations outlive their parent as top-level conversations rather than vanish.
        await conn.execute(
            update(conversations)
            .where(conversations.c.parent_conversation_id == conversation_id)
            .values(parent_conversation_id=None, version=conversations.c.version + 1, updated_at=utcnow())
        )
        await conn.execute(delete(conversation_tags).where(conversation_tags.c.conversation_id == conversation_id))
        await conn.execute(delete(start_tasks).where(start_tasks.c.app_conversation_id == conversation_id))
        await conn.execute(delete(conversations).where(conversations.c.id == conversation_id))
        return record


async def change_keys(db: Database, *, user_id: str) -> dict[str, tuple[Any, ...]]:
    """For each of the user's conversations, what changes whenever anything shown of it does (its version,
    its sandbox's status): compared between two reads, it tells which conversations changed."""
    c, s = conversations.c, sandboxes.c
    query = (
        select(c.id, c.version, c.updated_at, s.status, s.updated_at.label("sandbox_updated_at"))
        .select_from(conversations.outerjoin(sandboxes, s.id == c.sandbox_id))
        .where(c.user_id == user_id)
    )
    async with db.read() as conn:
        return {r.id: tuple(r)[1:] for r in (await conn.execute(query)).all()}


# -- what anyone may read: public conversations -------------------------------------------------


def _is_public() -> ColumnElement[bool]:
    return conversations.c.public == true()


async def require_public(conn: AsyncConnection, conversation_id: str) -> None:
    """404 unless the conversation exists and is public; missing and private answer alike."""
    c = conversations.c
    found = (await conn.execute(select(c.id).where(c.id == conversation_id, _is_public()))).first()
    if found is None:
        raise NotFound(f"conversation {conversation_id} not found")


async def get_public(db: Database, ids: Sequence[str]) -> dict[str, PublicConversation]:
    """The public conversations among these ids, with their public relatives (same owner only)."""
    if not ids:
        return {}
    c = conversations.c
    async with db.read() as conn:
        rows = (await conn.execute(select(conversations).where(c.id.in_(set(ids)), _is_public()))).all()
        records = ConversationRecord.all_of(rows)
        if not records:
            return {}
        owner = {r.id: r.user_id for r in records}
        parent_ids = {r.parent_conversation_id for r in records if r.parent_conversation_id}
        public_parents: set[tuple[str, str]] = set()
        if parent_ids:
            found = await conn.execute(select(c.id, c.user_id).where(c.id.in_(parent_ids), _is_public()))
            public_parents = {(pid, uid) for pid, uid in found.all()}
        children = (
            await conn.execute(
                select(c.parent_conversation_id, c.id, c.user_id)
                .where(c.parent_conversation_id.in_(list(owner)), _is_public())
                .order_by(c.created_at, c.id)
            )
        ).all()
    subs: dict[str, list[str]] = {}
    for parent_id, child_id, child_owner in children:
        if owner.get(parent_id) == child_owner:
            subs.setdefault(parent_id, []).append(child_id)
    return {
        r.id: PublicConversation(
            record=r,
            parent_visible=(r.parent_conversation_id, r.user_id) in public_parents,
            public_sub_conversation_ids=tuple(subs.get(r.id, ())),
        )
        for r in records
    }
