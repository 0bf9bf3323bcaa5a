"""Sandbox backends: where agent servers run.

`SandboxBackend` is the seam. The `bwrap` backend (`isolated.py`, the default on Linux) runs each agent
server in its own namespaces; the `process` backend here runs each as a plain child process of this
machine's user, with no isolation at all: safe for one trusted user only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from threadline.sandboxes import runtime
from threadline.sandboxes.egress import Rule

# Set on every agent server we start; children (tmux, shells) inherit it even after they daemonise,
# which is how we find every process of a sandbox, including ones that left its process group.
SANDBOX_ENV = "THREADLINE_SANDBOX_ID"
SANDBOX_ROOT_ENV = "THREADLINE_SANDBOX_ROOT"


@dataclass(frozen=True)
class Launch:
    pid: int | None
    port: int
    url: str


class SandboxBackend(Protocol):
    name: str

    async def launch(
        self, sandbox_id: str, work_dir: Path, session_key: str, webhook_base_url: str, runtime_dir: Path | None = None
    ) -> Launch: ...

    def is_alive(self, sandbox_id: str, pid: int | None) -> bool: ...

    async def stop(self, sandbox_id: str, pid: int | None, grace_seconds: float) -> None: ...

    async def reap_orphans(self, live_ids: set[str]) -> list[int]: ...

    async def reattach(self, sandbox_id: str, work_dir: Path, pid: int | None, port: int | None = None) -> int: ...

    async def allow_egress(self, sandbox_id: str, work_dir: Path, rules: list[Rule]) -> None: ...

    def over_memory(self) -> dict[str, str]: ...

    def workspace_dir(self, work_dir: Path) -> str: ...

    def threadline_url(self, callback_base_url: str) -> str: ...

    def private_file(self, sandbox_id: str, work_dir: Path, content: str) -> tuple[Path, str]: ...

    def limits_info(self) -> dict[str, object]: ...

    async def close(self) -> None: ...


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (SANDBOX_ENV.encode(), SANDBOX_ROOT_ENV.encode()):
            env[key.decode()] = value.decode(errors="replace")
    return env


def _exited(pid: int | None) -> bool:
    """The process is gone or a zombie (it runs no more); None: there is no process to wait for."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


class VerifiedProcesses:
    """Processes already shown to be a sandbox's (by their environment), each watched through a pidfd: a later
    check is one poll instead of two /proc reads (a page over 20 re-attached sandboxes asked 40 files), and a
    pidfd keeps meaning that one process even when its pid is reused."""

    def __init__(self) -> None:
        self._watched: dict[str, tuple[int, int, select.poll]] = {}  # sandbox id -> (pid, pidfd, its poll)

    def alive(self, sandbox_id: str, pid: int) -> bool | None:
        """Whether the watched process `pid` of the sandbox still runs; None when it is not watched."""
        watched = self._watched.get(sandbox_id)
        if watched is None or watched[0] != pid:
            return None
        if watched[2].poll(0):  # readable: the process has exited
            self.forget(sandbox_id)
            return False
        return True

    def verify(self, sandbox_id: str, pid: int, check: Callable[[], bool]) -> bool:
        """`check()` that `pid` is the sandbox's, and watch it from now on if it is. The pidfd is opened
        first, so it is the process checked (or one that has exited since, which then reads as gone)."""
        try:
            fd: int | None = os.pidfd_open(pid)
        except OSError:
            fd = None  # gone, or no pidfds here: checked every time
        if not check():
            if fd is not None:
                os.close(fd)
            return False
        if fd is not None:
            self.forget(sandbox_id)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            self._watched[sandbox_id] = (pid, fd, poller)
            return self.alive(sandbox_id, pid) is not False
        return True

    def forget(self, sandbox_id: str) -> None:
        watched = self._watched.pop(sandbox_id, None)
        if watched is not None:
            os.close(watched[1])

    def forget_all(self) -> None:
        for sandbox_id in list(self._watched):
            self.forget(sandbox_id)


class ProcessBackend:
    """Each sandbox is one `openhands-agent-server` child process on 127.0.0.1, in its own session."""

    name = "process"

    def __init__(self, runtime_dir: Path, sandboxes_root: Path, *, flush_delay: float = 1.0) -> None:
        self.runtime_dir = runtime_dir
        self.root = sandboxes_root
        self.flush_delay = flush_delay
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._verified = VerifiedProcesses()

    def command(self, port: int, runtime_dir: Path | None = None) -> list[str]:
        python = runtime.python_of(runtime_dir or self.runtime_dir)
        return [str(python), "-m", "openhands.agent_server", "--host", "127.0.0.1", "--port", str(port)]

    def environment(self, sandbox_id: str, work_dir: Path, session_key: str, webhook_base_url: str) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "USER", "LOGNAME", "SHELL", "TMPDIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(
            {
                SANDBOX_ENV: sandbox_id,
                SANDBOX_ROOT_ENV: str(self.root),
                "OH_SESSION_API_KEYS_0": session_key,
                "OH_WEBHOOKS_0_BASE_URL": webhook_base_url,
                "OH_WEBHOOKS_0_FLUSH_DELAY": str(self.flush_delay),
                "OH_ENABLE_VSCODE": "false",
                "OH_ENABLE_BROWSER": "false",
                "OH_PRELOAD_TOOLS": "false",
                "OH_CONVERSATIONS_PATH": str(work_dir / "conversations"),
                "TMUX_TMPDIR": str(work_dir / "tmux"),
                "PYTHONUNBUFFERED": "1",
                # The agent server stamps events in local time without a zone: make that UTC.
                "TZ": "UTC",
            }
        )
        return env

    async def launch(
        self, sandbox_id: str, work_dir: Path, session_key: str, webhook_base_url: str, runtime_dir: Path | None = None
    ) -> Launch:
        """Start the agent server of `runtime_dir` (the sandbox's spec's; None: the configured runtime)."""
        runtime_dir = runtime_dir or self.runtime_dir
        require_runtime(runtime_dir)
        for sub in ("workspace", "conversations", "tmux"):
            (work_dir / sub).mkdir(parents=True, exist_ok=True)
        port = _free_port()
        env = self.environment(sandbox_id, work_dir, session_key, webhook_base_url)
        proc = spawn(self.command(port, runtime_dir), work_dir, env)
        self._children[sandbox_id] = proc
        return Launch(pid=proc.pid, port=port, url=f"http://127.0.0.1:{port}")

    def is_alive(self, sandbox_id: str, pid: int | None) -> bool:
        child = self._children.get(sandbox_id)
        if child is not None and child.pid == pid:
            return child.poll() is None
        if pid is None:
            return False
        # A re-attached process (started by an earlier Threadline): check it is still ours, not a reused pid.
        known = self._verified.alive(sandbox_id, pid)
        if known is not None:
            return known
        return self._verified.verify(
            sandbox_id, pid, lambda: not _is_zombie(pid) and _read_environ(pid).get(SANDBOX_ENV) == sandbox_id
        )

    def _sandbox_pids(self, sandbox_id: str | None = None) -> dict[int, str]:
        """Live processes started for sandboxes under our root: pid -> sandbox id."""
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            env = _read_environ(pid)
            if env.get(SANDBOX_ROOT_ENV) != str(self.root):
                continue
            owner = env.get(SANDBOX_ENV)
            if owner and (sandbox_id is None or owner == sandbox_id) and not _is_zombie(pid):
                found[pid] = owner
        return found

    async def stop(self, sandbox_id: str, pid: int | None, grace_seconds: float) -> None:
        """SIGTERM the agent server's process group, wait, then SIGKILL whatever of the sandbox is left."""
        # The recorded pid counts only while it is still this sandbox's process (not a reused pid).
        ours = pid if pid is not None and self.is_alive(sandbox_id, pid) else None
        if ours is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ours, signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline and self.is_alive(sandbox_id, ours):
                await asyncio.sleep(0.1)
        await self._kill_the_rest(sandbox_id, ours)

    async def _kill_the_rest(self, sandbox_id: str, main_pid: int | None) -> None:
        """SIGKILL whatever of the sandbox is left and wait until none of it runs (and our child is reaped)."""
        for leftover in self._sandbox_pids(sandbox_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(leftover, signal.SIGKILL)
        # SIGKILL is asynchronous: return only once nothing of the sandbox runs any more. A process that is
        # exiting may have lost its environment (so no tag) before it is a zombie: the pid is watched too.
        deadline = time.monotonic() + 10
        while (self._sandbox_pids(sandbox_id) or not _exited(main_pid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._verified.forget(sandbox_id)
        child = self._children.pop(sandbox_id, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.wait, 10)

    async def reap_orphans(self, live_ids: set[str]) -> list[int]:
        """Kill processes of sandboxes that have no live record (a crash between launch and record)."""
        killed = []
        for pid, owner in self._sandbox_pids().items():
            if owner not in live_ids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        return killed

    async def reattach(self, sandbox_id: str, work_dir: Path, pid: int | None, port: int | None = None) -> int:
        """Nothing to set up again: a process sandbox is reached on its own TCP port."""
        return port or 0

    async def allow_egress(self, sandbox_id: str, work_dir: Path, rules: list[Rule]) -> None:
        """A process sandbox has the host's whole network: there is nothing to allow."""

    def over_memory(self) -> dict[str, str]:
        return {}

    def workspace_dir(self, work_dir: Path) -> str:
        """Where the agent server finds the sandbox's workspace (the same path: no mount namespace)."""
        return str(work_dir / "workspace")

    def threadline_url(self, callback_base_url: str) -> str:
        """Where the agent server reaches Threadline (callbacks, secret lookups): its public base URL."""
        return callback_base_url

    def private_file(self, sandbox_id: str, work_dir: Path, content: str) -> tuple[Path, str]:
        """A file only the sandbox's user can read, outside its workspace: (path on the host, path inside)."""
        return write_private_file(work_dir / "tmp", content, uid=None)

    def limits_info(self) -> dict[str, object]:
        return {"isolation": "none: agent servers run as the server's user (unsafe for more than one user)"}

    async def close(self) -> None:
        """Nothing held outside the processes but the pidfds watching them."""
        self._verified.forget_all()


def write_private_file(directory: Path, content: str, *, uid: int | None) -> tuple[Path, str]:
    """Write `content` to a new file of mode 0600 (owned by `uid` when given) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".threadline-{secrets.token_hex(8)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if uid is not None:
            os.fchown(fd, uid, uid)
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    return path, str(path)


def require_runtime(runtime_dir: Path) -> None:
    if not runtime.python_of(runtime_dir).exists():
        raise FileNotFoundError(
            f"the agent runtime is not installed at {runtime_dir}; run `threadline runtime install` "
            "(with `--version V` for a version other than the pinned one)"
        )


def spawn(
    command: list[str], work_dir: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start a sandbox's first process in a session of its own, its output appended to agent-server.log."""
    log = (work_dir / "agent-server.log").open("ab")
    try:
        return subprocess.Popen(
            command,
            cwd=work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    finally:
        log.close()


def remove_work_dir(work_dir: Path) -> None:
    """Remove a stopped sandbox's directory, with whatever its processes left in it."""
    shutil.rmtree(work_dir, ignore_errors=True)
    if not os.path.lexists(work_dir):
        return
    # What is left: directories the sandbox made unreadable or unwritable to their owner. Without root the
    # owner is this process's user (a sandbox has no uid of its own then), so they are opened up, each
    # before it is entered; never through a symlink the sandbox made.
    for _directory, subdirs, _files, dir_fd in os.fwalk(work_dir):
        for name in subdirs:
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    os.chmod(name, 0o700, dir_fd=dir_fd)
    shutil.rmtree(work_dir, ignore_errors=True)
