"""Reviewing what the agent did: the git changes of a conversation's repository, one file's diff, and the
sandbox's workspace as a zip archive."""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from threadline.conversations import service as conversations_service
from threadline.conversations.messages import agent_problem, running_sandbox
from threadline.core.errors import Invalid, NotFound, Problem
from threadline.db.engine import Database
from threadline.sandboxes.agent_client import AgentServerError
from threadline.sandboxes.records import SandboxRecord
from threadline.sandboxes.service import SandboxService

_CHUNK = 256 * 1024


class TooLarge(Problem):
    status = 413
    type_slug = "workspace-too-large"


async def _working_dir(sandboxes: SandboxService, row: SandboxRecord, conversation_id: str) -> str:
    """Where the conversation works in its sandbox (its repository's directory, or the workspace)."""
    try:
        info = await sandboxes.client(row).get_conversation(conversation_id)
    except AgentServerError as exc:
        raise agent_problem(exc, conversation_id, "to describe the conversation") from exc
    workspace = (info or {}).get("workspace") or {}
    working_dir = workspace.get("working_dir") if isinstance(workspace, dict) else None
    if not isinstance(working_dir, str) or not working_dir:
        raise NotFound(f"conversation {conversation_id} is not known to its agent server")
    return working_dir


async def git_changes(
    db: Database, sandboxes: SandboxService, *, user_id: str, conversation_id: str, ref: str | None = None
) -> list[dict[str, Any]]:
    row = await running_sandbox(db, sandboxes, user_id=user_id, conversation_id=conversation_id)
    working_dir = await _working_dir(sandboxes, row, conversation_id)
    try:
        return await sandboxes.client(row, timeout=30.0).git_changes(working_dir, ref)
    except AgentServerError as exc:
        raise agent_problem(exc, conversation_id, "the git changes") from exc


def relative_file_path(path: str) -> str:
    """A path inside the repository, as `git/changes` lists it: relative, no `..`."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\x00" in path:
        raise Invalid("path", "must be a path inside the repository, relative, without '..'", location="query")
    return str(pure)


async def git_diff(
    db: Database,
    sandboxes: SandboxService,
    *,
    user_id: str,
    conversation_id: str,
    path: str,
    ref: str | None = None,
) -> dict[str, Any]:
    relative = relative_file_path(path)
    row = await running_sandbox(db, sandboxes, user_id=user_id, conversation_id=conversation_id)
    working_dir = await _working_dir(sandboxes, row, conversation_id)
    try:
        return await sandboxes.client(row, timeout=30.0).git_diff(f"{working_dir.rstrip('/')}/{relative}", ref)
    except AgentServerError as exc:
        raise agent_problem(exc, conversation_id, "the diff") from exc


async def skills(db: Database, sandboxes: SandboxService, *, user_id: str, conversation_id: str) -> dict[str, Any]:
    """The skills of the conversation, as upstream answers them: `{"skills": [{name, type, content,
    triggers}]}` (type "repo" for always-on skills, "knowledge" for triggered ones)."""
    row = await running_sandbox(db, sandboxes, user_id=user_id, conversation_id=conversation_id)
    working_dir = await _working_dir(sandboxes, row, conversation_id)
    try:
        found = await sandboxes.client(row, timeout=30.0).load_skills(working_dir)
    except AgentServerError as exc:
        raise agent_problem(exc, conversation_id, "the skills") from exc
    return {
        "skills": [
            {
                "name": str(item.get("name") or ""),
                "type": "knowledge" if item.get("type") == "knowledge" or item.get("triggers") else "repo",
                "content": str(item.get("content") or ""),
                "triggers": [str(t) for t in item.get("triggers") or []],
                "description": item.get("description") if isinstance(item.get("description"), str) else None,
            }
            for item in found
        ]
    }


@dataclass(frozen=True)
class Archive:
    root: Path
    files: int
    size: int
    limit: int

    def chunks(self) -> Iterator[bytes]:
        return _zip_stream(self.root, self.limit)


async def workspace_archive(
    db: Database, sandboxes: SandboxService, *, user_id: str, conversation_id: str, limit: int
) -> Archive:
    """The conversation's sandbox workspace, read from disk (so a PAUSED sandbox can be downloaded too).
    Over `limit` bytes of files: 413 before anything is sent."""
    async with db.read() as conn:
        conversation = await conversations_service.get_record(conn, user_id=user_id, conversation_id=conversation_id)
    row = (await sandboxes.records_by_id([conversation.sandbox_id])).get(conversation.sandbox_id)
    root = Path(row.work_dir) / "workspace" if row is not None and row.work_dir else None
    if root is None or not root.is_dir():
        raise Problem(
            f"the workspace of conversation {conversation_id} is gone with its sandbox", status=410, type_slug="gone"
        )
    files, size = 0, 0
    for _, _, _, st in _regular_files(root):
        files += 1
        size += st.st_size
    if size > limit:
        raise TooLarge(
            f"the workspace holds {size} bytes in {files} files, over the download limit of {limit} bytes "
            "(THREADLINE_DOWNLOAD_MAX_BYTES)",
            bytes=size,
            limit=limit,
        )
    return Archive(root, files, size, limit)


def _regular_files(root: Path) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """(archive name, directory fd, file name, stat) of every regular file under root. The sandbox owns
    this tree and may change it while we read: nothing is followed through a symbolic link (directories
    are walked by descriptor, files opened relative to them), so no link can lead outside it."""
    for directory, _dirs, names, dir_fd in os.fwalk(root, follow_symlinks=False):
        relative = os.path.relpath(directory, root)
        for name in sorted(names):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield (name if relative == "." else f"{relative}/{name}"), dir_fd, name, st


class _Sink:
    """A write-only stream the zip writer fills and the response drains."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def _zip_stream(root: Path, limit: int) -> Iterator[bytes]:
    sink = _Sink()
    sent = 0
    with zipfile.ZipFile(cast(IO[bytes], sink), mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, dir_fd, name, st in _regular_files(root):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as source:
                if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                    continue  # replaced by something else since the walk
                info = zipfile.ZipInfo(arcname, date_time=_date_time(st.st_mtime))
                info.external_attr = (stat.S_IMODE(st.st_mode) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = st.st_size
                with archive.open(info, mode="w", force_zip64=True) as target:
                    while chunk := source.read(_CHUNK):
                        sent += len(chunk)
                        if sent > limit:
                            # The tree grew past the limit while it was sent: stop rather than send on.
                            raise TooLarge(f"the workspace grew over the download limit of {limit} bytes")
                        target.write(chunk)
                        if len(sink.parts) > 16:
                            yield sink.drain()
            yield sink.drain()
    yield sink.drain()


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.gmtime(max(mtime, 315532800))  # zip dates start in 1980
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
