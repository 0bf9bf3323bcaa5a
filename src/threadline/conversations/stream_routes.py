"""GET /api/v1/app-conversations/stream: a user's conversation changes as Server-Sent Events, for a list view.

Change detection reads the database (so it sees what every process wrote): on each poll, and at once when
this process stores an agent callback for one of the user's conversations, the stream compares each
conversation's (version, updated_at) and its sandbox's (status, updated_at) with what it saw last. Every
change a user can see moves one of them: title, tags, public, status, execution status and metrics bump the
version. Not resumable: a client that reconnects fetches the list again (connect the stream first, then
fetch the list, so no change falls between the two).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Response

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.conversations import service
from threadline.conversations.dependencies import Live, LiveFields
from threadline.core.context import Context
from threadline.db.engine import Database
from threadline.streams import sse
from threadline.streams.dependencies import Hub, open_stream
from threadline.streams.hub import StreamHub, conversations_topic

router = APIRouter(prefix="/api/v1/app-conversations", tags=["Conversations"])

Snapshot = dict[str, tuple[Any, ...]]

_EXAMPLE = (
    "retry: 1000\n\n"
    'event: created\ndata: {"id": "4f2a...", "title": null, "sandbox_status": "STARTING", ...}\n\n'
    'event: updated\ndata: {"id": "4f2a...", "title": "Fix the tests", "execution_status": "running", ...}\n\n'
    'event: deleted\ndata: {"id": "4f2a...", "deleted": true}\n\n'
    ": keep-alive\n\n"
)


async def _snapshot(db: Database, user_id: str) -> Snapshot:
    return await service.change_keys(db, user_id=user_id)


def _deleted(conversation_id: str) -> bytes:
    return sse.frame(json.dumps({"id": conversation_id, "deleted": True}), event="deleted")


async def _changes(db: Database, hub: StreamHub, live: LiveFields, user: User, seen: Snapshot) -> AsyncIterator[bytes]:
    """Changes after `seen` (read before the response began: a client that connects, then fetches the
    list, misses nothing). State is compared, not notifications counted, so no change is lost."""
    yield sse.retry()
    with hub.watch(conversations_topic(user.id)) as woken:
        beat = time.monotonic() + hub.heartbeat_seconds
        while not hub.closing:
            await hub.wait(woken, max(0.0, min(hub.poll_seconds, beat - time.monotonic())))
            if hub.closing:
                return
            woken.clear()
            now = await _snapshot(db, user.id)
            changed = [cid for cid, key in now.items() if seen.get(cid) != key]
            gone = [cid for cid in seen if cid not in now]
            found = await service.batch_get(db, user_id=user.id, ids=changed)
            answered = iter(await live(user, [item for item in found if item is not None]) if any(found) else [])
            for cid, stored in zip(changed, found, strict=True):
                if stored is None:
                    gone.append(cid)
                    continue
                item = next(answered)
                yield sse.frame(item.model_dump_json(), event="created" if cid not in seen else "updated")
            for cid in gone:
                if cid in seen:
                    yield _deleted(cid)
            seen = now
            if time.monotonic() >= beat:
                yield sse.comment("keep-alive")
                beat = time.monotonic() + hub.heartbeat_seconds


@router.get(
    "/stream",
    summary="Stream Conversation Changes",
    response_class=sse.EventStreamResponse,
    responses=sse.openapi_response(
        "Server-Sent Events, one per change of the user's conversations: `created` and `updated` carry the "
        'conversation as GET answers it, `deleted` carries `{"id": ..., "deleted": true}`; a comment line is a '
        "heartbeat. Not resumable: after a reconnect, fetch the list again",
        _EXAMPLE,
    ),
)
async def stream_conversation_changes(
    ctx: Context, hub: Hub, live: Live, user: User = Depends(current_user)
) -> Response:
    """A Threadline extension: changes of the caller's conversations (created; title, tags, public, status,
    execution status or cost changed; deleted) as they happen, for a list view."""
    seen = await _snapshot(ctx.db, user.id)
    return open_stream(hub, f"user:{user.id}", _changes(ctx.db, hub, live, user, seen))
