"""Conversations and pages of them are serialised from plain data (`conversations.mapping.to_wire`, `PAGE_JSON`,
`BATCH_JSON`) without a model validated per row: the bytes must be exactly those the models give."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from threadline.conversations.etag import etag_for
from threadline.conversations.mapping import (
    BATCH_JSON,
    CONVERSATION_JSON,
    PAGE_JSON,
    LiveState,
    to_app_conversation,
    to_wire,
    wire_typed_dict,
)
from threadline.conversations.models import (
    AppConversation,
    AppConversationPage,
    ConversationExecutionStatus,
    ConversationTrigger,
    ProviderType,
)
from threadline.conversations.records import ConversationRecord, ListedConversation, StoredConversation
from threadline.sandboxes.status import SandboxStatus

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_maybe_text = st.none() | _text
_count = st.integers(min_value=0, max_value=2**53)
_cost = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
_time = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@st.composite
def _stored(draw: st.DrawFn) -> StoredConversation:
    created = draw(_time)
    record = ConversationRecord(
        id=draw(st.uuids()).hex,
        user_id=draw(st.uuids()).hex,
        sandbox_id=draw(st.uuids()).hex,
        selected_repository=draw(_maybe_text),
        selected_branch=draw(_maybe_text),
        git_provider=draw(st.none() | st.sampled_from([p.value for p in ProviderType])),
        title=draw(_maybe_text),
        title_set_by_user=draw(st.booleans()),
        trigger=draw(st.none() | st.sampled_from([t.value for t in ConversationTrigger])),
        pr_number=draw(st.lists(st.integers(min_value=1, max_value=10**9), max_size=3)),
        llm_model=draw(_maybe_text),
        agent_kind=draw(st.sampled_from(["openhands", "acp"])),
        parent_conversation_id=draw(st.none() | st.uuids().map(lambda u: u.hex)),
        public=draw(st.none() | st.booleans()),
        tags=draw(st.dictionaries(_text, _text, max_size=3)),
        execution_status=draw(st.none() | st.sampled_from([s.value for s in ConversationExecutionStatus])),
        execution_status_at=draw(st.none() | _time),
        metrics_model_name=draw(st.sampled_from(["default", "openai/gpt-5", ""])),
        accumulated_cost=draw(_cost),
        max_budget_per_task=draw(st.none() | _cost),
        prompt_tokens=draw(_count),
        completion_tokens=draw(_count),
        cache_read_tokens=draw(_count),
        cache_write_tokens=draw(_count),
        reasoning_tokens=draw(_count),
        context_window=draw(_count),
        per_turn_token=draw(_count),
        response_id=draw(_text),
        has_metrics=draw(st.booleans()),
        version=draw(st.integers(min_value=1, max_value=10**6)),
        created_at=created,
        updated_at=created + timedelta(microseconds=draw(st.integers(min_value=0, max_value=10**12))),
    )
    subs = tuple(draw(st.lists(st.uuids().map(lambda u: u.hex), max_size=3)))
    return StoredConversation(record, subs)


_live = st.builds(
    LiveState,
    sandbox_status=st.sampled_from(list(SandboxStatus)),
    execution_status=st.none() | st.sampled_from(list(ConversationExecutionStatus)),
    conversation_url=st.none() | st.just("http://127.0.0.1:1234/api/conversations/x"),
    session_api_key=st.none() | _text,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_stored(), _live), max_size=5), st.none() | _text)
def test_a_page_from_plain_data_is_byte_for_byte_the_page_of_models(
    items: list[tuple[StoredConversation, LiveState]], next_page_id: str | None
) -> None:
    models = AppConversationPage(items=[to_app_conversation(s, live) for s, live in items], next_page_id=next_page_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warns (and guesses) when data does not fit the declared type
        fast = PAGE_JSON.dump_json({"items": [to_wire(s, live) for s, live in items], "next_page_id": next_page_id})
        batch = BATCH_JSON.dump_json([None, *(to_wire(s, live) for s, live in items)])
        ones = [CONVERSATION_JSON.dump_json(to_wire(s, live)) for s, live in items]
    assert fast == models.model_dump_json().encode()
    assert ones == [m.model_dump_json().encode() for m in models.items]
    assert batch == b"[" + b",".join([b"null", *(m.model_dump_json().encode() for m in models.items)]) + b"]"


def _by_name(stored: StoredConversation, live: LiveState) -> dict[str, Any]:
    """The mapping written field by field, by name: `to_wire` unpacks the record's values by position."""
    r = stored.record
    metrics = {
        "model_name": r.metrics_model_name,
        "accumulated_cost": r.accumulated_cost,
        "max_budget_per_task": r.max_budget_per_task,
        "accumulated_token_usage": {
            "model": "" if r.metrics_model_name == "default" else r.metrics_model_name,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cache_read_tokens": r.cache_read_tokens,
            "cache_write_tokens": r.cache_write_tokens,
            "reasoning_tokens": r.reasoning_tokens,
            "context_window": r.context_window,
            "per_turn_token": r.per_turn_token,
            "response_id": r.response_id,
        },
    }
    return {
        "id": r.id,
        "created_by_user_id": r.user_id,
        "sandbox_id": r.sandbox_id,
        "selected_repository": r.selected_repository,
        "selected_branch": r.selected_branch,
        "git_provider": ProviderType(r.git_provider) if r.git_provider else None,
        "title": r.title,
        "trigger": ConversationTrigger(r.trigger) if r.trigger else None,
        "pr_number": r.pr_number,
        "llm_model": r.llm_model,
        "agent_kind": r.agent_kind,
        "metrics": metrics if r.has_metrics else None,
        "parent_conversation_id": r.parent_conversation_id,
        "sub_conversation_ids": list(stored.sub_conversation_ids),
        "public": r.public,
        "tags": r.tags,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "sandbox_status": live.sandbox_status,
        "execution_status": live.execution_status,
        "conversation_url": live.conversation_url,
        "session_api_key": live.session_api_key,
        "acp_server": None,
        "launched_agent_profile": None,
        "etag": etag_for(r.id, r.version),
    }


@settings(max_examples=200, deadline=None)
@given(_stored(), _live)
def test_each_wire_field_comes_from_the_record_field_of_its_name(stored: StoredConversation, live: LiveState) -> None:
    expected = _by_name(stored, live)
    listed = ListedConversation(stored.record.values(), stored.sub_conversation_ids, stored.sandbox)
    assert to_wire(stored, live) == expected
    assert to_wire(listed, live) == expected
    assert list(to_wire(listed, live)) == list(AppConversation.model_fields)  # in the model's order
    assert listed.record == stored.record


def test_the_wire_typed_dict_has_the_models_fields_in_order() -> None:
    """The TypedDict is derived from the model, nested models included; a field added to AppConversation is
    in the pages at once (and `to_wire` must fill it, or validation of the model from it fails)."""
    typed = wire_typed_dict(AppConversation)
    assert list(typed.__annotations__) == list(AppConversation.model_fields)
    metrics = typed.__annotations__["metrics"]
    assert "MetricsSnapshotWire" in repr(metrics)
    record_fields = set(to_wire(_example()).keys())
    assert record_fields == set(AppConversation.model_fields)


def _example() -> StoredConversation:
    now = datetime.now(UTC)
    return StoredConversation(
        ConversationRecord(
            id="a" * 32, user_id="b" * 32, sandbox_id="c" * 32, selected_repository=None, selected_branch=None,
            git_provider=None, title=None, title_set_by_user=False, trigger=None, pr_number=[], llm_model=None,
            agent_kind="openhands", parent_conversation_id=None, public=None, tags={}, execution_status=None,
            execution_status_at=None, metrics_model_name="default", accumulated_cost=0.0, max_budget_per_task=None,
            prompt_tokens=0, completion_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
            context_window=0, per_turn_token=0, response_id="", has_metrics=False, version=1, created_at=now,
            updated_at=now,
        )
    )  # fmt: skip
