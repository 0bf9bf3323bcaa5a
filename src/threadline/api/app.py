"""The application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from threadline import __version__
from threadline.api import ops
from threadline.api.context import AppContext
from threadline.api.errors import install_error_handlers
from threadline.api.middleware import BodySizeLimit
from threadline.auth.routes import router as users_router
from threadline.config import Settings
from threadline.conversations.routes import router as conversations_router
from threadline.events.routes import router as events_router
from threadline.settings.routes import router as settings_router
from threadline.db.engine import Database
from threadline.db.migrate import upgrade_to_head


def create_app(settings: Settings | None = None, *, db_schema: str | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.resolved_database_url, schema=db_schema)
        await upgrade_to_head(db)
        ctx = AppContext(settings=settings, db=db)
        app.state.ctx = ctx
        try:
            yield
        finally:
            await db.dispose()

    app = FastAPI(
        title="Threadline",
        version=__version__,
        description="Self-hostable OpenHands App Conversations API (v1).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(users_router)
    app.include_router(conversations_router)
    app.include_router(events_router)
    app.include_router(settings_router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
