"""Typed dependencies of the conversations domain (set on `app.state` by the app factory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol

from fastapi import Depends
from starlette.requests import HTTPConnection

from threadline.auth.service import User
from threadline.conversations.mapping import LiveState
from threadline.conversations.models import AppConversation
from threadline.conversations.pending import PendingMessages
from threadline.conversations.records import AnyStored, StoredConversation
from threadline.conversations.start import StartService


class LiveFields(Protocol):
    """The wire models of stored conversations about to be answered, their live fields (sandbox status,
    live execution status, URLs) filled. Provided by the layer that talks to agent servers
    (`webhooks.live.present`), above this one."""

    async def __call__(self, user: User, items: Sequence[StoredConversation]) -> list[AppConversation]: ...

    async def resolve(self, user: User, items: Sequence[AnyStored]) -> list[tuple[AnyStored, LiveState]]:
        """The same, as each conversation (as it now is) with its live fields, for the pages serialised
        without models (`conversations.mapping.to_wire`)."""
        ...


async def start_service(connection: HTTPConnection) -> StartService:
    service: StartService = connection.app.state.starts
    return service


async def pending_messages(connection: HTTPConnection) -> PendingMessages:
    pending: PendingMessages = connection.app.state.pending
    return pending


async def live_fields(connection: HTTPConnection) -> LiveFields:
    fill: LiveFields = connection.app.state.live_fields
    return fill


Starts = Annotated[StartService, Depends(start_service)]
Pending = Annotated[PendingMessages, Depends(pending_messages)]
Live = Annotated[LiveFields, Depends(live_fields)]
