"""Unit tests (no server) of the token buckets in `threadline.ratelimit.service`, driven by an injected
clock: burst, refill over time, retry_after and reset, the RateLimit headers, separate keys and policies,
sweeping of idle buckets, and `from_settings` (shares per replica, disabled limits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from threadline.config import Settings
from threadline.ratelimit.service import ANONYMOUS, DEFAULT, START, Decision, Policy, RateLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


POLICY = Policy(DEFAULT, rate=2.0, burst=4)


def _limiter(*policies: Policy) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter({p.name: p for p in policies or (POLICY,)}, clock=clock), clock


def _allowed(limiter: RateLimiter, n: int, key: str = "k", policy: str = DEFAULT) -> list[bool]:
    return [limiter.take(policy, key).allowed for _ in range(n)]


# -- Policy and Decision -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "window"), [(2.0, 4, 2), (2.0, 5, 3), (100.0, 5, 1), (0.1, 3, 30), (0.01, 2, 200), (1.0, 1, 1)]
)
def test_policy_window_is_the_time_to_fill_rounded_up(rate: float, burst: int, window: int) -> None:
    assert Policy("p", rate, burst).window == window


def test_policy_header() -> None:
    assert Policy("start", 0.5, 5).header() == '"start";q=5;w=10'


def test_allowed_decision_headers() -> None:
    decision = Decision(allowed=True, policy=POLICY, remaining=3, reset=1, retry_after=0)
    assert decision.headers() == {"RateLimit-Policy": '"default";q=4;w=2', "RateLimit": '"default";r=3;t=1'}


def test_refused_decision_headers_add_retry_after() -> None:
    decision = Decision(allowed=False, policy=POLICY, remaining=0, reset=2, retry_after=1)
    assert decision.headers() == {
        "RateLimit-Policy": '"default";q=4;w=2',
        "RateLimit": '"default";r=0;t=2',
        "Retry-After": "1",
    }


# -- take ------------------------------------------------------------------------------------------


def test_a_full_bucket_allows_the_burst_then_refuses() -> None:
    limiter, _ = _limiter()
    assert _allowed(limiter, 6) == [True, True, True, True, False, False]


def test_decisions_count_down_remaining_and_reset() -> None:
    limiter, _ = _limiter()
    decisions = [limiter.take(DEFAULT, "k") for _ in range(5)]
    assert [(d.allowed, d.remaining, d.reset, d.retry_after) for d in decisions] == [
        (True, 3, 1, 0),  # one token missing: refilled in 0.5 s, rounded up
        (True, 2, 1, 0),
        (True, 1, 2, 0),
        (True, 0, 2, 0),
        (False, 0, 2, 1),
    ]
    assert all(d.policy is POLICY for d in decisions)


def test_the_bucket_refills_at_the_rate() -> None:
    limiter, clock = _limiter()
    _allowed(limiter, 4)
    clock.advance(0.4)  # 0.8 token: not yet
    refused = limiter.take(DEFAULT, "k")
    assert (refused.allowed, refused.retry_after) == (False, 1)
    clock.advance(0.1)  # 1.0 token
    assert _allowed(limiter, 2) == [True, False]
    clock.advance(1.0)  # 2 tokens
    assert _allowed(limiter, 3) == [True, True, False]


def test_refill_never_exceeds_the_burst() -> None:
    limiter, clock = _limiter()
    _allowed(limiter, 4)
    clock.advance(3600)
    first = limiter.take(DEFAULT, "k")
    assert (first.allowed, first.remaining) == (True, 3)
    assert _allowed(limiter, 4) == [True, True, True, False]


def test_refused_requests_take_nothing() -> None:
    limiter, clock = _limiter()
    _allowed(limiter, 4)
    assert _allowed(limiter, 50) == [False] * 50
    clock.advance(0.5)
    assert _allowed(limiter, 2) == [True, False]


@pytest.mark.parametrize(("rate", "retry_after"), [(2.0, 1), (0.5, 2), (0.1, 10), (0.01, 100), (1000.0, 1)])
def test_retry_after_is_the_time_to_the_next_token_at_least_one_second(rate: float, retry_after: int) -> None:
    limiter, _ = _limiter(Policy(DEFAULT, rate, 1))
    assert limiter.take(DEFAULT, "k").allowed
    refused = limiter.take(DEFAULT, "k")
    assert (refused.allowed, refused.retry_after, refused.reset) == (False, retry_after, retry_after)


def test_retry_after_shrinks_as_the_bucket_refills() -> None:
    limiter, clock = _limiter(Policy(DEFAULT, 0.1, 1))
    limiter.take(DEFAULT, "k")
    clock.advance(6.5)
    assert limiter.take(DEFAULT, "k").retry_after == 4  # 0.65 token: 3.5 s more, rounded up


def test_a_clock_going_backwards_refills_nothing() -> None:
    limiter, clock = _limiter()
    _allowed(limiter, 4)
    clock.advance(-100)
    assert _allowed(limiter, 1) == [False]
    clock.advance(0.5)
    assert _allowed(limiter, 2) == [True, False]


def test_keys_have_separate_buckets() -> None:
    limiter, _ = _limiter()
    assert _allowed(limiter, 5, key="alice") == [True] * 4 + [False]
    assert _allowed(limiter, 5, key="bob") == [True] * 4 + [False]


def test_policies_have_separate_buckets_for_the_same_key() -> None:
    start = Policy(START, rate=0.01, burst=1)
    limiter, _ = _limiter(POLICY, start)
    assert _allowed(limiter, 2, policy=START) == [True, False]
    assert _allowed(limiter, 5, policy=DEFAULT) == [True] * 4 + [False]
    refused = limiter.take(START, "k")
    assert refused.headers()["RateLimit-Policy"] == '"start";q=1;w=100'
    assert refused.retry_after == 100


def test_an_unknown_policy_is_a_key_error() -> None:
    limiter, _ = _limiter()
    with pytest.raises(KeyError):
        limiter.take("nope", "k")


# -- sweeping ----------------------------------------------------------------------------------------


def test_sweep_drops_buckets_that_are_full_again_and_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RateLimiter, "SWEEP_EVERY", 4)
    limiter, clock = _limiter()
    limiter.take(DEFAULT, "idle")  # 3 tokens left; full again after 0.5 s
    _allowed(limiter, 2, key="busy")
    clock.advance(1.0)
    assert set(limiter._buckets) == {(DEFAULT, "idle"), (DEFAULT, "busy")}
    limiter.take(DEFAULT, "busy")  # the 4th call sweeps: "busy" has 3 tokens and was just used
    assert set(limiter._buckets) == {(DEFAULT, "busy")}


def test_sweep_runs_only_every_n_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RateLimiter, "SWEEP_EVERY", 3)
    limiter, clock = _limiter()
    limiter.take(DEFAULT, "a")
    clock.advance(10)
    limiter.take(DEFAULT, "b")
    assert set(limiter._buckets) == {(DEFAULT, "a"), (DEFAULT, "b")}
    limiter.take(DEFAULT, "c")  # 3rd call: "a" is full again, "b" and "c" were just used
    assert set(limiter._buckets) == {(DEFAULT, "b"), (DEFAULT, "c")}


def test_a_swept_bucket_starts_full_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RateLimiter, "SWEEP_EVERY", 5)
    limiter, clock = _limiter()
    _allowed(limiter, 4, key="a")
    clock.advance(2.0)  # exactly full again
    limiter.take(DEFAULT, "b")  # 5th call: sweeps "a"
    assert (DEFAULT, "a") not in limiter._buckets
    assert _allowed(limiter, 5, key="a") == [True] * 4 + [False]


def test_sweep_every_default() -> None:
    assert RateLimiter.SWEEP_EVERY == 10_000


# -- from_settings -----------------------------------------------------------------------------------


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path, secret_key="s", **values)  # type: ignore[arg-type]


def test_from_settings_disabled_is_none(tmp_path: Path) -> None:
    assert RateLimiter.from_settings(_settings(tmp_path, rate_limits_enabled=False)) is None


def test_from_settings_makes_the_three_policies(tmp_path: Path) -> None:
    limiter = RateLimiter.from_settings(
        _settings(
            tmp_path,
            rate_limit_per_second=20.0,
            rate_limit_burst=40,
            start_rate_limit_per_second=1.0,
            start_rate_limit_burst=5,
            anonymous_rate_limit_per_second=5.0,
            anonymous_rate_limit_burst=20,
        )
    )
    assert limiter is not None
    assert limiter.policies == {
        DEFAULT: Policy(DEFAULT, 20.0, 40),
        START: Policy(START, 1.0, 5),
        ANONYMOUS: Policy(ANONYMOUS, 5.0, 20),
    }


def test_from_settings_shares_limits_between_replicas(tmp_path: Path) -> None:
    limiter = RateLimiter.from_settings(
        _settings(
            tmp_path,
            rate_limit_per_second=20.0,
            rate_limit_burst=40,
            start_rate_limit_per_second=1.0,
            start_rate_limit_burst=5,
            anonymous_rate_limit_per_second=5.0,
            anonymous_rate_limit_burst=2,
            rate_limit_replicas=4,
        )
    )
    assert limiter is not None
    assert limiter.policies == {
        DEFAULT: Policy(DEFAULT, 5.0, 10),
        START: Policy(START, 0.25, 1),
        ANONYMOUS: Policy(ANONYMOUS, 1.25, 1),  # never less than one request of burst
    }
