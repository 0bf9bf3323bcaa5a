"""Unit tests (no server, no database) of how agent callbacks change a stored conversation.

`threadline.webhooks.service`: `_parse_time`, `Delta.status` (the newest execution status of one delivery),
`_changes(row, delta)` (metrics as a per-field maximum, an older status never replaces a newer one, fields
a user set are never touched, text limits), and the way `on_events` / `on_conversation_update` build the
delta from a raw body (with `_apply` and `store_events` replaced, so nothing touches a database).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from threadline.core.errors import NotFound
from threadline.webhooks import service
from threadline.webhooks.service import Delta, _changes, _parse_time

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _row(**values: Any) -> SimpleNamespace:
    """A stored conversation as `_changes` reads it."""
    fields: dict[str, Any] = {
        "execution_status": "idle",
        "execution_status_at": T0,
        "title": "stored title",
        "title_set_by_user": False,
        "llm_model": "openai/stored",
        "accumulated_cost": 0.0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "context_window": 0,
        "has_metrics": False,
        "metrics_model_name": "stored-model",
    }
    fields.update(values)
    return SimpleNamespace(**fields)


def _delta(**values: Any) -> Delta:
    delta = Delta()
    for name, value in values.items():
        setattr(delta, name, value)
    return delta


def _metrics(cost: float = 0.0, model_name: str | None = "m", budget: float | None = None, **usage: Any) -> dict:
    """A MetricsSnapshot as `metrics_from_stats` makes it."""
    token_usage: dict[str, Any] = dict.fromkeys((*TOKENS, "context_window", "per_turn_token"), 0)
    token_usage.update(model="", response_id="")
    token_usage.update(usage)
    return {
        "model_name": model_name,
        "accumulated_cost": cost,
        "max_budget_per_task": budget,
        "accumulated_token_usage": token_usage,
    }


# -- _parse_time -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T12:00:00Z", T0),
        ("2025-01-01T12:00:00+00:00", T0),
        ("2025-01-01T13:30:00+01:30", T0),  # an offset is converted to UTC
        ("2025-01-01T07:00:00-05:00", T0),
        ("2025-01-01T12:00:00", T0),  # naive times are UTC
        ("2025-01-01T12:00:00.250000Z", T0 + dt.timedelta(milliseconds=250)),
        ("2025-01-01", dt.datetime(2025, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_time_reads_iso_text_as_utc(text: str, expected: dt.datetime) -> None:
    parsed = _parse_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    "value",
    [None, "", "yesterday", "2025-13-01T00:00:00Z", "2025-01-01T25:00:00", 1735732800, 1.5, True, T0, [], {}],
)
def test_parse_time_is_none_for_anything_else(value: Any) -> None:
    assert _parse_time(value) is None


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_parse_time_out_of_range_instant_is_none(text: str) -> None:
    assert _parse_time(text) is None


# -- Delta.status ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "RUNNING", "Running", "unknown", 1, True, ["running"], {"v": "running"}])
def test_delta_ignores_what_is_not_an_execution_status(value: Any) -> None:
    delta = Delta()
    delta.status(value, T0)
    assert (delta.execution_status, delta.status_at) == (None, None)


@pytest.mark.parametrize(
    "status", ["idle", "running", "paused", "waiting_for_confirmation", "finished", "error", "stuck", "deleting"]
)
def test_delta_takes_every_execution_status(status: str) -> None:
    delta = Delta()
    delta.status(status, T0)
    assert (delta.execution_status, delta.status_at) == (status, T0)


def test_delta_keeps_the_newest_status_whatever_the_order() -> None:
    delta = Delta()
    delta.status("running", T0 + SECOND)
    delta.status("idle", T0)  # older: ignored
    assert (delta.execution_status, delta.status_at) == ("running", T0 + SECOND)
    delta.status("finished", T0 + 2 * SECOND)
    assert (delta.execution_status, delta.status_at) == ("finished", T0 + 2 * SECOND)


def test_delta_status_at_the_same_instant_replaces() -> None:
    delta = Delta()
    delta.status("running", T0)
    delta.status("finished", T0)
    assert (delta.execution_status, delta.status_at) == ("finished", T0)


def test_delta_status_without_a_time_always_replaces_and_is_then_replaced() -> None:
    delta = Delta()
    delta.status("running", T0)
    delta.status("paused", None)
    assert (delta.execution_status, delta.status_at) == ("paused", None)
    delta.status("idle", T0 - SECOND)  # any timed status follows an untimed one
    assert (delta.execution_status, delta.status_at) == ("idle", T0 - SECOND)


def test_delta_invalid_status_does_not_reset_a_valid_one() -> None:
    delta = Delta()
    delta.status("running", T0)
    delta.status("bogus", T0 + SECOND)
    assert (delta.execution_status, delta.status_at) == ("running", T0)


# -- _changes: execution status ----------------------------------------------------------------------


def test_an_empty_delta_changes_nothing() -> None:
    assert _changes(_row(), Delta()) == {}


def test_newer_status_is_applied() -> None:
    changes = _changes(_row(), _delta(execution_status="running", status_at=T0 + SECOND))
    assert changes == {"execution_status": "running", "execution_status_at": T0 + SECOND}


def test_older_status_never_replaces_a_newer_one() -> None:
    assert _changes(_row(execution_status="finished"), _delta(execution_status="running", status_at=T0 - SECOND)) == {}


def test_same_status_newer_time_only_moves_the_time() -> None:
    changes = _changes(_row(execution_status="running"), _delta(execution_status="running", status_at=T0 + SECOND))
    assert changes == {"execution_status_at": T0 + SECOND}


def test_status_at_the_stored_instant_is_applied() -> None:
    assert _changes(_row(), _delta(execution_status="error", status_at=T0)) == {
        "execution_status": "error",
        "execution_status_at": T0,
    }


def test_status_on_a_row_without_a_status_time_is_applied() -> None:
    changes = _changes(_row(execution_status_at=None), _delta(execution_status="paused", status_at=T0 - SECOND))
    assert changes == {"execution_status": "paused", "execution_status_at": T0 - SECOND}


def test_untimed_status_is_stamped_now() -> None:
    before = dt.datetime.now(dt.UTC)
    changes = _changes(_row(), _delta(execution_status="running"))
    after = dt.datetime.now(dt.UTC)
    assert changes["execution_status"] == "running"
    assert before <= changes["execution_status_at"] <= after
    assert set(changes) == {"execution_status", "execution_status_at"}


def test_untimed_status_loses_to_a_stored_time_in_the_future() -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert _changes(_row(execution_status_at=future), _delta(execution_status="running")) == {}


# -- _changes: title and model -----------------------------------------------------------------------


def test_agent_title_is_applied() -> None:
    assert _changes(_row(), _delta(title="Fix the parser")) == {"title": "Fix the parser"}


def test_title_set_by_user_is_never_touched() -> None:
    assert _changes(_row(title_set_by_user=True), _delta(title="Agent title")) == {}


@pytest.mark.parametrize("title", [None, "", "stored title"])
def test_missing_empty_or_equal_title_changes_nothing(title: str | None) -> None:
    assert _changes(_row(), _delta(title=title)) == {}


def test_title_is_cut_to_1000_characters() -> None:
    assert _changes(_row(), _delta(title="t" * 1500)) == {"title": "t" * 1000}


def test_title_nul_and_lone_surrogates_are_replaced() -> None:
    assert _changes(_row(), _delta(title="a\x00b\ud800c")) == {"title": "a\ufffdb\ufffdc"}


def test_llm_model_is_applied_cut_to_256_characters() -> None:
    assert _changes(_row(), _delta(llm_model="openai/new")) == {"llm_model": "openai/new"}
    assert _changes(_row(), _delta(llm_model="m" * 300)) == {"llm_model": "m" * 256}


@pytest.mark.parametrize("model", [None, "", "openai/stored"])
def test_missing_empty_or_equal_model_changes_nothing(model: str | None) -> None:
    assert _changes(_row(), _delta(llm_model=model)) == {}


def test_user_set_fields_are_never_in_the_changes() -> None:
    delta = _delta(
        execution_status="running",
        status_at=T0 + SECOND,
        title="agent",
        llm_model="openai/new",
        metrics=_metrics(cost=1.0, prompt_tokens=5),
    )
    changes = _changes(_row(title_set_by_user=True), delta)
    assert not {"title", "public", "created_at", "tags", "trigger", "user_id", "sandbox_id", "version"} & set(changes)


# -- _changes: metrics -------------------------------------------------------------------------------


def test_first_metrics_snapshot_is_stored_whole() -> None:
    delta = _delta(
        metrics=_metrics(
            cost=0.25,
            model_name="openai/gpt",
            budget=5.0,
            prompt_tokens=100,
            completion_tokens=20,
            cache_read_tokens=3,
            cache_write_tokens=4,
            reasoning_tokens=5,
            context_window=8000,
            per_turn_token=42,
            response_id="resp-1",
        )
    )
    assert _changes(_row(), delta) == {
        "accumulated_cost": 0.25,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cache_read_tokens": 3,
        "cache_write_tokens": 4,
        "reasoning_tokens": 5,
        "context_window": 8000,
        "has_metrics": True,
        "metrics_model_name": "openai/gpt",
        "per_turn_token": 42,
        "response_id": "resp-1",
        "max_budget_per_task": 5.0,
    }


def test_an_all_zero_first_snapshot_still_marks_metrics_present() -> None:
    assert _changes(_row(), _delta(metrics=_metrics())) == {
        "has_metrics": True,
        "metrics_model_name": "m",
        "per_turn_token": 0,
        "response_id": "",
    }


def test_metrics_are_a_per_field_maximum() -> None:
    row = _row(has_metrics=True, accumulated_cost=2.0, prompt_tokens=100, completion_tokens=20, context_window=8000)
    delta = _delta(metrics=_metrics(cost=1.5, prompt_tokens=50, completion_tokens=80, context_window=4000))
    assert _changes(row, delta) == {
        "completion_tokens": 80,
        "has_metrics": True,
        "metrics_model_name": "m",
        "per_turn_token": 0,
        "response_id": "",
    }


def test_a_late_or_duplicated_snapshot_changes_nothing() -> None:
    row = _row(has_metrics=True, accumulated_cost=2.0, prompt_tokens=100, completion_tokens=20)
    assert _changes(row, _delta(metrics=_metrics(cost=2.0, prompt_tokens=100, completion_tokens=20))) == {}
    assert _changes(row, _delta(metrics=_metrics(cost=1.0, prompt_tokens=10, budget=9.0))) == {}


def test_higher_cost_alone_is_applied() -> None:
    row = _row(has_metrics=True, accumulated_cost=0.5)
    assert _changes(row, _delta(metrics=_metrics(cost=0.75, model_name=None)))["accumulated_cost"] == 0.75


def test_missing_model_name_keeps_the_stored_one() -> None:
    row = _row(has_metrics=True)
    changes = _changes(row, _delta(metrics=_metrics(model_name=None, prompt_tokens=1)))
    assert changes["metrics_model_name"] == "stored-model"


def test_metrics_text_limits() -> None:
    delta = _delta(metrics=_metrics(model_name="n" * 300, prompt_tokens=1, response_id="r\x00" * 200))
    changes = _changes(_row(has_metrics=True), delta)
    assert changes["metrics_model_name"] == "n" * 256
    assert changes["response_id"] == ("r\ufffd" * 128)


@pytest.mark.parametrize("cost", [math.nan, -1.0, 0, None])
def test_nan_negative_or_missing_cost_is_not_applied(cost: Any) -> None:
    row = _row(has_metrics=True, accumulated_cost=0.0)
    assert "accumulated_cost" not in _changes(row, _delta(metrics=_metrics(cost=cost, prompt_tokens=1)))


def test_missing_token_usage_reads_as_zero() -> None:
    row = _row(has_metrics=True, prompt_tokens=5)
    assert _changes(row, _delta(metrics={"model_name": "m", "accumulated_cost": 0.0})) == {}


# -- on_events / on_conversation_update build the delta ------------------------------------------------


class _FakeDb:
    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[str]:
        yield "conn"


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Delta]]:
    """Replace `_apply` and `store_events`: record what would be applied, store nothing."""
    calls: list[tuple[str, str, Delta]] = []

    async def fake_apply(conn: Any, *, sandbox_id: str, conversation_id: str, delta: Delta) -> str:
        calls.append((sandbox_id, conversation_id, delta))
        return "row"

    async def fake_store(conn: Any, *, conversation_id: str, items: list[dict[str, Any]]) -> int:
        return len(items)

    monkeypatch.setattr(service, "_apply", fake_apply)
    monkeypatch.setattr(service, "store_events", fake_store)
    return calls


CONV = uuid.UUID(int=7)


def _state(key: str, value: Any, timestamp: Any = None) -> dict[str, Any]:
    return {"kind": "ConversationStateUpdateEvent", "key": key, "value": value, "timestamp": timestamp}


def _on_events(items: list[Any], conversation_id: str = str(CONV)) -> int:
    run = service.on_events(_FakeDb(), sandbox_id="sbx", conversation_id=conversation_id, items=items)  # type: ignore[arg-type]
    return asyncio.run(run)


def test_on_events_orders_statuses_by_instant_not_by_delivery_or_text(applied: list) -> None:
    items = [
        _state("execution_status", "finished", "2025-01-01T12:30:00Z"),  # the newest instant
        _state("execution_status", "running", "2025-01-01T13:00:00+01:00"),  # 12:00 UTC; sorts last as text
        _state("execution_status", "idle", "2025-01-01T11:00:00"),
    ]
    assert _on_events(items) == 3
    [(sandbox_id, conversation_id, delta)] = applied
    assert (sandbox_id, conversation_id) == ("sbx", CONV.hex)
    assert (delta.execution_status, delta.status_at) == ("finished", T0 + 30 * 60 * SECOND)


def test_on_events_ties_keep_delivery_order(applied: list) -> None:
    _on_events(
        [_state("execution_status", "paused", T0.isoformat()), _state("execution_status", "error", T0.isoformat())]
    )
    assert applied[0][2].execution_status == "error"


def test_on_events_takes_the_newest_title_and_stats(applied: list) -> None:
    stats = {"usage_to_metrics": {"agent": {"accumulated_cost": 0.5, "model_name": "openai/x"}}}
    items = [
        _state("title", "Newer", "2025-01-01T12:00:02Z"),
        _state("title", "Older", "2025-01-01T12:00:01Z"),
        _state("title", "   ", "2025-01-01T12:00:03Z"),  # blank: ignored
        _state("title", 42, "2025-01-01T12:00:04Z"),  # not text: ignored
        _state("stats", stats, "2025-01-01T12:00:00Z"),
        _state("stats", "garbage", "2025-01-01T12:00:05Z"),  # not a mapping: ignored
    ]
    _on_events(items)
    delta = applied[0][2]
    assert delta.title == "Newer"
    assert delta.metrics is not None
    assert (delta.metrics["accumulated_cost"], delta.metrics["model_name"]) == (0.5, "openai/x")
    assert delta.execution_status is None


def test_on_events_skips_non_mappings_and_other_kinds(applied: list) -> None:
    items = [
        "text",
        None,
        7,
        {"kind": "MessageEvent", "key": "execution_status", "value": "running"},
        _state("execution_status", "not-a-status", "2025-01-01T12:00:00Z"),
        _state("unknown_key", "running"),
    ]
    assert _on_events(items) == 3  # the three mappings are stored
    delta = applied[0][2]
    assert (delta.execution_status, delta.title, delta.metrics) == (None, None, None)


@pytest.mark.parametrize("conversation_id", ["", "nope", "1234", "z" * 32, str(CONV) + "0"])
def test_on_events_malformed_conversation_id_is_not_found(conversation_id: str, applied: list) -> None:
    with pytest.raises(NotFound):
        _on_events([], conversation_id)
    assert applied == []


def _on_update(info: dict[str, Any]) -> Any:
    return asyncio.run(service.on_conversation_update(_FakeDb(), sandbox_id="sbx", info=info))  # type: ignore[arg-type]


def test_on_conversation_update_reads_status_title_model_and_stats(applied: list) -> None:
    info = {
        "id": str(CONV),
        "execution_status": "running",
        "updated_at": "2025-01-01T12:00:00Z",
        "title": "Agent title",
        "agent": {"llm": {"model": "openai/gpt"}},
        "stats": {"usage_to_metrics": {"agent": {"accumulated_cost": 1.25}}},
    }
    assert _on_update(info) == "row"
    [(_, conversation_id, delta)] = applied
    assert conversation_id == CONV.hex
    assert (delta.execution_status, delta.status_at, delta.title, delta.llm_model) == (
        "running",
        T0,
        "Agent title",
        "openai/gpt",
    )
    assert delta.metrics is not None and delta.metrics["accumulated_cost"] == 1.25


@pytest.mark.parametrize(
    "extra",
    [
        {"title": "  ", "agent": {"llm": {"model": 5}}, "stats": "x"},
        {"title": None, "agent": {"llm": "openai/gpt"}, "stats": None},
        {"title": 3, "agent": "x", "stats": []},
        {},
    ],
)
def test_on_conversation_update_ignores_garbage_fields(extra: dict[str, Any], applied: list) -> None:
    _on_update({"id": CONV.hex, "execution_status": "bogus", **extra})
    delta = applied[0][2]
    assert (delta.execution_status, delta.title, delta.llm_model, delta.metrics) == (None, None, None, None)


@pytest.mark.parametrize("conversation_id", [None, 5, "x"])
def test_on_conversation_update_bad_id_is_not_found(conversation_id: Any, applied: list) -> None:
    with pytest.raises(NotFound):
        _on_update({"id": conversation_id})
    assert applied == []
