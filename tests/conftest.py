"""Test harness: every API test runs against the real app over real HTTP, on SQLite and on PostgreSQL.

Each test gets its own server (uvicorn on a free loopback port, in a thread) and its own clean
schema: a fresh SQLite file, or a fresh PostgreSQL schema in database `test` dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from threadline.api.app import create_app
from threadline.api.http_protocol import http_protocol
from threadline.api.server import Server
from threadline.auth import service as auth
from threadline.config import Settings
from threadline.conversations import service as conversations
from threadline.conversations.mapping import to_app_conversation
from threadline.core.context import AppContext

T = TypeVar("T")
PG_ADMIN_URL = os.environ.get("THREADLINE_TEST_PG_URL", "postgresql://127.0.0.1:5432/test")
BACKENDS = [b for b in os.environ.get("THREADLINE_TEST_BACKENDS", "sqlite,postgresql").split(",") if b]


@dataclass
class Database:
    """Where one test's data lives."""

    backend: str
    url: str
    schema: str | None = None
    drop: Callable[[], None] = lambda: None


def _pg_admin_exec(sql: str) -> None:
    # asyncpg is what the server uses; for setup a short-lived event loop is enough.
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _pg_admin_exec_coroutine(run)


def _pg_admin_exec_coroutine(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # In a thread of its own: the calling thread may already run a loop (Playwright's sync API does).
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'threadline.db'}")
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    _pg_admin_exec(f'CREATE SCHEMA "{schema}"')
    url = PG_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield Database("postgresql", url, schema)
    finally:
        _pg_admin_exec(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class LiveServer:
    base_url: str
    settings: Settings
    loop: asyncio.AbstractEventLoop
    app: Any
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's own event loop (where its database engine lives)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"X-Access-Token": key} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def user(self, name: str) -> tuple[auth.User, str]:
        """Create a user and an API key for it."""
        user = self.run(auth.create_user(self.ctx.db, name))
        _, key = self.run(auth.create_key(self.ctx.db, user.id))
        return user, key

    def sandbox(self, user_id: str, status: str = "RUNNING", **values: Any) -> tuple[str, str]:
        """Insert a sandbox record (no process) with a session key; returns (sandbox id, session key)."""
        from tests.support.records import sandbox_values
        from threadline.sandboxes.tables import sandboxes

        row, key = sandbox_values(user_id, self.settings.resolved_secret_key, status=status, **values)

        async def insert() -> None:
            async with self.ctx.db.write() as conn:
                await conn.execute(sandboxes.insert().values(**row))

        self.run(insert())
        return row["id"], key

    def conversation(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Create a conversation record through the service layer; returns its JSON form."""
        stored = self.run(conversations.create_record(self.ctx.db, user_id=user_id, **fields))
        return to_app_conversation(stored).model_dump(mode="json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(settings: Settings, schema: str | None = None) -> tuple[uvicorn.Server, threading.Thread, Any]:
    app = create_app(settings, db_schema=schema)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.port, log_level="warning", lifespan="on", http=http_protocol()
    )
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    return server, thread, app


def make_settings(home: Path, database: Database, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "database_url": database.url,
        "secret_key": "test-secret-" + uuid.uuid4().hex,
        # The port is known before the server starts: agent servers call back to it.
        "port": free_port(),
        # The suite makes many requests quickly: generous rate limits unless a test sets its own.
        "rate_limit_per_second": 100_000.0,
        "rate_limit_burst": 100_000,
        "start_rate_limit_per_second": 100_000.0,
        "start_rate_limit_burst": 100_000,
        "anonymous_rate_limit_per_second": 100_000.0,
        "anonymous_rate_limit_burst": 100_000,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def server_factory(database: Database, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[tuple[uvicorn.Server, threading.Thread]] = []
    secret = "test-secret-" + uuid.uuid4().hex

    def factory(**overrides: Any) -> LiveServer:
        # Servers made by one test share home, database and secret: a second one is a restart.
        overrides.setdefault("secret_key", secret)
        settings = make_settings(tmp_path / "home", database, **overrides)
        server, thread, app = start_server(settings, database.schema)
        started.append((server, thread))
        loop = _server_loop(server)
        live = LiveServer(f"http://127.0.0.1:{settings.port}", settings, loop, app)
        live.stop = lambda: _stop(server, thread)  # type: ignore[attr-defined]
        return live

    yield factory
    for server, thread in started:
        _stop(server, thread)
    _kill_leftover_sandboxes(tmp_path / "home" / "sandboxes")


def _kill_leftover_sandboxes(root: Path) -> None:
    """A test that failed half-way (or kept sandboxes running on purpose) must not leak agent servers."""
    import signal

    from threadline.sandboxes import cgroups
    from threadline.sandboxes.backend import ProcessBackend

    for pid in ProcessBackend(root, root)._sandbox_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    # Their cgroups too (they live outside the test's tmp directory).
    detection = cgroups.detect()
    if detection.usable:
        leftover = cgroups.SandboxCgroups(detection, root, cgroups.Limits())
        leftover.remove_stale(set())
        leftover.remove_parents()


def _stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    # Shutdown stops the server's sandboxes (SIGTERM, grace, SIGKILL): slow on a loaded machine.
    thread.join(timeout=180)
    if thread.is_alive():
        raise RuntimeError("test server did not shut down within 180 s")


def _server_loop(server: uvicorn.Server) -> asyncio.AbstractEventLoop:
    # uvicorn runs the app on the loop of its own thread; the listening socket's server knows it.
    loop: asyncio.AbstractEventLoop = server.servers[0].get_loop()
    return loop


@pytest.fixture
def starter(server_factory: Callable[..., LiveServer], tmp_path: Path) -> Callable[..., LiveServer]:
    """Servers whose starts get as far as creating a sandbox (which fails at once: there is no runtime)."""

    def make(**overrides: Any) -> LiveServer:
        values: dict[str, Any] = {"runtime_dir": tmp_path / "none", "llm_model": "openai/x"}
        values.update(overrides)
        return server_factory(**values)

    return make


@pytest.fixture
def server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    return server_factory()


@pytest.fixture
def alice(server: LiveServer) -> tuple[auth.User, httpx.Client]:
    user, key = server.user("alice")
    return user, server.client(key)


@pytest.fixture
def bob(server: LiveServer) -> tuple[auth.User, httpx.Client]:
    user, key = server.user("bob")
    return user, server.client(key)


# -- the real agent server --------------------------------------------------------------------------

RUNTIME_DIR = Path(
    os.environ.get("THREADLINE_TEST_RUNTIME_DIR", Path.home() / ".cache" / "threadline" / "agent-runtime")
)


@pytest.fixture(scope="session")
def agent_runtime() -> Path:
    from threadline.sandboxes import runtime

    if not runtime.is_installed(RUNTIME_DIR):
        if os.environ.get("THREADLINE_SKIP_RUNTIME"):
            pytest.skip("agent runtime not installed (THREADLINE_SKIP_RUNTIME is set)")
        pytest.fail(
            f"the agent runtime is not installed at {RUNTIME_DIR}; scripts/test installs it "
            "(or: THREADLINE_RUNTIME_DIR=... threadline runtime install)"
        )
    return RUNTIME_DIR


@pytest.fixture
def fake_llm() -> Iterator[Any]:
    from tests.support.fake_llm import FakeLLM

    llm = FakeLLM().start()
    yield llm
    llm.stop()


@pytest.fixture
def agent_server_factory(
    server_factory: Callable[..., LiveServer], agent_runtime: Path, fake_llm: Any, tmp_path: Path
) -> Callable[..., LiveServer]:
    """A Threadline whose sandboxes run the real openhands-agent-server against the fake LLM."""

    def factory(**overrides: Any) -> LiveServer:
        values: dict[str, Any] = {
            "runtime_dir": agent_runtime,
            "llm_model": "openai/fake-model",
            "llm_base_url": fake_llm.base_url,
            "llm_api_key": "fake-llm-key-" + uuid.uuid4().hex,
            "llm_input_cost_per_token": 1e-6,
            "llm_output_cost_per_token": 2e-6,
            "webhook_flush_delay": 0.2,
            "sandbox_stop_grace_seconds": 5.0,
            "git_url_template": f"file://{tmp_path}/git/{{repository}}.git",
        }
        values.update(overrides)
        return server_factory(**values)

    return factory


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = "") -> Any:
    """Poll until predicate() is truthy; return its value or fail after the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def refused_within(seconds: float, predicate: Callable[[], bool], what: str) -> float:
    """Poll `predicate` until it holds, failing after `seconds`; returns how long it took. For "takes effect
    within N s" guarantees: the clock starts when this is called, after the change committed."""
    start = time.monotonic()
    deadline = start + seconds
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.02)


# -- Threadline as a separate process ---------------------------------------------------------------


@pytest.fixture
def process_server_factory(database: Database, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `threadline serve` processes on the test's database. Every process made by one test shares
    home, database and secret, so a second one is a restart (or a replica); each gets its own port
    unless `port` is given; `wrap` runs it through a command that execs it (`cgroups.enter_command`: in
    a given cgroup). Extra keyword arguments are settings (`warm_pool_size=1` ->
    THREADLINE_WARM_POOL_SIZE=1)."""
    from tests.support.process_server import ProcessServer, server_env

    started: list[ProcessServer] = []
    secret = "test-secret-" + uuid.uuid4().hex

    def factory(
        *,
        port: int | None = None,
        start: bool = True,
        args: list[str] | None = None,
        wrap: list[str] | None = None,
        **settings: Any,
    ) -> ProcessServer:
        env = server_env(tmp_path / "home", database.url, database.schema, secret, port or free_port(), **settings)
        proc = ProcessServer(env, tmp_path / f"threadline-{len(started)}.log", args=args or [], wrap=wrap or [])
        if started and started[0].admin_key:
            proc.admin_key = started[0].admin_key
        started.append(proc)
        return proc.start() if start else proc

    yield factory
    for proc in started:
        with contextlib.suppress(Exception):
            proc.stop()
    _kill_leftover_sandboxes(tmp_path / "home" / "sandboxes")
