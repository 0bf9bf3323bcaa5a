"""Prometheus metrics, one registry per application (so several apps in one process never mix counts).

- `threadline_http_requests_total{method,route,status}` and `threadline_http_request_duration_seconds`
  (route is the path template, e.g. `/api/v1/app-conversations/{conversation_id}`, never the raw path;
  requests no route matched are `route="<unmatched>"`, unknown methods `method="OTHER"`);
- `threadline_http_requests_in_flight`;
- `threadline_sandboxes{status}`: sandbox records by stored status, counted in the database at scrape time;
- `threadline_start_task_duration_seconds{status}`: creation to READY or ERROR of each start task;
- `threadline_callback_lag_seconds`: per event batch an agent server delivers, now minus its newest event;
- SQLite, per process: `threadline_sqlite_write_transactions_total`, `threadline_sqlite_writer_lock_wait_seconds_total`
  and `threadline_sqlite_writer_lock_held_seconds_total` (the database admits one writer at a time: the rate of
  held seconds, summed over the processes, near 1.0 means writes are at the database's limit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.requests import HTTPConnection

from threadline.core.context import Context
from threadline.core.errors import NotFound
from threadline.db.engine import Database, WriterLockStats
from threadline.sandboxes.status import SandboxStatus
from threadline.sandboxes.tables import sandboxes

UNMATCHED_ROUTE = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_START_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "threadline_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "threadline_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by method and route template",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "threadline_http_requests_in_flight", "HTTP requests being handled", registry=self.registry
        )
        self.sandboxes = Gauge(
            "threadline_sandboxes",
            "Sandbox records by stored status (counted in the database at scrape time)",
            ("status",),
            registry=self.registry,
        )
        self.start_duration = Histogram(
            "threadline_start_task_duration_seconds",
            "Time from a start task's creation to its READY or ERROR",
            ("status",),
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.callback_lag = Histogram(
            "threadline_callback_lag_seconds",
            "Per event batch from an agent server: time of arrival minus the newest event's timestamp",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )

        self.writer_lock = _WriterLockCollector()
        self.registry.register(self.writer_lock)

    @staticmethod
    def method_label(method: str) -> str:
        return method if method in METHODS else "OTHER"

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = self.method_label(method)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_start_task(self, status: str, created_at: datetime, finished_at: datetime) -> None:
        self.start_duration.labels(status).observe(max(0.0, (finished_at - created_at).total_seconds()))

    def observe_event_batch(self, timestamps: Iterable[datetime | None], now: datetime | None = None) -> None:
        """Observe the lag of a delivered batch: nothing when no event has a readable timestamp."""
        known = [t for t in timestamps if t is not None]
        if not known:
            return
        now = now or datetime.now(UTC)
        self.callback_lag.observe(max(0.0, (now - max(known)).total_seconds()))

    async def refresh(self, db: Database) -> None:
        """What is read at scrape time: the sandbox counts, and the database's writer-lock figures."""
        self.writer_lock.stats = db.writer_lock if db.is_sqlite else None
        await self.refresh_sandboxes(db)

    async def refresh_sandboxes(self, db: Database) -> None:
        query = select(sandboxes.c.status, func.count()).group_by(sandboxes.c.status)
        async with db.read() as conn:
            counts = {status: int(n) for status, n in (await conn.execute(query)).all()}
        for status in SandboxStatus:
            self.sandboxes.labels(status.value).set(counts.pop(status.value, 0))
        for status, n in counts.items():
            self.sandboxes.labels(status).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _WriterLockCollector(Collector):
    """SQLite's writer-lock figures of this process, as counters (nothing on PostgreSQL)."""

    def __init__(self) -> None:
        self.stats: WriterLockStats | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        stats = self.stats
        if stats is None:
            return
        yield CounterMetricFamily(
            "threadline_sqlite_write_transactions",
            "SQLite write transactions of this process",
            value=stats.transactions,
        )
        yield CounterMetricFamily(
            "threadline_sqlite_writer_lock_wait_seconds",
            "Time this process's write transactions waited for the database's one writer lock",
            value=stats.waited_seconds,
        )
        yield CounterMetricFamily(
            "threadline_sqlite_writer_lock_held_seconds",
            "Time this process held the database's one writer lock (every other writer waits meanwhile)",
            value=stats.held_seconds,
        )


router = APIRouter(tags=["Server"])


async def metrics_of(connection: HTTPConnection) -> Metrics | None:
    """This app's metrics registry; None when THREADLINE_METRICS_ENABLED=false."""
    metrics: Metrics | None = connection.app.state.metrics
    return metrics


MetricsOrNone = Annotated[Metrics | None, Depends(metrics_of)]


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(ctx: Context, metrics: MetricsOrNone) -> Response:
    """Prometheus text exposition; no credentials (turn it off with THREADLINE_METRICS_ENABLED=false)."""
    if metrics is None or not ctx.settings.metrics_enabled:
        raise NotFound("metrics are turned off on this server")
    await metrics.refresh(ctx.db)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
