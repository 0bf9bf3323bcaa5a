"""The application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from threadline import __version__
from threadline.api import ops
from threadline.api.errors import install_error_handlers
from threadline.api.middleware import BodySizeLimit
from threadline.api.openapi import install_problem_docs
from threadline.auth.cache import KeyCache
from threadline.auth.routes import router as users_router
from threadline.auth.sessions import ConsoleSessions
from threadline.auth.tables import users
from threadline.config import Settings
from threadline.console.routes import router as console_router
from threadline.conversations.pending import PendingMessages
from threadline.conversations.pending_routes import router as pending_router
from threadline.conversations.routes import router as conversations_router
from threadline.conversations.start import StartService
from threadline.conversations.start_routes import router as start_router
from threadline.conversations.stream_routes import router as conversation_stream_router
from threadline.conversations.workspace_routes import router as workspace_router
from threadline.core.context import AppContext
from threadline.core.crypto import SecretBox
from threadline.core.direct import DirectDispatchApp
from threadline.db.engine import Database
from threadline.db.migrate import upgrade_to_head
from threadline.events.routes import router as events_router
from threadline.idempotency.service import IdempotencyService
from threadline.observability import metrics as observability_metrics
from threadline.observability.metrics import Metrics
from threadline.observability.middleware import RequestObservability
from threadline.ratelimit.service import RateLimiter, RateLimitHeaders
from threadline.sandboxes.instances import InstanceLease
from threadline.sandboxes.pool import WarmPool
from threadline.sandboxes.proxy_routes import router as agent_proxy_router
from threadline.sandboxes.routes import router as sandboxes_router
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.setup import build_backend
from threadline.secrets.routes import router as secrets_router
from threadline.settings.routes import router as settings_router
from threadline.sharing.routes import router as sharing_router
from threadline.streams.hub import StreamHub, events_topic
from threadline.webhooks.live import LivePresenter
from threadline.webhooks.routes import router as webhooks_router
from threadline.webhooks.sandbox_conversations import SandboxConversations

log = logging.getLogger("threadline")


def create_app(settings: Settings | None = None, *, db_schema: str | None = None, migrate: bool = True) -> FastAPI:
    """The app. `migrate=False` for the workers of `threadline serve`, whose supervisor migrated already."""
    settings = settings or Settings()
    # One registry per app: several apps in one process (tests, replicas) never mix their counts.
    metrics = Metrics() if settings.metrics_enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(
            settings.resolved_database_url,
            schema=db_schema or settings.database_schema,
            sqlite_threads=settings.sqlite_threads,
            pool_size=settings.database_pool_size,
        )
        if migrate:
            await upgrade_to_head(db)
        backend, transport = build_backend(settings)
        # One pooled client for every agent-server call (no client, TLS context or pool per request); its
        # transport reaches isolated sandboxes through their Unix sockets.
        http = httpx.AsyncClient(trust_env=False, transport=transport)
        box = SecretBox(settings.resolved_secret_key)
        await _warn_if_unisolated(db, settings)
        lease = InstanceLease(db, ttl_seconds=settings.instance_lease_ttl_seconds)
        await lease.register()
        sandboxes = SandboxService(db, settings, backend, http, box, lease)
        streams = StreamHub(
            settings.max_streams_per_user, settings.stream_heartbeat_seconds, settings.stream_poll_seconds
        )
        # Backfilled events (those the callbacks missed) reach this process's streams at once too.
        sandboxes.conversations = SandboxConversations(
            db, on_events_stored=lambda conversation_id: streams.notify(events_topic(conversation_id))
        )
        pool = WarmPool(sandboxes, settings.warm_pool_size, refill_interval=settings.warm_pool_refill_interval)
        pending = PendingMessages(db, sandboxes)
        starts = StartService(db, settings, sandboxes, pool, metrics=metrics, pending=pending)
        # What handlers reach through typed dependencies: the core's `Context`, each domain's own
        # (`sandboxes.dependencies`, `conversations.dependencies`, ...), read from here.
        app.state.ctx = AppContext(settings=settings, db=db, box=box)
        auth_cache = KeyCache(db)
        auth_cache.start()
        app.state.auth_cache = auth_cache
        app.state.console_sessions = ConsoleSessions(settings.resolved_secret_key)
        app.state.sandboxes = sandboxes
        app.state.pool = pool
        app.state.starts = starts
        app.state.pending = pending
        live = LivePresenter(
            db, sandboxes, refresh_seconds=settings.live_refresh_seconds, stale_seconds=settings.live_stale_seconds
        )
        app.state.live_fields = live
        app.state.idempotency = IdempotencyService(db, settings, box)
        app.state.rate_limiter = RateLimiter.from_settings(settings)
        app.state.metrics = metrics
        app.state.streams = streams
        await sandboxes.adopt_orphans()
        maintenance = asyncio.create_task(
            _maintain(lease, sandboxes, starts, pending, settings.instance_heartbeat_seconds)
        )
        watchdog = asyncio.create_task(_enforce_limits(sandboxes))
        pool.start()
        interrupted = await starts.close_interrupted()
        if interrupted:
            log.warning("%d start tasks were interrupted by the last shutdown and are now ERROR", interrupted)
        try:
            yield
        finally:
            # Normally done already (api.server.Server ends streams before it waits for requests in flight).
            streams.close()
            await live.close()
            await starts.shutdown()
            await pool.stop()
            await auth_cache.stop()
            for task in (maintenance, watchdog):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await sandboxes.shutdown()
            await backend.close()
            await lease.unregister()
            await http.aclose()
            await db.dispose()

    # DirectDispatchApp: the hot routes' plain requests skip FastAPI's routing (core.direct).
    app = DirectDispatchApp(
        title="Threadline",
        version=__version__,
        description="Self-hostable OpenHands App Conversations API (v1).",
        lifespan=lifespan,
        # A trailing slash is a 404 problem that names the path meant, not a bare 307 (which clients follow
        # with a changed method or not at all).
        redirect_slashes=False,
    )
    install_error_handlers(app)
    install_problem_docs(app, (settings.max_tags, settings.max_tag_key_length, settings.max_tag_value_length))
    # A request is matched against the routes in this order, so the hot ones come first (conversations,
    # events, agent callbacks); a route whose path another's pattern would also match comes before it.
    app.include_router(ops.router)
    # Before the conversations' routes: "start-tasks" and "stream" must not be taken for a conversation id.
    app.include_router(start_router)
    app.include_router(conversation_stream_router)
    app.include_router(conversations_router)
    app.include_router(events_router)
    app.include_router(webhooks_router)
    app.include_router(observability_metrics.router)
    app.include_router(users_router)
    app.include_router(workspace_router)
    app.include_router(pending_router)
    app.include_router(sandboxes_router)
    app.include_router(settings_router)
    app.include_router(secrets_router)
    app.include_router(sharing_router)
    app.include_router(agent_proxy_router)
    # Last: the console's pages (/, /conversations, /shared/..., /sign-in, /console/static/...) take no path
    # of the API's.
    app.include_router(console_router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitHeaders)
    # Added last, so outermost: it sees (and ids, logs and counts) every answer, 413 and 429 included.
    app.add_middleware(RequestObservability, metrics=metrics, static_paths=lambda: _static_paths(app))
    return app


def _static_paths(app: FastAPI) -> frozenset[str]:
    """Paths of the app's routes that have no parameters (their path is their template)."""
    return frozenset(p for r in app.routes if isinstance(p := getattr(r, "path", None), str) and "{" not in p)


async def _maintain(
    lease: InstanceLease, sandboxes: SandboxService, starts: StartService, pending: PendingMessages, interval: float
) -> None:
    """Keep this instance's lease fresh, adopt the sandboxes of instances that went away, and deliver pending
    messages that can be delivered now (after a restart or a resume)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await lease.heartbeat()
            await sandboxes.adopt_orphans()
            await starts.close_interrupted()
            await pending.deliver_due()
        except Exception:
            log.exception("sandbox maintenance failed; retrying")


async def _enforce_limits(sandboxes: SandboxService, interval: float = 1.0) -> None:
    """End sandboxes over their memory limit (where no kernel limit does it) and record why."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sandboxes.enforce_limits()
        except Exception:
            log.exception("sandbox limit check failed; retrying")


async def _warn_if_unisolated(db: Database, settings: Settings) -> None:
    if settings.sandbox_backend != "process":
        return
    async with db.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(users))).scalar_one()
    if count > 1:
        log.warning(
            "THREADLINE_SANDBOX_BACKEND=process runs every agent as this server's OS user with no isolation, "
            "and %d users exist: any user's agent can read the database, the server secret and other users' "
            "work. Use the default isolating backend (bwrap) for more than one user.",
            count,
        )
