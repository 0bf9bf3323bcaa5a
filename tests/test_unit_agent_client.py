"""Unit tests (no server, no network) of the pure helpers of `threadline.sandboxes.agent_client`:
`metrics_from_stats` / `_usage_to_metrics` (sums over usage ids, the primary entry, the largest context
window, bad values ignored), `conversation_uuid`, `agent_message`, `llm_agent_settings`, `_chunks`,
`_short_detail` and the error types."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import httpx
import pytest

from threadline.sandboxes.agent_client import (
    AgentServerClient,
    AgentServerError,
    AgentServerUnavailable,
    BashResult,
    _chunks,
    _short_detail,
    _usage_to_metrics,
    agent_message,
    conversation_uuid,
    llm_agent_settings,
    metrics_from_stats,
)

TOKENS = ("prompt_tokens", "completion_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
EMPTY: dict[str, Any] = {
    "model_name": "default",
    "accumulated_cost": 0.0,
    "max_budget_per_task": None,
    "accumulated_token_usage": {
        "model": "",
        **dict.fromkeys(TOKENS, 0),
        "context_window": 0,
        "per_turn_token": 0,
        "response_id": "",
    },
}


def _entry(cost: Any = 0.0, model_name: str | None = None, **usage: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"accumulated_cost": cost, "accumulated_token_usage": usage}
    if model_name is not None:
        entry["model_name"] = model_name
    return entry


def _stats(usages: Any) -> dict[str, Any]:
    return {"usage_to_metrics": usages}


# -- _usage_to_metrics -------------------------------------------------------------------------------

USAGES = {"agent": {"accumulated_cost": 1.0}}


@pytest.mark.parametrize(
    "source",
    [
        {"usage_to_metrics": USAGES},  # a stats dict
        {"id": "x", "stats": {"usage_to_metrics": USAGES}},  # a ConversationInfo
        {"kind": "ConversationStateUpdateEvent", "key": "stats", "value": {"usage_to_metrics": USAGES}},
    ],
)
def test_usage_to_metrics_is_found_in_every_shape(source: dict[str, Any]) -> None:
    assert _usage_to_metrics(source) == USAGES


@pytest.mark.parametrize(
    "source",
    [
        {},
        {"usage_to_metrics": None},
        {"usage_to_metrics": ["agent"]},
        {"stats": "x"},
        {"stats": {"usage_to_metrics": "x"}},
        {"kind": "MessageEvent", "value": {"usage_to_metrics": USAGES}},
        {"kind": "ConversationStateUpdateEvent", "value": "x"},
    ],
)
def test_usage_to_metrics_is_empty_when_absent_or_not_a_mapping(source: dict[str, Any]) -> None:
    assert _usage_to_metrics(source) == {}


def test_usage_to_metrics_prefers_the_top_level_key() -> None:
    source = {"usage_to_metrics": USAGES, "stats": {"usage_to_metrics": {"other": {}}}}
    assert _usage_to_metrics(source) == USAGES


# -- metrics_from_stats ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [{}, _stats({}), _stats({"agent": "x", "condenser": None}), {"stats": None}])
def test_no_usable_entries_give_an_empty_snapshot(source: dict[str, Any]) -> None:
    assert metrics_from_stats(source) == EMPTY


def test_costs_and_tokens_are_summed_over_usage_ids() -> None:
    usages = {
        "condenser": _entry(0.25, "openai/small", prompt_tokens=10, completion_tokens=1, context_window=4000),
        "agent": {
            **_entry(
                1.5,
                "openai/big",
                model="openai/big-2025",
                prompt_tokens=100,
                completion_tokens=20,
                cache_read_tokens=7,
                cache_write_tokens=3,
                reasoning_tokens=2,
                context_window=128000,
                per_turn_token=55,
                response_id="resp-a",
            ),
            "max_budget_per_task": 10,
        },
        "title": _entry(0.125, "openai/tiny", prompt_tokens=5, reasoning_tokens=1, per_turn_token=999),
    }
    assert metrics_from_stats(_stats(usages)) == {
        "model_name": "openai/big",
        "accumulated_cost": 1.875,
        "max_budget_per_task": 10.0,
        "accumulated_token_usage": {
            "model": "openai/big-2025",
            "prompt_tokens": 115,
            "completion_tokens": 21,
            "cache_read_tokens": 7,
            "cache_write_tokens": 3,
            "reasoning_tokens": 3,
            "context_window": 128000,
            "per_turn_token": 55,
            "response_id": "resp-a",
        },
    }


def test_context_window_is_the_largest_seen_not_the_sum() -> None:
    usages = {"agent": _entry(context_window=8000), "condenser": _entry(context_window=32000)}
    assert metrics_from_stats(_stats(usages))["accumulated_token_usage"]["context_window"] == 32000


def test_without_an_agent_entry_the_first_entry_is_primary() -> None:
    usages = {
        "bad": "not a mapping",  # skipped: the first usable entry is primary
        "condenser": {**_entry(0.5, "openai/small", per_turn_token=9, response_id="r1"), "max_budget_per_task": 2.5},
        "other": _entry(0.5, "openai/other", per_turn_token=1, response_id="r2"),
    }
    metrics = metrics_from_stats(_stats(usages))
    assert (metrics["model_name"], metrics["max_budget_per_task"], metrics["accumulated_cost"]) == (
        "openai/small",
        2.5,
        1.0,
    )
    usage = metrics["accumulated_token_usage"]
    assert (usage["model"], usage["per_turn_token"], usage["response_id"]) == ("openai/small", 9, "r1")


def test_usage_model_falls_back_to_the_model_name_and_model_name_to_default() -> None:
    assert metrics_from_stats(_stats({"agent": _entry(model_name="openai/x")}))["accumulated_token_usage"]["model"] == (
        "openai/x"
    )
    assert metrics_from_stats(_stats({"agent": _entry(model_name="")}))["model_name"] == "default"


@pytest.mark.parametrize("bad", [-1, -0.5, "12", None, [3], {"n": 1}, math.nan])
def test_bad_counts_and_costs_are_ignored(bad: Any) -> None:
    usages = {
        "agent": _entry(bad, **dict.fromkeys((*TOKENS, "context_window", "per_turn_token"), bad)),
        "condenser": _entry(0.5, prompt_tokens=4, context_window=100),
    }
    metrics = metrics_from_stats(_stats(usages))
    assert metrics["accumulated_cost"] == 0.5
    assert metrics["accumulated_token_usage"] == {
        "model": "",
        "prompt_tokens": 4,
        "completion_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "context_window": 100,
        "per_turn_token": 0,
        "response_id": "",
    }


def test_fractional_counts_are_truncated_and_cost_is_rounded() -> None:
    usages = {"agent": _entry(0.1, prompt_tokens=2.9), "condenser": _entry(0.2, prompt_tokens=1.5)}
    metrics = metrics_from_stats(_stats(usages))
    assert metrics["accumulated_token_usage"]["prompt_tokens"] == 3
    assert metrics["accumulated_cost"] == 0.3  # 0.1 + 0.2 is 0.30000000000000004 before rounding


@pytest.mark.parametrize("usage", ["text", ["a"], 5])
def test_non_mapping_token_usage_of_a_secondary_entry_is_ignored(usage: Any) -> None:
    usages = {
        "agent": _entry(1.0, prompt_tokens=3),
        "condenser": {"accumulated_cost": 1.0, "accumulated_token_usage": usage},
    }
    metrics = metrics_from_stats(_stats(usages))
    assert (metrics["accumulated_cost"], metrics["accumulated_token_usage"]["prompt_tokens"]) == (2.0, 3)


@pytest.mark.parametrize("budget", [None, "5", [5]])
def test_a_budget_that_is_not_a_number_is_none(budget: Any) -> None:
    usages = {"agent": {"max_budget_per_task": budget}}
    assert metrics_from_stats(_stats(usages))["max_budget_per_task"] is None


@pytest.mark.parametrize("usage", ["text", ["a"], 5])
def test_non_mapping_token_usage_of_the_primary_entry_is_ignored(usage: Any) -> None:
    metrics = metrics_from_stats(_stats({"agent": {"accumulated_cost": 1.0, "accumulated_token_usage": usage}}))
    assert metrics == {**EMPTY, "accumulated_cost": 1.0}


@pytest.mark.parametrize("field", [*TOKENS, "context_window", "per_turn_token"])
def test_an_infinite_token_count_is_ignored(field: str) -> None:
    metrics = metrics_from_stats(_stats({"agent": _entry(**{field: math.inf})}))
    assert metrics["accumulated_token_usage"][field] == 0


def test_an_infinite_cost_is_ignored() -> None:
    usages = {"agent": _entry(math.inf), "condenser": _entry(0.5)}
    assert metrics_from_stats(_stats(usages))["accumulated_cost"] == 0.5


@pytest.mark.parametrize("budget", [math.nan, math.inf])
def test_a_non_finite_budget_is_none(budget: float) -> None:
    assert metrics_from_stats(_stats({"agent": {"max_budget_per_task": budget}}))["max_budget_per_task"] is None


# -- conversation_uuid and small helpers ---------------------------------------------------------------

U = uuid.UUID("12345678-1234-5678-1234-567812345678")


@pytest.mark.parametrize("value", [U, U.hex, str(U), f"  {U.hex}  ", U.hex.upper(), "{" + str(U) + "}"])
def test_conversation_uuid_is_dashed(value: Any) -> None:
    assert conversation_uuid(value) == "12345678-1234-5678-1234-567812345678"


@pytest.mark.parametrize("value", ["", "x", U.hex[:-1], U.hex + "0", "../etc/passwd", f"{U.hex}/x", "g" * 32])
def test_conversation_uuid_refuses_what_is_not_a_uuid(value: str) -> None:
    with pytest.raises(ValueError):
        conversation_uuid(value)


def test_text_message() -> None:
    assert agent_message("hi") == {"role": "user", "content": [{"type": "text", "text": "hi"}], "run": True}
    assert agent_message("x", run=False, role="system") == {
        "role": "system",
        "content": [{"type": "text", "text": "x"}],
        "run": False,
    }


def test_llm_agent_settings_leaves_out_what_is_not_given() -> None:
    assert llm_agent_settings(model="openai/x") == {"llm": {"usage_id": "agent", "model": "openai/x"}}
    assert llm_agent_settings(
        model="m",
        api_key="k",
        base_url="http://llm",
        usage_id="u",
        input_cost_per_token=0.0,
        output_cost_per_token=2e-6,
        num_retries=0,
        extra_llm={"temperature": 0, "model": "override"},
    ) == {
        "llm": {
            "usage_id": "u",
            "model": "override",
            "api_key": "k",
            "base_url": "http://llm",
            "input_cost_per_token": 0.0,
            "output_cost_per_token": 2e-6,
            "num_retries": 0,
            "temperature": 0,
        }
    }


@pytest.mark.parametrize(
    ("size", "expected"), [(2, [["a", "b"], ["c", "d"], ["e"]]), (5, [["a", "b", "c", "d", "e"]]), (9, [list("abcde")])]
)
def test_chunks(size: int, expected: list[list[str]]) -> None:
    assert [list(c) for c in _chunks(list("abcde"), size)] == expected
    assert list(_chunks([], size)) == []


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(404, json={"detail": "Not Found"}), "Not Found"),
        (httpx.Response(500, text="  boom  "), "boom"),
        (httpx.Response(500, text="x" * 400), "x" * 300),
        (httpx.Response(400, json={"other": 1}), ""),
        (httpx.Response(422, json=[{"loc": ["query", "limit"], "msg": "too big"}]), "query.limit: too big"),
        (httpx.Response(400, json="plain"), "plain"),
        (
            httpx.Response(
                422,
                json={
                    "detail": [
                        {"loc": ["body", "llm", "api_key"], "msg": "bad", "input": "sk-secret"},
                        "not a dict",
                        {"loc": [], "msg": "m2"},
                    ]
                },
            ),
            "body.llm.api_key: bad; : m2",
        ),
    ],
)
def test_short_detail_is_short_and_never_echoes_inputs(response: httpx.Response, expected: str) -> None:
    assert _short_detail(response) == expected


def test_errors_print_their_status() -> None:
    assert str(AgentServerError("bad answer", 502)) == "bad answer (HTTP 502)"
    assert str(AgentServerUnavailable("down")) == "down"
    assert isinstance(AgentServerUnavailable("down"), AgentServerError)


@pytest.mark.parametrize(("code", "ok"), [(0, True), (1, False), (-1, False), (None, False)])
def test_bash_result_ok(code: int | None, ok: bool) -> None:
    assert BashResult("c", code, "", "").ok is ok


def test_client_repr_never_shows_the_key() -> None:
    client = AgentServerClient("http://127.0.0.1:1/", "session-key-secret")
    try:
        assert repr(client) == "AgentServerClient('http://127.0.0.1:1')"
    finally:
        asyncio.run(client.aclose())
