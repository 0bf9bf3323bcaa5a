"""`POST /api/v1/conversations/{id}/pending-messages`: messages for a conversation that is not READY yet."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.conversations.dependencies import Pending
from threadline.conversations.messages import message_text
from threadline.conversations.pending import PendingMessageResponse
from threadline.conversations.routes import conversation_id_path
from threadline.conversations.start_models import AppSendMessageRequest

router = APIRouter(prefix="/api/v1/conversations", tags=["Conversations"])


@router.post(
    "/{conversation_id}/pending-messages",
    status_code=201,
    response_model=PendingMessageResponse,
    responses={404: {}, 409: {}, 422: {}, 429: {}},
)
async def add_pending_message(
    pending: Pending,
    request: Annotated[AppSendMessageRequest, Body()],
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> PendingMessageResponse:
    """Queue a message for a conversation that is still starting: the id may be the start task's (before
    the conversation has an id) or the conversation's. Delivered to the agent in order once the conversation
    is READY and its sandbox RUNNING (at once, `queued: false`, if it already is). At most 10 wait
    per conversation (then 429). Kept across restarts until delivered."""
    return await pending.add(user_id=user.id, target_id=conversation_id, text=message_text(request), run=request.run)
