"""Typed dependencies of the sandboxes domain (set on `app.state` by the app factory)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from threadline.sandboxes.pool import WarmPool
from threadline.sandboxes.service import SandboxService


async def sandbox_service(connection: HTTPConnection) -> SandboxService:
    service: SandboxService = connection.app.state.sandboxes
    return service


async def warm_pool(connection: HTTPConnection) -> WarmPool:
    pool: WarmPool = connection.app.state.pool
    return pool


Sandboxes = Annotated[SandboxService, Depends(sandbox_service)]
Pool = Annotated[WarmPool, Depends(warm_pool)]
