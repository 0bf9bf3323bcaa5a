"""A conversation as stored, and as the service hands it on: typed records, not database rows."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.engine import Row

from threadline.conversations.etag import etag_for
from threadline.sandboxes.records import SandboxRecord


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    id: str
    user_id: str
    sandbox_id: str
    selected_repository: str | None
    selected_branch: str | None
    git_provider: str | None
    title: str | None
    title_set_by_user: bool
    trigger: str | None
    pr_number: list[int]
    llm_model: str | None
    agent_kind: str
    parent_conversation_id: str | None
    public: bool | None
    tags: dict[str, str]
    # The last execution status an agent reported (the stored copy), and when.
    execution_status: str | None
    execution_status_at: datetime | None
    metrics_model_name: str
    accumulated_cost: float
    max_budget_per_task: float | None
    prompt_tokens: int
    completion_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    context_window: int
    per_turn_token: int
    response_id: str
    has_metrics: bool
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def all_of(cls, rows: Sequence[Row[Any]]) -> list[ConversationRecord]:
        """`of()` for the rows of one result (they have the same columns: looked at once, not per row)."""
        if rows and rows[0]._fields == CONVERSATION_FIELDS:
            return [cls(*row) for row in rows]  # type: ignore[call-arg]
        return [cls(**row._mapping) for row in rows]

    @classmethod
    def of(cls, row: Row[Any]) -> ConversationRecord:
        """From a row of `select(conversations)`."""
        # By position when the row's columns are the fields in order (rows of the whole table are): several
        # times cheaper than by name, which builds a mapping per row; a page has a hundred of them.
        if row._fields == CONVERSATION_FIELDS:
            return cls(*row)  # type: ignore[call-arg]
        return cls(**row._mapping)

    @property
    def etag(self) -> str:
        return etag_for(self.id, self.version)

    def values(self) -> tuple[Any, ...]:
        """The fields' values in order (what `ConversationRecord(*values)` takes)."""
        values: tuple[Any, ...] = _RECORD_VALUES(self)
        return values


class LiveView(NamedTuple):
    """The fields of a conversation its live fields depend on (`webhooks.live`): read from a page's values
    without building a record of every field."""

    id: str
    sandbox_id: str
    title: str | None
    title_set_by_user: bool
    execution_status: str | None
    execution_status_at: datetime | None

    @classmethod
    def of(cls, record: ConversationRecord) -> LiveView:
        return cls(
            record.id,
            record.sandbox_id,
            record.title,
            record.title_set_by_user,
            record.execution_status,
            record.execution_status_at,
        )


@dataclass(frozen=True, slots=True)
class StoredConversation:
    """What the service answers for one conversation: its record, its sub-conversations (oldest first),
    and its sandbox's record read in the same transaction (None when there is none): all the live
    fields need to be added before it goes on the wire."""

    record: ConversationRecord
    sub_conversation_ids: tuple[str, ...] = ()
    sandbox: SandboxRecord | None = None

    @property
    def values(self) -> tuple[Any, ...]:
        return self.record.values()

    @property
    def live_view(self) -> LiveView:
        return LiveView.of(self.record)

    def with_record(self, record: ConversationRecord) -> StoredConversation:
        return dataclasses.replace(self, record=record)


@dataclass(frozen=True, slots=True)
class ListedConversation:
    """A conversation of a search page: what a `StoredConversation` holds, with the record as its fields'
    values in order (`ConversationRecord.values()`) instead of a record. A frozen record of 32 fields costs
    about 6 us to build, more than all the rest of a row of a page; the wire data is made from the values
    (`mapping.to_wire`), and a record is built (`record`) only where one is needed: for the live fields of a
    conversation on a running sandbox."""

    values: tuple[Any, ...]
    sub_conversation_ids: tuple[str, ...] = ()
    sandbox: SandboxRecord | None = None

    @property
    def record(self) -> ConversationRecord:
        return ConversationRecord(*self.values)

    @property
    def live_view(self) -> LiveView:
        return LiveView._make(_LIVE_VALUES(self.values))

    def with_record(self, record: ConversationRecord) -> ListedConversation:
        return ListedConversation(record.values(), self.sub_conversation_ids, self.sandbox)


# What the live fields and the wire mapping take: a conversation read one by one, or listed in a page.
AnyStored = TypeVar("AnyStored", StoredConversation, ListedConversation)


@dataclass(frozen=True, slots=True)
class StoredPage:
    items: list[ListedConversation]
    next_page_id: str | None


@dataclass(frozen=True, slots=True)
class PublicConversation:
    """A public conversation as anyone may see it: the parent only when that is public too, and only the
    public sub-conversations (of the same owner)."""

    record: ConversationRecord
    parent_visible: bool
    public_sub_conversation_ids: tuple[str, ...]


CONVERSATION_FIELDS = tuple(field.name for field in dataclasses.fields(ConversationRecord))
_RECORD_VALUES = operator.attrgetter(*CONVERSATION_FIELDS)
# The positions of LiveView's fields among a record's values.
_LIVE_VALUES = operator.itemgetter(*(CONVERSATION_FIELDS.index(name) for name in LiveView._fields))
