"""Token buckets per API key, kept in this process, and the IETF draft RateLimit headers.

Each bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request takes one
token or is refused with the time until the next one. The buckets live in memory: the hot path costs
no database round trip. With several Threadline processes (replicas behind a load balancer, and the
workers of each), each enforces its share (`rate_limit_replicas` x `workers`) of the configured limits;
docs/rate-limits.md says why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from threadline.config import Settings

DEFAULT = "default"
START = "start"
ANONYMOUS = "anonymous"
# Key under request.state (scope["state"]) where the decision for this request is kept for the headers.
STATE_KEY = "rate_limit"


@dataclass(frozen=True)
class Policy:
    name: str
    rate: float  # tokens per second
    burst: int  # bucket size

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill: the `w` of RateLimit-Policy."""
        return max(1, math.ceil(self.burst / self.rate))

    def header(self) -> str:
        return f'"{self.name}";q={self.burst};w={self.window}'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policy: Policy
    remaining: int  # whole tokens left after this request
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until a refused request may succeed; 0 when allowed

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), plus Retry-After on 429."""
        headers = {
            "RateLimit-Policy": self.policy.header(),
            "RateLimit": f'"{self.policy.name}";r={self.remaining};t={self.reset}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """In-memory token buckets keyed by (policy, API key id or client address). Not thread-safe; one event
    loop uses it."""

    # Buckets idle long enough to be full again carry no information; they are dropped now and then.
    SWEEP_EVERY = 10_000

    def __init__(self, policies: dict[str, Policy], clock: Callable[[], float] = time.monotonic) -> None:
        self.policies = policies
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._calls = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter | None:
        if not settings.rate_limits_enabled:
            return None
        share = settings.rate_limit_share
        return cls(
            {
                DEFAULT: _policy(DEFAULT, settings.rate_limit_per_second, settings.rate_limit_burst, share),
                START: _policy(START, settings.start_rate_limit_per_second, settings.start_rate_limit_burst, share),
                ANONYMOUS: _policy(
                    ANONYMOUS, settings.anonymous_rate_limit_per_second, settings.anonymous_rate_limit_burst, share
                ),
            }
        )

    def take(self, policy_name: str, key: str) -> Decision:
        policy = self.policies[policy_name]
        now = self.clock()
        tokens, stamp = self._buckets.get((policy_name, key), (float(policy.burst), now))
        tokens = min(float(policy.burst), tokens + max(0.0, now - stamp) * policy.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[(policy_name, key)] = (tokens, now)
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._sweep(now)
        return Decision(
            allowed=allowed,
            policy=policy,
            remaining=int(tokens),
            reset=math.ceil((policy.burst - tokens) / policy.rate),
            retry_after=0 if allowed else max(1, math.ceil((1.0 - tokens) / policy.rate)),
        )

    def _sweep(self, now: float) -> None:
        for bucket_key, (tokens, stamp) in list(self._buckets.items()):
            policy = self.policies[bucket_key[0]]
            if tokens + (now - stamp) * policy.rate >= policy.burst:
                del self._buckets[bucket_key]


def _policy(name: str, rate: float, burst: int, replicas: int) -> Policy:
    # Each process enforces its share; never less than one request of burst.
    return Policy(name=name, rate=rate / replicas, burst=max(1, burst // replicas))


class RateLimitHeaders:
    """ASGI middleware: put the RateLimit headers of the request's decision on whatever response goes out.

    The decision is made in authentication (so only authenticated routes carry the headers); this adds
    them to every kind of response, streamed and error responses included.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = scope.get("state", {}).get(STATE_KEY)
                if isinstance(decision, Decision):
                    headers = list(message.get("headers", ()))
                    present = {name.lower() for name, _ in headers}
                    for name, value in decision.headers().items():
                        if name.lower().encode() not in present:
                            headers.append((name.lower().encode(), value.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
