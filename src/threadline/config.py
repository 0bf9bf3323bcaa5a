"""Server configuration, read from THREADLINE_* environment variables."""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# `threadline serve` without --workers or THREADLINE_WORKERS: one worker per core, but no more than this.
MAX_DEFAULT_WORKERS = 8


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THREADLINE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".threadline")
    database_url: str | None = None
    # PostgreSQL only: the schema Threadline's tables live in (its search_path); unset: the server's default.
    database_schema: str | None = None
    # SQLite only: threads running the hot paths' transactions. One by default: more let a slow query and
    # others run side by side, but every row fetched hands the GIL between them (the driver releases it
    # around each step), which doubled the CPU of a page under 8 concurrent requests (docs/performance.md).
    sqlite_threads: int = Field(default=1, ge=1, le=64)
    # PostgreSQL only: connections each process keeps open (10 more are opened for bursts and closed after).
    # Fewer than the requests in flight made the pool close and open a connection every few requests: a new
    # backend, its prepared statements parsed again (docs/performance.md).
    database_pool_size: int = Field(default=20, ge=1, le=1000)
    host: str = "127.0.0.1"
    port: int = 8000
    # Public base URL agent servers use for callbacks; derived from host/port when unset.
    public_url: str | None = None
    secret_key: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_tags: int = 50
    max_tag_key_length: int = 64
    max_tag_value_length: int = 512
    create_admin_on_first_start: bool = True

    # Agent runtime and sandboxes.
    runtime_dir: Path | None = None
    runtime_python: str | None = None
    # `bwrap`: every agent server in its own namespaces (docs/security.md). `process`: plain child
    # processes of the server's user, no isolation: only for a single trusted user.
    sandbox_backend: Literal["bwrap", "process"] = "bwrap"
    # bwrap: hosts sandboxes may reach through the egress proxy, comma-separated (`host`, `host:port`,
    # `*.example.com`, `*`); the LLM base URL and the git host are added automatically.
    sandbox_egress_allow: str = ""
    # bwrap: where clients reach a sandbox's agent server. `proxy`: under Threadline's own URL
    # (<public url>/agent-server/<id>; Threadline checks the session key first; works behind one reverse
    # proxy). `port`: at the root of a plain-HTTP port of its own on Threadline's host
    # (http://<public host>:<port>), as upstream's sandboxes are; the OpenHands SDK's cloud workspace needs it.
    sandbox_agent_url: Literal["proxy", "port"] = "proxy"
    # bwrap: per-sandbox limits (0: none). Memory is the memory of all its processes together.
    sandbox_memory_mb: int = Field(default=4096, ge=0)
    sandbox_max_processes: int = Field(default=1024, ge=0)
    sandbox_max_open_files: int = Field(default=4096, ge=0)
    # bwrap: CPUs each sandbox may use (0.5: half of one core; unset: no limit). Needs a cgroup (below).
    sandbox_cpus: float | None = Field(default=None, gt=0, le=4096, allow_inf_nan=False)
    # bwrap: `auto` puts each sandbox in a cgroup of its own when this process may make them (v2 delegated
    # to it, or writable v1 hierarchies as root), so the kernel enforces memory, CPU and processes; `off`:
    # never (memory then by a watchdog, processes by rlimit, CPU not at all).
    sandbox_cgroups: Literal["auto", "off"] = "auto"
    # bwrap, when Threadline runs as root: each sandbox runs as a user of its own in [base, base + 800000).
    sandbox_uid_base: int = Field(default=200_000, ge=1000)
    sandbox_startup_timeout: float = 120.0
    sandbox_stop_grace_seconds: float = 10.0
    stop_sandboxes_on_shutdown: bool = True
    # Pre-started agent servers waiting for a conversation (0: off, the embedded default).
    warm_pool_size: int = 0
    warm_pool_refill_interval: float = 30.0
    # On SIGTERM: stop accepting, let requests in flight finish for this long, then stop.
    shutdown_grace_seconds: float = 30.0
    # Instance leases: a process heartbeats this often; a lease older than the TTL is stale, and another
    # process may adopt that process's sandboxes.
    instance_heartbeat_seconds: float = 10.0
    instance_lease_ttl_seconds: float = 30.0
    agent_timeout: float = 5.0
    # Live fields come from the records callbacks keep; an agent server is asked (in the background, at most
    # this often per sandbox) only about conversations whose record may lag: no title or status yet, or
    # `running` with no report for live_stale_seconds (see webhooks/live.py).
    live_refresh_seconds: float = Field(default=5.0, gt=0)
    live_stale_seconds: float = Field(default=30.0, gt=0)
    webhook_flush_delay: float = 1.0
    # GET .../download: a workspace with more bytes of files than this is a 413.
    download_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    # Where repositories are cloned from, e.g. "https://git.example.com/{repository}.git" or
    # "file:///srv/git/{repository}.git"; unset: the provider's public host (github.com, gitlab.com, ...).
    git_url_template: str | None = None

    # Server-wide LLM defaults; a user's settings override them.
    llm_model: str | None = None
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_input_cost_per_token: float | None = None
    llm_output_cost_per_token: float | None = None

    # Idempotency-Key: how long a stored result is replayed, and how long an unfinished first request
    # holds its key (after that its process is taken for dead and the key is free again).
    idempotency_ttl_seconds: float = Field(default=24 * 3600, gt=0)
    idempotency_lock_seconds: float = Field(default=300.0, gt=0)

    # Rate limits per API key (token buckets, per process: see docs/rate-limits.md).
    rate_limits_enabled: bool = True
    rate_limit_per_second: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    # Requests that start something (POST app-conversations, stream-start, POST sandboxes).
    start_rate_limit_per_second: float = Field(default=1.0, gt=0)
    start_rate_limit_burst: int = Field(default=5, ge=1)
    # Requests without credentials (the public shared-conversation views), per client address. Behind a
    # reverse proxy the address is the proxy's unless it sends X-Forwarded-For and is trusted (uvicorn's
    # --forwarded-allow-ips; 127.0.0.1 by default).
    anonymous_rate_limit_per_second: float = Field(default=5.0, gt=0)
    anonymous_rate_limit_burst: int = Field(default=20, ge=1)
    # Threadline servers sharing the load: each enforces its share of the limits above (and each server's
    # workers a share of that).
    rate_limit_replicas: int = Field(default=1, ge=1)
    # Worker processes of `threadline serve` (unset: one per core, at most MAX_DEFAULT_WORKERS). Each is a
    # replica on this machine (its own lease, sandboxes and share of the rate limits); `serve` sets this
    # for its workers, so unset inside a worker means one process.
    workers: int | None = Field(default=None, ge=1, le=64)

    # Sandboxes a user may have STARTING or RUNNING at once (0: no limit).
    max_running_sandboxes_per_user: int = Field(default=10, ge=0)

    # Server-Sent Event streams (events of a conversation, changes of a user's conversations): at most this
    # many open at once per user (per client address for the public streams), per process; a comment line
    # every heartbeat_seconds keeps idle connections alive; what another process (a replica) stores is
    # found by polling every poll_seconds (what this process stores wakes a stream at once).
    max_streams_per_user: int = Field(default=10, ge=1)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    stream_poll_seconds: float = Field(default=1.0, gt=0)

    # Observability: GET /metrics (Prometheus, no credentials) and the log format of `threadline serve`.
    metrics_enabled: bool = True
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def default_workers(self) -> int:
        return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))

    @property
    def rate_limit_share(self) -> int:
        """Processes the configured rate limits are divided between: replicas times this server's workers."""
        return self.rate_limit_replicas * (self.workers or 1)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.home / 'threadline.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_runtime_dir(self) -> Path:
        return self.runtime_dir or self.home / "agent-runtime"

    @property
    def sandboxes_dir(self) -> Path:
        return self.home / "sandboxes"

    @property
    def local_address(self) -> tuple[str, int]:
        """Where this process itself listens, for connections from its own sandboxes' egress proxy."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return host, self.port

    @property
    def callback_base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @cached_property
    def resolved_secret_key(self) -> str:
        """The server secret: from the environment, else a file under home created on first use."""
        if self.secret_key:
            return self.secret_key
        path = self.home / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.home.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        # O_EXCL: two processes racing on first start agree on whichever file landed first.
        try:
            fd = path.open("x")
        except FileExistsError:
            return path.read_text().strip()
        with fd:
            fd.write(value)
        path.chmod(0o600)
        return value
