"""HTTP routes for reviewing a conversation's work: git changes, a file's diff, the workspace download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from threadline.auth.dependencies import current_user
from threadline.auth.service import User
from threadline.conversations import workspace
from threadline.conversations.routes import conversation_id_path
from threadline.conversations.validation import BranchName
from threadline.core.context import Context
from threadline.sandboxes.dependencies import Sandboxes

router = APIRouter(prefix="/api/v1/app-conversations", tags=["Conversations"])
_REF = (
    "What to compare against, e.g. HEAD (uncommitted work only) or a branch; default: the agent server's "
    "base for review (the remote's default branch)"
)


@router.get("/{conversation_id}/git/changes", responses={404: {}, 409: {}, 410: {}, 502: {}, 503: {}})
async def get_git_changes(
    sandboxes: Sandboxes,
    ctx: Context,
    ref: Annotated[BranchName | None, Query(description=_REF)] = None,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> list[dict[str, Any]]:
    """What the agent changed in the conversation's repository: `[{"status": "MODIFIED", "path": ...}]`
    (paths relative to the repository). The sandbox must be RUNNING (409 while PAUSED or STARTING)."""
    return await workspace.git_changes(ctx.db, sandboxes, user_id=user.id, conversation_id=conversation_id, ref=ref)


@router.get("/{conversation_id}/git/diff", responses={404: {}, 409: {}, 410: {}, 422: {}, 502: {}, 503: {}})
async def get_git_diff(
    sandboxes: Sandboxes,
    ctx: Context,
    path: Annotated[
        str,
        Query(
            min_length=1,
            max_length=4096,
            description="A path as git/changes lists it: relative, without '..'",
            # What relative_file_path accepts.
            json_schema_extra={"pattern": r"^(?!/)(?!(.*/)?\.\.(/|$))[^\x00]+$"},
        ),
    ],
    ref: Annotated[BranchName | None, Query(description=_REF)] = None,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> dict[str, Any]:
    """One file's contents before and after: `{"original": ..., "modified": ...}`."""
    return await workspace.git_diff(
        ctx.db, sandboxes, user_id=user.id, conversation_id=conversation_id, path=path, ref=ref
    )


@router.get("/{conversation_id}/skills", responses={404: {}, 409: {}, 410: {}, 502: {}, 503: {}})
async def get_skills(
    sandboxes: Sandboxes,
    ctx: Context,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> dict[str, Any]:
    """The skills the conversation's agent has: the repository's own (`.openhands/skills`, `AGENTS.md`, ...)
    and the sandbox user's, as `{"skills": [{"name", "type": "repo" | "knowledge", "content", "triggers",
    "description"}]}`. The sandbox must be RUNNING (409 otherwise)."""
    return await workspace.skills(ctx.db, sandboxes, user_id=user.id, conversation_id=conversation_id)


@router.get(
    "/{conversation_id}/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, 404: {}, 410: {}, 413: {}},
)
async def download_workspace(
    sandboxes: Sandboxes,
    ctx: Context,
    conversation_id: str = Depends(conversation_id_path),
    user: User = Depends(current_user),
) -> StreamingResponse:
    """The sandbox's workspace as a zip stream (also while the sandbox is PAUSED). Only regular files;
    symbolic links are left out. Over THREADLINE_DOWNLOAD_MAX_BYTES of files: 413 problem."""
    archive = await workspace.workspace_archive(
        ctx.db, sandboxes, user_id=user.id, conversation_id=conversation_id, limit=ctx.settings.download_max_bytes
    )
    return StreamingResponse(
        archive.chunks(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="conversation-{conversation_id}-workspace.zip"',
            "X-Workspace-Files": str(archive.files),
            "X-Workspace-Bytes": str(archive.size),
        },
    )
