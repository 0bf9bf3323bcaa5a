"""Operational endpoints: liveness, health, readiness (checks the database) and server info."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from threadline import __version__
from threadline.core.context import Context
from threadline.core.errors import Problem
from threadline.sandboxes import runtime
from threadline.sandboxes.dependencies import Pool, Sandboxes

router = APIRouter(tags=["Server"])
_STARTED = time.monotonic()


@router.get("/alive")
async def alive() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health", response_model=str)
async def health() -> str:
    return "OK"


@router.get("/ready", response_model=str)
async def ready(ctx: Context) -> str:
    try:
        async with ctx.db.read() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Problem("the database is not reachable", status=503, type_slug="not-ready") from exc
    return "OK"


@router.get("/server_info")
async def server_info(ctx: Context, sandboxes: Sandboxes, pool: Pool) -> dict[str, Any]:
    return {
        "name": "threadline",
        "version": __version__,
        "api": "openhands-app-conversations-v1",
        "database": "sqlite" if ctx.db.is_sqlite else "postgresql",
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        # `threadline serve --workers N`: the worker process that answered, and how many there are.
        "worker_pid": os.getpid(),
        "workers": ctx.settings.workers or 1,
        "warm_pool": await pool.stats(),
        "sandboxes": {
            "backend": ctx.settings.sandbox_backend,
            # Installed agent-server versions, newest (the default spec's) first; each is a sandbox spec.
            "agent_server_versions": list(runtime.installed(ctx.settings.resolved_runtime_dir)),
            **sandboxes.backend.limits_info(),
        },
    }
