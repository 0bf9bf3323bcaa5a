"""Follow-up messages to a running conversation."""

from __future__ import annotations

from threadline.api.errors import Conflict, NotFound, Problem
from threadline.conversations import service as conversations_service
from threadline.conversations.models import SandboxStatus
from threadline.conversations.start_models import AppSendMessageRequest, AppSendMessageResponse, TextContent
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError, AgentServerUnavailable
from threadline.sandboxes.service import SandboxGone, SandboxService


async def send_message(
    db: Database, sandboxes: SandboxService, user_id: str, conversation_id: str, request: AppSendMessageRequest
) -> AppSendMessageResponse:
    async with db.read() as conn:
        conversation = await conversations_service.get_row(conn, user_id, conversation_id)
    rows = await sandboxes.rows_by_id([conversation.sandbox_id])
    row = rows.get(conversation.sandbox_id)
    status = sandboxes.effective_status(row) if row is not None else SandboxStatus.MISSING
    if status in (SandboxStatus.PAUSED, SandboxStatus.STARTING):
        raise Conflict(
            f"the conversation's sandbox is {status.value}; resume it (POST /api/v1/sandboxes/{{id}}/resume) "
            "and wait until it is RUNNING",
            sandbox_status=status.value,
        )
    if row is None or status is not SandboxStatus.RUNNING:
        raise SandboxGone(f"the conversation's sandbox is {status.value}", sandbox_status=status.value)
    text = "\n".join(c.text for c in request.content if isinstance(c, TextContent))
    if not text:
        raise Problem("only text content can be sent to the agent", status=422, type_slug="validation-error")
    try:
        # Queuing a message is quick on the agent side: the short agent timeout applies.
        await sandboxes.client(row).send_message(conversation_id, text, run=request.run)
    except AgentServerUnavailable as exc:
        raise Problem("the agent server did not answer; try again", status=503, type_slug="agent-unavailable") from exc
    except AgentServerError as exc:
        if exc.status_code == 404:
            raise NotFound(f"conversation {conversation_id} is not known to its agent server") from exc
        raise Problem(f"the agent server refused the message: {exc}", status=502, type_slug="agent-error") from exc
    return AppSendMessageResponse(success=True, sandbox_status=SandboxStatus.RUNNING)
