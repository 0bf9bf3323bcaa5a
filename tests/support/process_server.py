"""Threadline as its own OS process (`threadline serve`), for tests that kill it, signal it or run two.

The in-thread servers of conftest share the test's process; these do not: a SIGKILL here is a real crash,
a SIGTERM a real shutdown, and two of them share nothing but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import select

from threadline.conversations.service import create_record
from threadline.db.engine import Database
from threadline.sandboxes.backend import ProcessBackend
from threadline.sandboxes.tables import sandboxes

T = TypeVar("T")


def _threadline_command() -> list[str]:
    script = Path(sys.executable).with_name("threadline")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from threadline.cli.main import app; app()"]


@dataclass
class ProcessServer:
    """One `threadline serve` process; `env` is its whole THREADLINE_* configuration."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    admin_key: str | None = None
    # Arguments after `threadline serve`, e.g. ["--workers", "2"].
    args: list[str] = field(default_factory=list)
    # A command the server is started through (it runs the rest, e.g. by `exec`): one that first joins a
    # cgroup, or one that switches to another user.
    wrap: list[str] = field(default_factory=list)
    _log: Any = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.env["THREADLINE_PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"X-Access-Token": key} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def start(self, timeout: float = 120) -> ProcessServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
        env.update(self.env)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrap, *_threadline_command(), "serve", *self.args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"threadline exited with {self.proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if probe.get("/ready").status_code == 200:
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"threadline did not get ready in {timeout} s:\n{self.log_tail()}")
        # The first start prints the admin's key on stdout before it serves; later starts print nothing.
        if self.admin_key is None:
            os.set_blocking(self.proc.stdout.fileno(), False)
            line = self.proc.stdout.readline().decode().strip()
            if line.startswith("tl_"):
                self.admin_key = line

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing of Threadline's runs after it."""
        self.signal(signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 180) -> int:
        """SIGTERM and wait for the exit (a clean shutdown)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def server_env(
    home: Path, database_url: str, schema: str | None, secret: str, port: int, **extra: Any
) -> dict[str, str]:
    env = {
        "THREADLINE_HOME": str(home),
        "THREADLINE_DATABASE_URL": database_url,
        "THREADLINE_SECRET_KEY": secret,
        "THREADLINE_PORT": str(port),
        "THREADLINE_HOST": "127.0.0.1",
        "THREADLINE_RATE_LIMITS_ENABLED": "false",
        "THREADLINE_LOG_LEVEL": "info",
        # One process, as the crash and shutdown tests mean it (a SIGKILL is the server's); tests of
        # `--workers` say how many.
        "THREADLINE_WORKERS": "1",
    }
    if schema:
        env["THREADLINE_DATABASE_SCHEMA"] = schema
    env.update({f"THREADLINE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def with_database(database_url: str, schema: str | None, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run `action` on a database engine of the test's own (the server under test has its own process)."""

    async def run() -> T:
        db = Database(database_url, schema=schema)
        try:
            return await action(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def insert_conversations(database_url: str, schema: str | None, user_id: str, count: int, **fields: Any) -> list[str]:
    """Conversation records made through the service layer (no agent server), for load on a live server."""

    async def insert(db: Database) -> list[str]:
        return [(await create_record(db, user_id=user_id, **fields)).record.id for _ in range(count)]

    return with_database(database_url, schema, insert)


def recorded_sandbox_pid(database_url: str, schema: str | None, sandbox_id: str) -> int | None:
    """The pid of a sandbox's agent server as its record has it."""

    async def read(db: Database) -> int | None:
        async with db.read() as conn:
            pid = (await conn.execute(select(sandboxes.c.pid).where(sandboxes.c.id == sandbox_id))).scalar_one()
            return int(pid) if pid is not None else None

    return with_database(database_url, schema, read)


def sandbox_processes(home: str | Path, sandbox_id: str | None = None) -> dict[int, str]:
    """Live processes of the sandboxes of the Threadline whose THREADLINE_HOME is `home`: pid -> sandbox id."""
    root = Path(home) / "sandboxes"
    return ProcessBackend(root, root)._sandbox_pids(sandbox_id)


def agent_settings(runtime_dir: Path, llm_base_url: str, **extra: Any) -> dict[str, Any]:
    """Settings of a Threadline whose sandboxes run the real agent server against the fake LLM."""
    return {
        "runtime_dir": runtime_dir,
        "llm_model": "openai/fake-model",
        "llm_base_url": llm_base_url,
        "llm_api_key": "fake-llm-key",
        "webhook_flush_delay": 0.2,
        "sandbox_stop_grace_seconds": 5,
        **extra,
    }
