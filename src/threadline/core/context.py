"""What every request handler may need, built once per process in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from threadline.config import Settings

if TYPE_CHECKING:  # core sits below db (db stamps rows with core's time); the type is all that is needed
    from threadline.db.engine import Database


@dataclass
class AppContext:
    settings: Settings
    db: Database
    # Filled by later domains (sandbox service, HTTP clients); kept loose to avoid import cycles.
    services: dict[str, Any] = field(default_factory=dict)


async def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx
