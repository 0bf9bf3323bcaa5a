"""What every request handler may need of the core, built once per process in the app's lifespan, and
typed dependencies for it. Each domain's own services are reached through that domain's
`dependencies.py` (typed providers reading `app.state`), so nothing here knows a domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from threadline.config import Settings
from threadline.core.crypto import SecretBox

if TYPE_CHECKING:  # core sits below db (db stamps rows with core's time); the type is all that is needed
    from threadline.db.engine import Database


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    db: Database
    # Encrypts what the server must read back (LLM keys, session keys, secrets).
    box: SecretBox


async def get_context(connection: HTTPConnection) -> AppContext:
    ctx: AppContext = connection.app.state.ctx
    return ctx


Context = Annotated[AppContext, Depends(get_context)]
