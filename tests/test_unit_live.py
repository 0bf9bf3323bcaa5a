"""Which conversations' records may lag behind their agent servers (webhooks.live.LivePresenter): only those
make a background question to an agent server; every other response is served from the records (a
conversation with no status report yet is asked about before answering: tests/test_agent_e2e.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from threadline.conversations.records import ConversationRecord, LiveView
from threadline.core.time import utcnow
from threadline.webhooks.live import LivePresenter, _may_lag


def record(*, reported_seconds_ago: float | None = 3600, **values: Any) -> ConversationRecord:
    """A record whose last status report came `reported_seconds_ago` before now (None: never), now being the
    moment the test runs (parameters are made when the module is imported, minutes earlier under xdist)."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": "c" * 32,
        "user_id": "u" * 32,
        "sandbox_id": "s" * 32,
        "selected_repository": None,
        "selected_branch": None,
        "git_provider": None,
        "title": "A title",
        "title_set_by_user": False,
        "trigger": None,
        "pr_number": [],
        "llm_model": None,
        "agent_kind": "openhands",
        "parent_conversation_id": None,
        "public": None,
        "tags": {},
        "execution_status": "finished",
        "execution_status_at": None if reported_seconds_ago is None else now - timedelta(seconds=reported_seconds_ago),
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
    fields.update(values)
    return ConversationRecord(**fields)


def _lags(live: LivePresenter, stored: ConversationRecord) -> bool:
    return _may_lag(LiveView.of(stored), utcnow() - live.stale_after)


@pytest.fixture
def live() -> LivePresenter:
    return LivePresenter(None, None, refresh_seconds=5, stale_seconds=30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        {},  # finished an hour ago, titled: nothing can have changed without a callback
        {"execution_status": "idle"},
        {"execution_status": "running", "reported_seconds_ago": 5},  # fresh report
        {"title": None, "title_set_by_user": True},  # the user cleared the title: no automatic one wanted
        {"execution_status": "error"},
        # No report yet: asked before answering (not in the background), until a report is stored.
        {"execution_status": None, "reported_seconds_ago": None},
        {"reported_seconds_ago": None},
    ],
)
def test_records_callbacks_keep_fresh_are_served_as_they_are(live: LivePresenter, values: dict[str, Any]) -> None:
    assert not _lags(live, record(**values))


@pytest.mark.parametrize(
    "values",
    [
        {"title": None},  # the automatic title arrives only by asking
        {"execution_status": "running", "reported_seconds_ago": 31},  # a lost callback?
    ],
)
def test_records_that_may_lag_are_refreshed(live: LivePresenter, values: dict[str, Any]) -> None:
    assert _lags(live, record(**values))


def test_a_sandbox_is_asked_at_most_once_per_refresh_interval(live: LivePresenter) -> None:
    import asyncio

    asked: list[list[str]] = []

    async def fake_ask(sandbox: Any, conversation_ids: list[str]) -> list[Any]:
        asked.append(conversation_ids)
        return []

    live._ask = fake_ask  # type: ignore[method-assign]

    class Box:
        id = "s" * 32

    async def run() -> None:
        live._refresh_later(Box(), ["a"])  # type: ignore[arg-type]
        live._refresh_later(Box(), ["b"])  # type: ignore[arg-type]
        await live.refresh_now()
        live._asked[Box.id] -= 5  # the interval has passed
        live._refresh_later(Box(), ["c"])  # type: ignore[arg-type]
        await live.refresh_now()
        await live.close()
        live._refresh_later(Box(), ["d"])  # type: ignore[arg-type]  # closed: no more questions

    asyncio.run(run())
    assert asked == [["a"], ["c"]]


def test_a_conversation_without_a_report_makes_a_page_wait_once_then_is_asked_in_the_background() -> None:
    """An agent server that does not know a conversation (or does not answer) leaves it without a report:
    the first page with it waits for the question, later pages do not (they ask in the background, once
    per sandbox per interval). Measured before: a page of 100 over 20 such sandboxes waited ~1 s, always."""
    import asyncio

    from threadline.conversations.records import StoredConversation
    from threadline.sandboxes.status import SandboxStatus

    class Box:
        id = "s" * 32
        user_id = "u" * 32

    class RunningSandboxes:
        """The three things LivePresenter reads of the sandboxes service, for one RUNNING sandbox."""

        async def settle(self, boxes: list[Any]) -> dict[str, SandboxStatus]:
            return {box.id: SandboxStatus.RUNNING for box in boxes}

        def agent_url(self, box: Any) -> str:
            return "http://127.0.0.1:1"

        def session_key(self, box: Any) -> str:
            return "key"

    presenter = LivePresenter(None, RunningSandboxes(), refresh_seconds=5, stale_seconds=30)  # type: ignore[arg-type]
    waited: list[list[str]] = []
    in_background: list[list[str]] = []

    async def ask_knowing_nothing(sandbox: Any, conversation_ids: list[str]) -> list[Any]:
        # Called directly by a page (it waits) or from a background task (it does not).
        (in_background if asyncio.current_task() in presenter._refreshing else waited).append(conversation_ids)
        return []

    presenter._ask = ask_knowing_nothing  # type: ignore[method-assign]
    item = StoredConversation(record(execution_status=None, reported_seconds_ago=None), (), Box())  # type: ignore[arg-type]
    user = type("User", (), {"id": Box.user_id})()

    async def run() -> None:
        first = await presenter.resolve(user, [item])  # type: ignore[arg-type]
        assert first[0][1].sandbox_status is SandboxStatus.RUNNING and first[0][1].execution_status is None
        for _ in range(3):
            await presenter.resolve(user, [item])  # type: ignore[arg-type]
        await presenter.refresh_now()
        await presenter.close()

    asyncio.run(run())
    assert waited == [[item.record.id]], "only the first page waits for the agent server"
    assert in_background == [[item.record.id]], "then asked in the background, once per interval"


def test_a_listed_conversations_live_view_is_its_records() -> None:
    """A page's conversation (values, no record) reads the same live fields as its record does."""
    from threadline.conversations.records import ListedConversation

    for values in ({}, {"title": None, "execution_status": "running"}, {"reported_seconds_ago": None}):
        stored = record(**values)
        assert ListedConversation(stored.values()).live_view == LiveView.of(stored)
        assert LiveView.of(stored) == (
            stored.id,
            stored.sandbox_id,
            stored.title,
            stored.title_set_by_user,
            stored.execution_status,
            stored.execution_status_at,
        )
