"""Async HTTP client for one running ``openhands-agent-server`` (tested against 1.58.2).

See docs/agent-server-protocol.md for the observed protocol. Every ``/api/*`` call carries the
``X-Session-API-Key`` header; the health endpoints (``/alive``, ``/health``, ``/ready``,
``/server_info``) are open.

Errors:

* :class:`AgentServerUnavailable` - the server could not be reached, or it did not answer in time.
* :class:`AgentServerError` - the server answered with an unexpected HTTP status (``status_code``).

Messages never contain the session API key, nor the ``input`` values the agent server echoes in 422
answers (those may hold LLM API keys).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import httpx

SESSION_KEY_HEADER: Final = "X-Session-API-Key"
BATCH_GET_LIMIT: Final = 99  # GET /api/conversations?ids= rejects more than 99 ids with 422
PAGE_LIMIT_MAX: Final = 100  # search endpoints accept limit in 1..100
EXECUTION_STATUSES: Final = (
    "idle",
    "running",
    "paused",
    "waiting_for_confirmation",
    "finished",
    "error",
    "stuck",
    "deleting",
)


class AgentServerError(Exception):
    """The agent server answered with an unexpected status (or an unusable body)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.message} (HTTP {self.status_code})"


class AgentServerUnavailable(AgentServerError):
    """The agent server could not be reached (connection refused/reset) or timed out."""


@dataclass(frozen=True)
class BashResult:
    """Outcome of ``POST /api/bash/execute_bash_command``.

    ``exit_code`` is -1 when the command timed out (then stdout/stderr are usually None) or could not be
    started (e.g. a missing ``cwd``; stderr then says why).
    """

    command_id: str
    exit_code: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def conversation_uuid(conversation_id: str | uuid.UUID) -> str:
    """Validate a conversation id (hex or dashed) and return it dashed, as the agent server prints it.

    Raises ``ValueError`` for anything that is not a UUID, so no caller-supplied text reaches a URL path.
    """
    if isinstance(conversation_id, uuid.UUID):
        return str(conversation_id)
    return str(uuid.UUID(str(conversation_id).strip()))


def agent_message(text: str, *, run: bool = True, role: str = "user") -> dict[str, Any]:
    """A ``SendMessageRequest`` body: ``{"role", "content": [{"type": "text", "text"}], "run"}``."""
    return {"role": role, "content": [{"type": "text", "text": text}], "run": run}


def llm_agent_settings(
    *,
    model: str,
    api_key: str | None = None,
    base_url: str | None = None,
    usage_id: str = "agent",
    input_cost_per_token: float | None = None,
    output_cost_per_token: float | None = None,
    num_retries: int | None = None,
    extra_llm: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``agent_settings`` for ``POST /api/conversations`` with only the LLM configured.

    Costs are only non-zero when per-token prices are given (LiteLLM knows no price for unknown models).
    """
    llm: dict[str, Any] = {"usage_id": usage_id, "model": model}
    if api_key is not None:
        llm["api_key"] = api_key
    if base_url is not None:
        llm["base_url"] = base_url
    if input_cost_per_token is not None:
        llm["input_cost_per_token"] = input_cost_per_token
    if output_cost_per_token is not None:
        llm["output_cost_per_token"] = output_cost_per_token
    if num_retries is not None:
        llm["num_retries"] = num_retries
    if extra_llm:
        llm.update(extra_llm)
    return {"llm": llm}


# The tools every 1.x agent server registers (terminal, file editor, task tracker), by their registry names.
DEFAULT_TOOLS = ("terminal", "file_editor", "task_tracker")


def explicit_agent(agent_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The same agent as ``agent`` instead of ``agent_settings``, for agent servers older than the pinned one
    (1.21.0 knows only ``agent``): the settings' LLM and the default tools."""
    return {"kind": "Agent", "llm": dict(agent_settings["llm"]), "tools": [{"name": name} for name in DEFAULT_TOOLS]}


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _short_detail(response: httpx.Response, limit: int = 300) -> str:
    """A short, secret-free description of an error body (FastAPI ``detail``; 422 inputs dropped)."""
    try:
        payload = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:limit]
    detail = payload.get("detail") if isinstance(payload, dict) else payload
    if isinstance(detail, list):  # FastAPI validation errors: keep location and message only
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '')}")
        return "; ".join(parts)[:limit]
    if detail is None:
        return ""
    return str(detail)[:limit]


class AgentServerClient:
    """Typed async access to one agent server at ``base_url`` (e.g. ``http://127.0.0.1:8001``).

    Pass a shared ``httpx.AsyncClient`` as ``http`` to reuse its connection pool; it is then not closed
    by :meth:`aclose`. Without one, the client creates (and owns) its own.
    """

    def __init__(
        self,
        base_url: str,
        session_api_key: str,
        *,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session_api_key = session_api_key
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout, trust_env=False)

    def __repr__(self) -> str:  # never show the key
        return f"AgentServerClient({self.base_url!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AgentServerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- transport -------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        request_timeout: float | None = None,
        ok: tuple[int, ...] = (200, 201),
        allow: tuple[int, ...] = (),
        auth: bool = True,
        idempotent: bool = True,
    ) -> httpx.Response:
        """Send one request; return the response when its status is in ``ok`` or ``allow``.

        A pooled keep-alive connection that the agent server already closed (it does so after an
        unhandled 500, without ``Connection: close``) shows up as a read error before any answer:
        idempotent requests are then retried once on a fresh connection.
        """
        headers = {SESSION_KEY_HEADER: self._session_api_key} if auth else {}
        attempts = 2 if idempotent else 1
        for attempt in range(attempts):
            try:
                response = await self._http.request(
                    method,
                    f"{self.base_url}{path}",
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=self.timeout if request_timeout is None else request_timeout,
                )
                break
            except httpx.TimeoutException as exc:
                raise AgentServerUnavailable(f"{method} {path}: agent server timed out") from exc
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError) as exc:
                if attempt + 1 < attempts:
                    continue
                raise AgentServerUnavailable(
                    f"{method} {path}: agent server connection failed ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                raise AgentServerUnavailable(
                    f"{method} {path}: agent server unreachable ({type(exc).__name__})"
                ) from exc
        if response.status_code in ok or response.status_code in allow:
            return response
        detail = _short_detail(response).replace(self._session_api_key, "***")
        message = f"{method} {path} failed" + (f": {detail}" if detail else "")
        raise AgentServerError(message, status_code=response.status_code)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise AgentServerError(
                f"{response.request.method} {response.request.url.path}: answer is not JSON",
                status_code=response.status_code,
            ) from exc

    # -- server health ---------------------------------------------------------------------------

    async def _probe(self, path: str) -> bool:
        try:
            response = await self._http.get(f"{self.base_url}{path}", timeout=self.timeout)
        except httpx.TransportError:  # includes timeouts
            return False
        return response.status_code == 200

    async def alive(self) -> bool:
        """True when ``GET /alive`` answers 200; False when unreachable or any other status.

        The agent server only starts listening once initialisation is done (about 9 s after launch on a
        2-core machine), so ``alive`` and ``ready`` turn true at the same moment.
        """
        return await self._probe("/alive")

    # -- conversations ---------------------------------------------------------------------------

    async def create_conversation(
        self,
        *,
        working_dir: str,
        agent_settings: Mapping[str, Any] | None = None,
        agent: Mapping[str, Any] | None = None,
        conversation_id: str | uuid.UUID | None = None,
        initial_message: str | None = None,
        run: bool = True,
        tags: Mapping[str, str] | None = None,
        max_iterations: int | None = None,
        confirmation_policy: Mapping[str, Any] | None = None,
        secrets: Mapping[str, Any] | None = None,
        autotitle: bool | None = None,
        extra: Mapping[str, Any] | None = None,
        request_timeout: float = 60.0,
    ) -> dict[str, Any]:
        """``POST /api/conversations``; returns the ConversationInfo.

        Exactly one of ``agent_settings`` (e.g. from :func:`llm_agent_settings`) or ``agent`` is needed.
        With ``initial_message`` the first user message is sent, and the agent starts when ``run``.
        Answers 201 for a new conversation, 200 when ``conversation_id`` already exists (idempotent: the
        existing conversation is returned unchanged, the new initial message is not sent).
        """
        if (agent_settings is None) == (agent is None):
            raise ValueError("pass exactly one of agent_settings or agent")
        body: dict[str, Any] = {"workspace": {"working_dir": working_dir}}
        if agent_settings is not None:
            body["agent_settings"] = dict(agent_settings)
        if agent is not None:
            body["agent"] = dict(agent)
        if conversation_id is not None:
            body["conversation_id"] = conversation_uuid(conversation_id)
        if initial_message is not None:
            body["initial_message"] = agent_message(initial_message, run=run)
        if tags is not None:
            body["tags"] = dict(tags)
        if max_iterations is not None:
            body["max_iterations"] = max_iterations
        if confirmation_policy is not None:
            body["confirmation_policy"] = dict(confirmation_policy)
        if secrets is not None:
            body["secrets"] = dict(secrets)
        if autotitle is not None:
            body["autotitle"] = autotitle
        if extra:
            body.update(extra)
        response = await self._request(
            "POST",
            "/api/conversations",
            json=body,
            request_timeout=request_timeout,
            idempotent=conversation_id is not None,  # a fixed id makes creation idempotent
        )
        data = self._json(response)
        if not isinstance(data, dict):
            raise AgentServerError("POST /api/conversations: unexpected answer")
        return data

    async def get_conversation(self, conversation_id: str | uuid.UUID) -> dict[str, Any] | None:
        """``GET /api/conversations/{id}``; None when the agent server does not know it (404)."""
        path = f"/api/conversations/{conversation_uuid(conversation_id)}"
        response = await self._request("GET", path, allow=(404,))
        if response.status_code == 404:
            return None
        data = self._json(response)
        if not isinstance(data, dict):
            raise AgentServerError(f"GET {path}: unexpected answer")
        return data

    async def get_conversations(self, ids: Sequence[str | uuid.UUID]) -> list[dict[str, Any] | None]:
        """Batch ``GET /api/conversations?ids=..`` in chunks of 99; same order as ``ids``, None if missing."""
        normalized = [conversation_uuid(i) for i in ids]
        results: list[dict[str, Any] | None] = []
        for chunk in _chunks(normalized, BATCH_GET_LIMIT):
            data = self._json(await self._request("GET", "/api/conversations", params=[("ids", i) for i in chunk]))
            if not isinstance(data, list) or len(data) != len(chunk):
                raise AgentServerError("GET /api/conversations: unexpected answer")
            results.extend(item if isinstance(item, dict) else None for item in data)
        return results

    async def update_conversation(
        self,
        conversation_id: str | uuid.UUID,
        *,
        title: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """``PATCH /api/conversations/{id}`` with ``{title?, tags?}`` (also posts the conversation webhook)."""
        body: dict[str, Any] = {}
        if title is not None:
            body["title"] = title
        if tags is not None:
            body["tags"] = dict(tags)
        await self._request("PATCH", f"/api/conversations/{conversation_uuid(conversation_id)}", json=body)

    async def send_message(self, conversation_id: str | uuid.UUID, text: str, run: bool = True) -> None:
        """``POST /api/conversations/{id}/events``: append a user message; start the agent when ``run``.

        Raises AgentServerError 429 when the server's concurrent-run limit is reached.
        """
        path = f"/api/conversations/{conversation_uuid(conversation_id)}/events"
        await self._request("POST", path, json=agent_message(text, run=run), idempotent=False)

    async def run(self, conversation_id: str | uuid.UUID) -> bool:
        """``POST /api/conversations/{id}/run``: start or resume the agent.

        Returns False when it was already running (409). On a finished conversation with no new message
        it answers 200 and nothing runs.
        """
        path = f"/api/conversations/{conversation_uuid(conversation_id)}/run"
        response = await self._request("POST", path, allow=(409,))
        return response.status_code != 409

    async def pause(self, conversation_id: str | uuid.UUID) -> None:
        """``POST /api/conversations/{id}/pause``: the status becomes ``paused`` once the LLM call in flight
        (and its tool) completes; if that step was ``finish`` the conversation ends ``finished`` instead."""
        await self._request("POST", f"/api/conversations/{conversation_uuid(conversation_id)}/pause")

    async def delete_conversation(self, conversation_id: str | uuid.UUID) -> bool:
        """``DELETE /api/conversations/{id}``; False when it did not exist (404).

        Removes the persisted state and the conversation's tmux server; the workspace directory stays.
        """
        path = f"/api/conversations/{conversation_uuid(conversation_id)}"
        response = await self._request("DELETE", path, allow=(404,), request_timeout=max(self.timeout, 30.0))
        return response.status_code != 404

    # -- git ------------------------------------------------------------------------------------

    async def load_skills(self, project_dir: str) -> list[dict[str, Any]]:
        """``POST /api/skills``: the skills a conversation working in ``project_dir`` has (the project's own
        and the sandbox user's). Public skills are left out: they are fetched from GitHub, which a sandbox
        may not reach."""
        body = {"load_public": False, "load_user": True, "load_project": True, "load_org": False}
        data = self._json(await self._request("POST", "/api/skills", json={**body, "project_dir": project_dir}))
        skills = data.get("skills") if isinstance(data, dict) else None
        if not isinstance(skills, list):
            raise AgentServerError("POST /api/skills: unexpected answer")
        return [item for item in skills if isinstance(item, dict)]

    async def git_changes(self, repository_path: str, ref: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/git/changes?path=&ref=``: ``[{status, path}]`` of the repository at (or above) the path,
        against ``ref`` (default: the agent server's choice of base, for display)."""
        params = {"path": repository_path, **({"ref": ref} if ref else {})}
        data = self._json(await self._request("GET", "/api/git/changes", params=params))
        if not isinstance(data, list):
            raise AgentServerError("GET /api/git/changes: unexpected answer")
        return [item for item in data if isinstance(item, dict)]

    async def git_diff(self, file_path: str, ref: str | None = None) -> dict[str, Any]:
        """``GET /api/git/diff?path=&ref=``: ``{modified, original}`` of one file (absolute path in the sandbox)."""
        params = {"path": file_path, **({"ref": ref} if ref else {})}
        data = self._json(await self._request("GET", "/api/git/diff", params=params))
        if not isinstance(data, dict):
            raise AgentServerError("GET /api/git/diff: unexpected answer")
        return data

    # -- events ----------------------------------------------------------------------------------

    @staticmethod
    def _event_filters(
        kind: str | None,
        source: str | None,
        body: str | None,
        timestamp_gte: datetime | str | None,
        timestamp_lt: datetime | str | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if kind is not None:
            params["kind"] = kind
        if source is not None:
            params["source"] = source
        if body is not None:
            params["body"] = body
        if timestamp_gte is not None:
            params["timestamp__gte"] = (
                timestamp_gte.isoformat() if isinstance(timestamp_gte, datetime) else timestamp_gte
            )
        if timestamp_lt is not None:
            params["timestamp__lt"] = timestamp_lt.isoformat() if isinstance(timestamp_lt, datetime) else timestamp_lt
        return params

    async def search_events(
        self,
        conversation_id: str | uuid.UUID,
        *,
        page_id: str | None = None,
        limit: int = PAGE_LIMIT_MAX,
        kind: str | None = None,
        source: str | None = None,
        body: str | None = None,
        sort_order: str = "TIMESTAMP",
        timestamp_gte: datetime | str | None = None,
        timestamp_lt: datetime | str | None = None,
    ) -> dict[str, Any]:
        """``GET /api/conversations/{id}/events/search`` -> ``{"items": [event], "next_page_id"}``.

        ``page_id`` is the id of the first event of the next page (not an offset); ``sort_order`` is
        TIMESTAMP or TIMESTAMP_DESC; ``kind`` e.g. MessageEvent; ``source`` user/agent/environment.
        """
        path = f"/api/conversations/{conversation_uuid(conversation_id)}/events/search"
        params = self._event_filters(kind, source, body, timestamp_gte, timestamp_lt)
        params["limit"] = limit
        params["sort_order"] = sort_order
        if page_id is not None:
            params["page_id"] = page_id
        data = self._json(await self._request("GET", path, params=params))
        if not isinstance(data, dict):
            raise AgentServerError(f"GET {path}: unexpected answer")
        return data

    async def count_events(
        self,
        conversation_id: str | uuid.UUID,
        *,
        kind: str | None = None,
        source: str | None = None,
        body: str | None = None,
        timestamp_gte: datetime | str | None = None,
        timestamp_lt: datetime | str | None = None,
    ) -> int:
        """``GET /api/conversations/{id}/events/count`` -> a bare integer."""
        path = f"/api/conversations/{conversation_uuid(conversation_id)}/events/count"
        params = self._event_filters(kind, source, body, timestamp_gte, timestamp_lt)
        data = self._json(await self._request("GET", path, params=params))
        if not isinstance(data, int):
            raise AgentServerError(f"GET {path}: unexpected answer")
        return data

    # -- shell -----------------------------------------------------------------------------------

    async def execute_bash(
        self,
        command: str,
        cwd: str | None = None,
        timeout: int = 300,
        *,
        conversation_id: str | uuid.UUID | None = None,
    ) -> BashResult:
        """Run ``command`` with bash and wait: ``POST /api/bash/execute_bash_command``.

        Runs as the agent server's user with its environment (which includes the ``OH_*`` variables).
        Without ``cwd`` it runs in the agent server's working directory; with ``conversation_id`` the
        conversation-scoped route is used and the default cwd is that conversation's workspace.
        A command that exceeds ``timeout`` seconds is killed and reported with ``exit_code`` -1.
        Note: the command text is stored on disk under ``bash_events`` (do not embed secrets in it).
        """
        if conversation_id is None:
            path = "/api/bash/execute_bash_command"
        else:
            path = f"/api/conversations/{conversation_uuid(conversation_id)}/bash/execute_bash_command"
        body: dict[str, Any] = {"command": command, "timeout": timeout}
        if cwd is not None:
            body["cwd"] = cwd
        data = self._json(
            await self._request("POST", path, json=body, request_timeout=timeout + 15.0, idempotent=False)
        )
        if not isinstance(data, dict):
            raise AgentServerError(f"POST {path}: unexpected answer")
        exit_code = data.get("exit_code")
        return BashResult(
            command_id=str(data.get("command_id") or ""),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            stdout=data.get("stdout") or "",
            stderr=data.get("stderr") or "",
        )


# -- metrics -------------------------------------------------------------------------------------

_TOKEN_FIELDS: Final = (
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _usage_to_metrics(source: Mapping[str, Any]) -> Mapping[str, Any]:
    """Find ``usage_to_metrics`` in a ConversationInfo, its ``stats``, or a ``stats`` update event value."""
    if "usage_to_metrics" in source:
        found = source.get("usage_to_metrics")
    elif isinstance(source.get("stats"), Mapping):
        found = source["stats"].get("usage_to_metrics")
    elif source.get("kind") == "ConversationStateUpdateEvent" and isinstance(source.get("value"), Mapping):
        found = source["value"].get("usage_to_metrics")
    else:
        found = None
    return found if isinstance(found, Mapping) else {}


def _finite_positive(value: Any) -> float | None:
    """A usable count or cost from an agent's report: a real number > 0 and finite (JSON readers take NaN,
    Infinity and 1e999; a boolean is no number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _int(value: Any) -> int:
    found = _finite_positive(value)
    return int(found) if found is not None else 0


def metrics_from_stats(conversation_info: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the agent's ``stats.usage_to_metrics`` into the App API's MetricsSnapshot shape.

    Accepts a ConversationInfo (REST answer or ``/conversations`` webhook body), a ``stats`` dict, or a
    ``ConversationStateUpdateEvent`` with ``key == "stats"`` (whose value is ``{"usage_to_metrics": ..}``).

    Costs and token counts are SUMMED over all usage ids: ``agent`` (the main LLM, which also makes the
    auto-title call - it is recorded there, there is no separate title entry) and ``condenser`` (the
    context condenser, billed too), plus any other LLM the agent registers (e.g. a title LLM profile).
    The sum is what the conversation cost. ``model_name``, ``max_budget_per_task``, ``per_turn_token``
    and ``response_id`` come from the ``agent`` entry (the user-facing model; per-turn is only
    meaningful for one LLM), falling back to the first entry; ``context_window`` is the largest seen.
    """
    usages = _usage_to_metrics(conversation_info)
    entries = [(uid, m) for uid, m in usages.items() if isinstance(m, Mapping)]
    primary: Mapping[str, Any] = next((m for uid, m in entries if uid == "agent"), entries[0][1] if entries else {})
    primary_usage = primary.get("accumulated_token_usage")
    if not isinstance(primary_usage, Mapping):
        primary_usage = {}

    totals = dict.fromkeys(_TOKEN_FIELDS, 0)
    cost = 0.0
    context_window = 0
    for _, metrics in entries:
        cost += _finite_positive(metrics.get("accumulated_cost")) or 0.0
        usage = metrics.get("accumulated_token_usage") or {}
        if isinstance(usage, Mapping):
            for name in _TOKEN_FIELDS:
                totals[name] += _int(usage.get(name))
            context_window = max(context_window, _int(usage.get("context_window")))

    model_name = str(primary.get("model_name") or "") or "default"
    budget = primary.get("max_budget_per_task")
    return {
        "model_name": model_name,
        "accumulated_cost": round(cost, 12),
        "max_budget_per_task": float(budget)
        if isinstance(budget, int | float) and not isinstance(budget, bool) and math.isfinite(budget)
        else None,
        "accumulated_token_usage": {
            "model": str(primary_usage.get("model") or primary.get("model_name") or ""),
            **totals,
            "context_window": context_window,
            "per_turn_token": _int(primary_usage.get("per_turn_token")),
            "response_id": str(primary_usage.get("response_id") or ""),
        },
    }
