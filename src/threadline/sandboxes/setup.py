"""Choosing and building the sandbox backend from the settings."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from threadline.config import Settings
from threadline.sandboxes.backend import ProcessBackend, SandboxBackend
from threadline.sandboxes.egress import EgressProxy, Rule
from threadline.sandboxes.isolated import IsolatedBackend, SandboxLimits, check_bwrap

log = logging.getLogger("threadline.sandboxes")


class BackendUnavailable(RuntimeError):
    """The configured backend cannot run here; the message says what to do."""


@functools.cache
def _bwrap_problem() -> str | None:
    return check_bwrap()


def operator_rules(settings: Settings) -> list[Rule]:
    """Destinations the operator chose: the allowlist, the server-wide LLM and the git host."""
    texts = [t for t in settings.sandbox_egress_allow.split(",") if t.strip()]
    if settings.llm_base_url:
        texts.append(settings.llm_base_url)
    template = settings.git_url_template
    if template and urlsplit(template).scheme in ("http", "https"):
        texts.append(template.split("{", 1)[0])
    rules = [Rule.parse(t, trusted=True) for t in texts]
    return [r for r in rules if r is not None]


def git_read_only_paths(settings: Settings) -> list[Path]:
    """A file:// git template: its fixed directory is mounted read-only into every sandbox."""
    template = settings.git_url_template
    if not template or not template.startswith("file://"):
        return []
    fixed = template.removeprefix("file://").split("{", 1)[0]
    directory = Path(fixed if fixed.endswith("/") else str(Path(fixed).parent))
    return [directory] if str(directory) != "/" else []


def build_backend(settings: Settings) -> tuple[SandboxBackend, httpx.AsyncBaseTransport]:
    """The backend and the transport Threadline's agent-server client must use to reach it."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    tcp = httpx.AsyncHTTPTransport(limits=limits)
    if settings.sandbox_backend == "process":
        return (
            ProcessBackend(
                settings.resolved_runtime_dir, settings.sandboxes_dir, flush_delay=settings.webhook_flush_delay
            ),
            tcp,
        )
    problem = _bwrap_problem()
    if problem is not None:
        raise BackendUnavailable(
            f"the isolating sandbox backend cannot run: {problem}. "
            "(THREADLINE_SANDBOX_BACKEND=process runs agent servers without isolation: unsafe for more than one user.)"
        )
    backend = IsolatedBackend(
        settings.resolved_runtime_dir,
        settings.sandboxes_dir,
        egress=EgressProxy(operator_rules(settings), settings.local_address),
        flush_delay=settings.webhook_flush_delay,
        limits=SandboxLimits.from_settings(settings),
        uid_base=settings.sandbox_uid_base,
        read_only_paths=git_read_only_paths(settings),
        # The agent ports listen where Threadline itself does.
        expose_host=settings.host if settings.sandbox_agent_url == "port" else None,
    )
    return backend, backend.make_transport(tcp)
