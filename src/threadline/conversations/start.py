"""Starting conversations: a start task walks WORKING -> ... -> READY (or ERROR) in the background.

Every transition is stored (status, time), so any Threadline process can report the task, and a task
interrupted by a server restart is closed as ERROR on the next start instead of staying WORKING.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from threadline.config import Settings
from threadline.conversations import service as conversations_service
from threadline.conversations.models import ProviderType
from threadline.conversations.pending import PendingMessages
from threadline.conversations.start_models import (
    TERMINAL_STATUSES,
    AppConversationStartRequest,
    AppConversationStartTask,
    AppConversationStartTaskPage,
    AppConversationStartTaskSortOrder,
    AppConversationStartTaskStatus,
    TextContent,
)
from threadline.conversations.tables import conversations, start_tasks
from threadline.core.errors import NotFound, Problem
from threadline.core.ids import new_id
from threadline.core.pagination import Pager, filters_fingerprint
from threadline.core.time import as_utc
from threadline.db.engine import Database
from threadline.db.types import utcnow
from threadline.observability.metrics import Metrics
from threadline.sandboxes import runtime
from threadline.sandboxes.agent_client import AgentServerClient, AgentServerError, explicit_agent, llm_agent_settings
from threadline.sandboxes.pool import WarmPool
from threadline.sandboxes.service import SandboxService
from threadline.sandboxes.status import SandboxStatus
from threadline.secrets import service as secrets_service
from threadline.secrets.service import StoredSecret
from threadline.settings.service import LLMConfig, effective_llm

log = logging.getLogger("threadline.start")
Status = AppConversationStartTaskStatus
REDACTED = "**********"
_TERMINAL_VALUES = [s.value for s in TERMINAL_STATUSES]
# A conversation started in one of these sandboxes resumes it first (a new agent server, same directory).
_RESUMABLE = (SandboxStatus.PAUSED, SandboxStatus.ERROR, SandboxStatus.MISSING)
# `_transition(owner=...)` default: any owner.
_ANY_OWNER = object()

_DEFAULT_GIT_HOSTS = {
    ProviderType.github: "https://github.com/{repository}.git",
    ProviderType.gitlab: "https://gitlab.com/{repository}.git",
    ProviderType.bitbucket: "https://bitbucket.org/{repository}.git",
}

# A private repository is cloned with the token stored as the provider's secret (its name, and the user
# name the provider expects beside a token in HTTP basic auth).
PROVIDER_TOKENS = {
    ProviderType.github: ("GITHUB_TOKEN", "x-access-token"),
    ProviderType.gitlab: ("GITLAB_TOKEN", "oauth2"),
    ProviderType.bitbucket: ("BITBUCKET_TOKEN", "x-token-auth"),
    ProviderType.bitbucket_data_center: ("BITBUCKET_DATA_CENTER_TOKEN", "x-token-auth"),
    ProviderType.forgejo: ("FORGEJO_TOKEN", "oauth2"),
    ProviderType.azure_devops: ("AZURE_DEVOPS_TOKEN", "pat"),
}


class StartStepFailed(Exception):
    """A start step failed; the message is shown in the task's `detail` (after redaction)."""


def redacted_request(request: AppConversationStartRequest) -> dict[str, Any]:
    data = request.model_dump(mode="json")
    if data.get("secrets"):
        data["secrets"] = dict.fromkeys(data["secrets"], REDACTED)
    return data


def row_to_task(row: Row[Any]) -> AppConversationStartTask:
    """The one mapping from a start_tasks row to the wire model (whose fields are the row's, typed)."""
    return AppConversationStartTask(
        id=row.id,
        created_by_user_id=row.user_id,
        status=row.status,
        detail=row.detail,
        app_conversation_id=row.app_conversation_id,
        sandbox_id=row.sandbox_id,
        agent_server_url=row.agent_server_url,
        request=row.request,
        created_at=row.created_at,
        updated_at=row.updated_at,
        history=row.history,
    )


def clone_url(settings: Settings, repository: str, provider: ProviderType | None) -> str:
    if settings.git_url_template:
        return settings.git_url_template.format(repository=repository)
    template = _DEFAULT_GIT_HOSTS.get(provider or ProviderType.github)
    if template is None:
        raise StartStepFailed(f"no clone URL known for provider {provider}; set THREADLINE_GIT_URL_TEMPLATE")
    return template.format(repository=repository)


def clone_token(request: AppConversationStartRequest, stored: Sequence[StoredSecret]) -> tuple[str, str] | None:
    """(user name, token) to clone `selected_repository` with: the provider's token secret from the start
    request, else from the user's stored secrets; None to clone without credentials."""
    known = PROVIDER_TOKENS.get(request.git_provider or ProviderType.github)
    if known is None:
        return None
    name, user_name = known
    value = (request.secrets or {}).get(name) or next((s.value for s in stored if s.name == name), None)
    return (user_name, value) if value else None


@dataclass
class _StartRun:
    """What the steps of one start share, filled in as they go."""

    task_id: str
    user_id: str
    request: AppConversationStartRequest
    # Values kept out of the task's `detail` should a step fail (keys, secrets).
    redact: list[str]
    llm: LLMConfig = field(init=False)
    model: str = ""
    stored: list[StoredSecret] = field(default_factory=list)
    conversation_id: str = ""
    sandbox: Any = None
    agent: AgentServerClient = field(init=False)
    # The sandbox's workspace, then the repository's directory in it once cloned.
    working_dir: str = ""


class StartService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        sandboxes: SandboxService,
        pool: WarmPool | None = None,
        *,
        metrics: Metrics | None = None,
        pending: PendingMessages | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.sandboxes = sandboxes
        self.pool = pool
        self.metrics = metrics
        self.pending = pending
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, *, user_id: str, task_id: str) -> AppConversationStartTask:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(start_tasks).where(start_tasks.c.id == task_id, start_tasks.c.user_id == user_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"start task {task_id} not found")
        return row_to_task(row)

    async def batch_get(self, *, user_id: str, ids: Sequence[str]) -> list[AppConversationStartTask | None]:
        if not ids:
            return []
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(start_tasks).where(start_tasks.c.id.in_(list(set(ids))), start_tasks.c.user_id == user_id)
                )
            ).all()
        found = {r.id: row_to_task(r) for r in rows}
        return [found.get(i) for i in ids]

    @staticmethod
    def _where(*, user_id: str, conversation_id: str | None, created_at_gte: datetime | None) -> list[Any]:
        clauses = [start_tasks.c.user_id == user_id]
        if conversation_id is not None:
            clauses.append(start_tasks.c.app_conversation_id == conversation_id)
        if created_at_gte is not None:
            clauses.append(start_tasks.c.created_at >= created_at_gte)
        return clauses

    async def search(
        self,
        user_id: str,
        *,
        conversation_id: str | None = None,
        created_at_gte: datetime | None = None,
        sort: AppConversationStartTaskSortOrder = AppConversationStartTaskSortOrder.CREATED_AT_DESC,
        limit: int = 100,
        page_id: str | None = None,
    ) -> AppConversationStartTaskPage:
        created_at_gte = as_utc(created_at_gte) if created_at_gte is not None else None
        secret = self.settings.resolved_secret_key
        fingerprint = filters_fingerprint(
            {"conversation_id": conversation_id, "created_at_gte": created_at_gte and created_at_gte.isoformat()}
        )
        column = start_tasks.c.created_at if sort.value.startswith("CREATED") else start_tasks.c.updated_at
        pager = Pager(
            secret, "start-tasks", sort.value, fingerprint, column, start_tasks.c.id, sort.value.endswith("DESC")
        )
        query = pager.query(
            select(start_tasks).where(
                *self._where(user_id=user_id, conversation_id=conversation_id, created_at_gte=created_at_gte)
            ),
            page_id,
            limit,
        )
        async with self.db.read() as conn:
            rows, next_page_id = pager.split((await conn.execute(query)).all(), limit)
        return AppConversationStartTaskPage(items=[row_to_task(r) for r in rows], next_page_id=next_page_id)

    async def count(
        self, user_id: str, *, conversation_id: str | None = None, created_at_gte: datetime | None = None
    ) -> int:
        created_at_gte = as_utc(created_at_gte) if created_at_gte is not None else None
        query = (
            select(func.count())
            .select_from(start_tasks)
            .where(*self._where(user_id=user_id, conversation_id=conversation_id, created_at_gte=created_at_gte))
        )
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    # -- starting -------------------------------------------------------------------------------

    async def begin(self, user_id: str, request: AppConversationStartRequest) -> AppConversationStartTask:
        """Validate what can be checked at once, store the task (WORKING) and start it in the background."""
        s = self.settings
        limits = conversations_service.TagLimits(s.max_tags, s.max_tag_key_length, s.max_tag_value_length)
        conversations_service.check_tags(request.tags, limits)
        await self._check_sandbox_capacity(user_id, request)
        task_id = new_id()
        now = utcnow()
        async with self.db.write() as conn:
            await conn.execute(
                start_tasks.insert().values(
                    id=task_id,
                    user_id=user_id,
                    status=Status.WORKING.value,
                    detail=None,
                    app_conversation_id=request.conversation_id.hex if request.conversation_id else None,
                    sandbox_id=None,
                    agent_server_url=None,
                    request=redacted_request(request),
                    owner_instance=self.sandboxes.owner,
                    history=[{"status": Status.WORKING.value, "at": now.isoformat()}],
                    created_at=now,
                    updated_at=now,
                )
            )
        # Read before the work starts: the answer is the task as created (WORKING), whatever the
        # background work has done by the time a read after it would return.
        task = await self.get(user_id=user_id, task_id=task_id)
        job = asyncio.create_task(self._run(task_id=task_id, user_id=user_id, request=request))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        return task

    async def _check_sandbox_capacity(self, user_id: str, request: AppConversationStartRequest) -> None:
        """429 now, not an ERROR task later, when the start would create or resume a sandbox beyond the cap.

        Resolves the sandbox as the start does (`_sandbox_wanted`); what cannot be resolved here (a missing
        parent or sandbox) is left for the task to report. The sandbox service re-checks atomically when it
        takes the slot.
        """
        try:
            sandbox_id = await self._sandbox_wanted(user_id, request)
        except NotFound:
            return
        if sandbox_id is None:
            await self.sandboxes.check_capacity(user_id=user_id)
            return
        row = (await self.sandboxes.records_by_id([sandbox_id])).get(sandbox_id)
        if row is not None and row.user_id == user_id:
            if self.sandboxes.effective_status(row) in _RESUMABLE:
                await self.sandboxes.check_capacity(user_id=user_id, exclude=sandbox_id)

    async def stream(self, *, user_id: str, task_id: str, poll: float = 0.2) -> AsyncIterator[AppConversationStartTask]:
        """Yield the task each time its status changes, ending with READY or ERROR."""
        last: str | None = None
        while True:
            task = await self.get(user_id=user_id, task_id=task_id)
            if task.status.value != last:
                last = task.status.value
                yield task
            if task.status in TERMINAL_STATUSES:
                return
            await asyncio.sleep(poll)

    async def _transition(
        self, task_id: str, status: Status, *, owner: str | object | None = _ANY_OWNER, **values: Any
    ) -> bool:
        """Move a task on and record it in its history. A task that ended (READY or ERROR) never moves
        again; with `owner`, only a task still owned by that instance moves. Under the row lock, so two
        processes closing the same task (or a task and its own runner) cannot both write."""
        now = utcnow()
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(
                        start_tasks.c.status,
                        start_tasks.c.owner_instance,
                        start_tasks.c.history,
                        start_tasks.c.created_at,
                    )
                    .where(start_tasks.c.id == task_id)
                    .with_for_update()
                )
            ).first()
            if row is None or row.status in _TERMINAL_VALUES:
                return False
            if owner is not _ANY_OWNER and row.owner_instance != owner:
                return False
            history = [*row.history, {"status": status.value, "at": now.isoformat()}]
            await conn.execute(
                update(start_tasks)
                .where(start_tasks.c.id == task_id)
                .values(status=status.value, history=history, updated_at=now, **values)
            )
        if self.metrics is not None and status in TERMINAL_STATUSES:
            self.metrics.observe_start_task(status.value, row.created_at, now)
        return True

    async def _run(self, *, task_id: str, user_id: str, request: AppConversationStartRequest) -> None:
        secrets = [v for v in (request.secrets or {}).values() if v]
        try:
            await self._start(task_id=task_id, user_id=user_id, request=request, secrets=secrets)
        except asyncio.CancelledError:
            await asyncio.shield(self._fail(task_id, "the server stopped while the conversation was starting", secrets))
            raise
        except (StartStepFailed, Problem, AgentServerError) as exc:
            await self._fail(task_id, str(getattr(exc, "detail", None) or exc), secrets)
        except Exception as exc:
            log.exception("start task %s failed", task_id)
            await self._fail(task_id, f"internal error while starting: {type(exc).__name__}", secrets)
        finally:
            if self.pool is not None and self.pool.enabled:
                self.pool.replenish()

    async def _fail(self, task_id: str, detail: str, secrets: list[str]) -> None:
        for value in sorted(secrets, key=len, reverse=True):
            detail = detail.replace(value, REDACTED)
        await self._transition(task_id, Status.ERROR, detail=detail[:2000])

    def _repository_url(self, request: AppConversationStartRequest) -> str | None:
        if not request.selected_repository:
            return None
        return clone_url(self.settings, request.selected_repository, request.git_provider)

    async def _start(
        self, *, task_id: str, user_id: str, request: AppConversationStartRequest, secrets: list[str]
    ) -> None:
        """The start, step by step; each step moves the task on and may fail it with its reason."""
        run = _StartRun(task_id=task_id, user_id=user_id, request=request, redact=secrets)
        await self._resolve_settings(run)
        await self._acquire_sandbox(run)
        await self._prepare_repository(run)
        await self._transition(task_id, Status.SETTING_UP_SKILLS)
        await self._create_conversation(run)
        await self._transition(task_id, Status.READY, agent_server_url=self.sandboxes.agent_url(run.sandbox))
        await self._deliver_pending(run)

    async def _sandbox_wanted(self, user_id: str, request: AppConversationStartRequest) -> str | None:
        """The sandbox a start goes into: the one asked for, else its parent's (sub-conversations share it);
        None for a new one (or one from the warm pool). NotFound for a parent the user does not have. The
        capacity check and the start both ask this, so they cannot disagree."""
        if request.sandbox_id:
            return request.sandbox_id
        if request.parent_conversation_id is None:
            return None
        async with self.db.read() as conn:
            parent = await conversations_service.get_record(
                conn, user_id=user_id, conversation_id=request.parent_conversation_id.hex
            )
        sandbox_id: str = parent.sandbox_id
        return sandbox_id

    async def _resolve_settings(self, run: _StartRun) -> None:
        """The LLM, the user's secrets and the conversation's id (refused when taken)."""
        request = run.request
        run.llm = await effective_llm(self.db, self.settings, run.user_id, model_override=request.llm_model)
        if not run.llm.model:
            raise StartStepFailed("no LLM model configured: set one with POST /api/v1/settings or THREADLINE_LLM_MODEL")
        run.model = run.llm.model
        if run.llm.api_key:
            run.redact.append(run.llm.api_key)
        run.stored = await secrets_service.stored_secrets(self.db, self.sandboxes.box, user_id=run.user_id)
        run.redact.extend(s.value for s in run.stored)
        run.conversation_id = request.conversation_id.hex if request.conversation_id else new_id()
        async with self.db.read() as conn:
            taken = (
                await conn.execute(select(conversations.c.id).where(conversations.c.id == run.conversation_id))
            ).first()
            if request.parent_conversation_id is not None:  # the parent must be the user's (NotFound)
                await conn.run_sync(
                    conversations_service.require_owned,
                    user_id=run.user_id,
                    conversation_id=request.parent_conversation_id.hex,
                )
        if taken is not None:
            raise StartStepFailed(f"conversation {run.conversation_id} already exists")

    async def _acquire_sandbox(self, run: _StartRun) -> None:
        """The sandbox, RUNNING: the wanted one (resumed when paused or stopped), else one from the warm pool,
        else a new one; then the LLM's and the repository's hosts are let through its egress."""
        sandbox_id = await self._sandbox_wanted(run.user_id, run.request)
        if sandbox_id:
            row = await self.sandboxes.get_record(user_id=run.user_id, sandbox_id=sandbox_id)
            if self.sandboxes.effective_status(row) in _RESUMABLE:
                await self.sandboxes.resume(user_id=run.user_id, sandbox_id=sandbox_id)
        else:
            claimed = await self.pool.claim(run.user_id) if self.pool is not None else None
            sandbox_id = claimed or (await self.sandboxes.create(user_id=run.user_id)).id
        await self._transition(run.task_id, Status.WAITING_FOR_SANDBOX, sandbox_id=sandbox_id)
        run.sandbox = await self.sandboxes.wait_until_running(sandbox_id)
        run.redact.append(self.sandboxes.session_key(run.sandbox))
        run.agent = self.sandboxes.client(run.sandbox, timeout=30.0)
        await self.sandboxes.allow_egress(run.sandbox, run.llm.base_url, self._repository_url(run.request))
        run.working_dir = self.sandboxes.backend.workspace_dir(Path(run.sandbox.work_dir))

    async def _prepare_repository(self, run: _StartRun) -> None:
        """Clone `selected_repository` (with the provider's token when the user has one), then run its
        `.openhands/setup.sh` and install its pre-commit hook."""
        request = run.request
        await self._transition(run.task_id, Status.PREPARING_REPOSITORY)
        if not request.selected_repository:
            return
        workspace = run.working_dir
        name = request.selected_repository.rsplit("/", 1)[-1].removesuffix(".git")
        run.working_dir = str(Path(workspace) / name)
        await self._clone(run, workspace)
        await self._transition(run.task_id, Status.RUNNING_SETUP_SCRIPT)
        setup = await run.agent.execute_bash(
            "if [ -f .openhands/setup.sh ]; then bash .openhands/setup.sh; fi", cwd=run.working_dir, timeout=600
        )
        if not setup.ok:
            raise StartStepFailed(f"the repository's .openhands/setup.sh failed (exit {setup.exit_code})")
        await self._transition(run.task_id, Status.SETTING_UP_GIT_HOOKS)
        hooks = await run.agent.execute_bash(
            "if [ -f .openhands/pre-commit.sh ]; then install -m 0755 .openhands/pre-commit.sh "
            ".git/hooks/pre-commit; fi",
            cwd=run.working_dir,
            timeout=60,
        )
        if not hooks.ok:
            raise StartStepFailed(f"installing the repository's git hooks failed (exit {hooks.exit_code})")

    async def _clone(self, run: _StartRun, workspace: str) -> None:
        request = run.request
        url = self._repository_url(request) or ""
        branch = f"--branch {shlex.quote(request.selected_branch)} " if request.selected_branch else ""
        token = clone_token(request, run.stored)
        token_file: Path | None = None
        credentials = ""
        if token is not None:
            # The token reaches git through a credential helper reading a private file that is gone right
            # after: never in the command (the agent server stores it), the URL or .git/config.
            user_name, value = token
            token_file, inside = self.sandboxes.backend.private_file(run.sandbox.id, Path(run.sandbox.work_dir), value)
            helper = (
                f'!f() {{ test "$1" = get || exit 0; echo username={user_name}; '
                f'printf "password=%s\\n" "$(cat {inside})"; }}; f'
            )
            credentials = f"-c credential.helper= -c credential.helper={shlex.quote(helper)} "
        target = shlex.quote(run.working_dir)
        command = (
            f"if [ -d {target}/.git ]; then echo already cloned; "
            f"else GIT_TERMINAL_PROMPT=0 git {credentials}clone {branch}-- {shlex.quote(url)} {target}; fi"
        )
        try:
            result = await run.agent.execute_bash(command, cwd=workspace, timeout=600)
        finally:
            if token_file is not None:
                token_file.unlink(missing_ok=True)
        if not result.ok:
            raise StartStepFailed(
                f"cloning {request.selected_repository} failed (exit {result.exit_code}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            )

    async def _create_conversation(self, run: _StartRun) -> None:
        """The record, then the conversation on the agent server (the record goes again if that fails)."""
        request, llm = run.request, run.llm
        await self._transition(run.task_id, Status.STARTING_CONVERSATION, app_conversation_id=run.conversation_id)
        try:
            await conversations_service.create_record(
                self.db,
                user_id=run.user_id,
                conversation_id=run.conversation_id,
                sandbox_id=run.sandbox.id,
                title=request.title,
                selected_repository=request.selected_repository,
                selected_branch=request.selected_branch,
                git_provider=request.git_provider,
                trigger=request.trigger,
                pr_number=list(request.pr_number),
                llm_model=run.model,
                parent_conversation_id=request.parent_conversation_id.hex if request.parent_conversation_id else None,
                public=request.public,
                tags=dict(request.tags),
            )
        except IntegrityError as exc:
            raise StartStepFailed(f"conversation {run.conversation_id} already exists") from exc
        initial_text = None
        if request.initial_message is not None:
            texts = [c.text for c in request.initial_message.content if isinstance(c, TextContent)]
            initial_text = "\n".join(t for t in texts if t) or None
        if request.system_message_suffix:
            initial_text = (initial_text or "") + ("\n\n" if initial_text else "") + request.system_message_suffix
        settings = llm_agent_settings(
            model=run.model,
            api_key=llm.api_key,
            base_url=llm.base_url,
            input_cost_per_token=llm.input_cost_per_token,
            output_cost_per_token=llm.output_cost_per_token,
        )
        # The pinned agent server builds its default agent from `agent_settings`; a sandbox of another spec
        # (an older agent server, which knows no `agent_settings`) is given the agent itself.
        pinned = self.sandboxes.version_of(run.sandbox) == runtime.AGENT_SERVER_VERSION
        try:
            await run.agent.create_conversation(
                working_dir=run.working_dir,
                agent_settings=settings if pinned else None,
                agent=None if pinned else explicit_agent(settings),
                conversation_id=run.conversation_id,
                initial_message=initial_text,
                run=True,
                tags=None,
                secrets=self._agent_secrets(run.sandbox, run.stored, request) or None,
            )
        except Exception:
            # No half-started conversations: the record goes again when the agent did not take it.
            async with self.db.write() as conn:
                await conn.execute(delete(conversations).where(conversations.c.id == run.conversation_id))
            raise

    async def _deliver_pending(self, run: _StartRun) -> None:
        """Messages sent while it started (to the task's id or the conversation's), in order."""
        if self.pending is None:
            return
        for target in (run.task_id, run.conversation_id):
            try:
                await self.pending.deliver(target)
            except Exception:  # retried by the maintenance loop; the start itself succeeded
                log.exception("delivering pending messages to %s failed", target)

    def _agent_secrets(
        self, sandbox: Any, stored: Sequence[StoredSecret], request: AppConversationStartRequest
    ) -> dict[str, Any]:
        """The secrets the agent may use. Stored ones are looked up from Threadline when the agent uses
        them (with the sandbox's session key), so an edited or deleted secret takes effect in running
        conversations; the start request's own `secrets` override them by name and are given as values."""
        base = self.sandboxes.backend.threadline_url(self.settings.callback_base_url)
        headers = {"X-Session-API-Key": self.sandboxes.session_key(sandbox)}
        given: dict[str, Any] = {
            s.name: {
                "kind": "LookupSecret",
                "url": f"{base}/api/v1/sandboxes/{sandbox.id}/settings/secrets/{s.name}",
                "headers": headers,
                "description": s.description,
            }
            for s in stored
        }
        given.update({k: {"kind": "StaticSecret", "value": v} for k, v in (request.secrets or {}).items()})
        return given

    # -- process lifetime -----------------------------------------------------------------------

    async def close_interrupted(self) -> int:
        """Tasks in flight in a process that is gone (its lease is stale) can never finish: close them."""
        live = await self.sandboxes.lease.live_instances() if self.sandboxes.lease is not None else set()
        query = select(
            start_tasks.c.id, start_tasks.c.owner_instance, start_tasks.c.sandbox_id, start_tasks.c.request
        ).where(start_tasks.c.status.notin_(_TERMINAL_VALUES))
        if live:
            query = query.where(or_(start_tasks.c.owner_instance.is_(None), start_tasks.c.owner_instance.notin_(live)))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        closed = 0
        for row in rows:
            # Replicas race for the same tasks: only the one whose update finds the task as it was closes it.
            if await self._transition(
                row.id, Status.ERROR, owner=row.owner_instance, detail="interrupted by a server restart; start again"
            ):
                log.warning("start task %s of instance %s was interrupted; closed as ERROR", row.id, row.owner_instance)
                closed += 1
                await self._release_interrupted_sandbox(row)
        return closed

    async def _release_interrupted_sandbox(self, task: Any) -> None:
        """A sandbox the interrupted start made (or took from the pool) for itself, that no conversation
        got: nothing will ever use it, so it is stopped and deleted, not left running. A sandbox the
        request named is the user's and stays."""
        if not task.sandbox_id or (task.request or {}).get("sandbox_id"):
            return
        try:
            if await self.sandboxes.release_if_unused(task.sandbox_id):
                log.info("released sandbox %s of interrupted start task %s", task.sandbox_id, task.id)
        except Exception:  # the task is closed either way; the sandbox can still be deleted by its user
            log.exception("could not release sandbox %s of interrupted start task %s", task.sandbox_id, task.id)

    async def shutdown(self) -> None:
        for job in list(self._tasks):
            job.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
