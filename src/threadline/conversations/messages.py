"""Follow-up messages to a running conversation."""

from __future__ import annotations

from threadline.conversations import service as conversations_service
from threadline.conversations.start_models import AppSendMessageRequest, AppSendMessageResponse, TextContent
from threadline.core.errors import Conflict, NotFound, Problem
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError, AgentServerUnavailable
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxGone, SandboxService
from threadline.sandboxes.status import SandboxStatus


async def running_sandbox(
    db: Database, sandboxes: SandboxService, *, user_id: str, conversation_id: str
) -> SandboxRecord:
    """The sandbox record of the caller's conversation, which must be RUNNING: 404 for another user's or
    an unknown conversation, 409 while PAUSED or STARTING, 410 when ERROR or MISSING."""
    async with db.read() as conn:
        conversation = await conversations_service.get_record(conn, user_id=user_id, conversation_id=conversation_id)
    rows = await sandboxes.records_by_id([conversation.sandbox_id])
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
    return row


def agent_problem(exc: AgentServerError, conversation_id: str, doing: str) -> Problem:
    """What a client is told when the agent server failed at something."""
    if isinstance(exc, AgentServerUnavailable):
        return Problem("the agent server did not answer; try again", status=503, type_slug="agent-unavailable")
    if exc.status_code == 404:
        return NotFound(f"conversation {conversation_id} is not known to its agent server")
    return Problem(f"the agent server refused {doing}: {exc}", status=502, type_slug="agent-error")


def message_text(request: AppSendMessageRequest) -> str:
    """The text the agent gets from a message (its text parts); 422 when it has none."""
    text = "\n".join(c.text for c in request.content if isinstance(c, TextContent))
    if not text:
        raise Problem("only text content can be sent to the agent", status=422, type_slug="validation-error")
    return text


async def send_message(
    db: Database, sandboxes: SandboxService, *, user_id: str, conversation_id: str, request: AppSendMessageRequest
) -> AppSendMessageResponse:
    row = await running_sandbox(db, sandboxes, user_id=user_id, conversation_id=conversation_id)
    text = message_text(request)
    try:
        # Queuing a message is quick on the agent side: the short agent timeout applies.
        await sandboxes.client(row).send_message(conversation_id, text, run=request.run)
    except AgentServerError as exc:
        raise agent_problem(exc, conversation_id, "the message") from exc
    return AppSendMessageResponse(success=True, sandbox_status=SandboxStatus.RUNNING)
