"""The isolating sandbox backend (`bwrap`): each agent server in its own namespaces, with bubblewrap.

What one sandbox sees and can do (docs/security.md has the threat model):

- **Files:** its own mount view: system directories (`/usr`, a chosen part of `/etc`) and the agent
  runtime read-only; its own `workspace`, `conversations`, home and `/tmp` read-write (all four are
  directories of this sandbox on the host, so a pause keeps them); the rest of its tree (`/`, `/dev`) is
  read-only too; nothing else of the host:
  not `THREADLINE_HOME` (the database, the server secret), not the installing user's home, not another
  sandbox. Generated `/etc/passwd`, `/etc/group` and `/etc/hosts` name only the sandbox's user.
- **User:** when Threadline runs as root, a user of its own (`THREADLINE_SANDBOX_UID_BASE` + a number
  derived from the sandbox id), so everything it creates is owned by that user and nothing outside
  can be touched through it; otherwise the server's own user, mapped in a user namespace that cannot
  create further ones (what it creates is then owned by the server's user on the host, in the sandbox's
  directory of mode 0700). No capabilities, no-new-privileges.
- **System calls:** a seccomp filter (`seccomp.py`) on every process of the sandbox, in both modes:
  creating a user namespace fails (EPERM; `clone3`, whose flags seccomp cannot read, answers ENOSYS so
  C libraries fall back to `clone`). When Threadline runs as root it is the only guard against them.
- **Processes:** its own pid namespace (it sees and can signal only itself); when its first process
  ends, the kernel ends every process of the sandbox.
- **Network:** its own network namespace with only loopback. Threadline reaches the agent server
  through a Unix socket it created itself outside the sandbox (the listening descriptor is handed in);
  the agent server's callbacks and all outbound traffic go through the egress proxy (`egress.py`).
- **Environment:** only what the agent server needs; never the database URL, the server secret or any
  other sandbox's keys.
- **Limits:** where a cgroup hierarchy is usable (`cgroups.py`: v2 delegated to Threadline, or writable v1
  as root), each sandbox has a cgroup of its own, joined before bubblewrap runs, so the kernel enforces
  its memory (no swap), CPU and process count; a process the kernel kills for the memory limit ends the
  sandbox, recorded ERROR with the reason. Process count and open files are also limited by rlimit.
  Without a usable cgroup (or `THREADLINE_SANDBOX_CGROUPS=off`): memory by a watchdog that ends a sandbox
  whose processes together use more than the limit (recorded ERROR likewise), CPU not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from threadline.config import Settings
from threadline.sandboxes import cgroups, launcher, runtime, seccomp
from threadline.sandboxes.backend import (
    SANDBOX_ENV,
    SANDBOX_ROOT_ENV,
    Launch,
    ProcessBackend,
    require_runtime,
    spawn,
    write_private_file,
)
from threadline.sandboxes.egress import INTERNAL_HOST, EgressProxy, Rule

log = logging.getLogger("threadline.sandboxes.isolated")

AGENT_HOST_SUFFIX = ".sandbox.internal"
_INSIDE_RUN = "/run/threadline"
_INSIDE_HOME = "/home/agent"
_INSIDE_LAUNCHER = "/opt/threadline/launcher.py"
_INSIDE_RUNTIME = "/opt/agent-runtime"
INSIDE_WORKSPACE = "/workspace"
_INSIDE_CONVERSATIONS = "/var/lib/agent-server/conversations"
_AGENT_PORT = 8000
_PROXY_PORT = 3128
_UID_RANGE = 800_000
# The part of /etc a sandbox sees: what programs need to run, find certificates and libraries.
_ETC = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "localtime",
    "magic",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "pki",
    "profile",
    "profile.d",
    "protocols",
    "services",
    "shells",
    "ssl",
    "terminfo",
    "timezone",
)


_WATCHDOG = "watchdog (sum of the sandbox's resident memory, checked every second)"


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 4096
    pids: int = 1024
    open_files: int = 4096
    cpus: float | None = None
    # Which cgroup hierarchy enforces the limits (None, or one not usable: rlimits and the watchdog only).
    cgroup: cgroups.Detection | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        detection = (
            cgroups.detect()
            if settings.sandbox_cgroups == "auto"
            else cgroups.Detection(None, reason="turned off (THREADLINE_SANDBOX_CGROUPS=off)")
        )
        return cls(
            memory_mb=settings.sandbox_memory_mb,
            pids=settings.sandbox_max_processes,
            open_files=settings.sandbox_max_open_files,
            cpus=settings.sandbox_cpus,
            cgroup=detection,
        )

    def cgroup_limits(self) -> cgroups.Limits:
        return cgroups.Limits(memory_mb=self.memory_mb, cpus=self.cpus, pids=self.pids)

    def enforcement(self) -> dict[str, object]:
        """What is enforced and how (shown by `threadline runtime status` and /server_info)."""
        by = cgroups.enforced_by(self.cgroup) if self.cgroup is not None else {}
        info: dict[str, object] = {
            "cgroups": self.cgroup.describe() if self.cgroup is not None else "not used",
            "memory_mb": self.memory_mb or None,
            "memory_enforced_by": (by.get("memory") or _WATCHDOG) if self.memory_mb else None,
            "pids": self.pids or None,
            "pids_enforced_by": (by.get("pids") or "rlimit (RLIMIT_NPROC)") if self.pids else None,
            "open_files": self.open_files or None,
            "open_files_enforced_by": "rlimit (RLIMIT_NOFILE)" if self.open_files else None,
            "cpus": self.cpus,
            "cpus_enforced_by": by.get("cpus") if self.cpus else None,
        }
        if not by:
            info["cpus_note"] = (
                "not enforced: needs a writable cgroup (v2 with the cpu controller delegated, or v1's cpu hierarchy)"
            )
        info["user_namespaces"] = user_namespaces_enforcement()
        return info


def user_namespaces_enforcement() -> str:
    """How a sandbox is kept from creating user namespaces (the seccomp filter always; when Threadline is
    not root, bubblewrap's --disable-userns too)."""
    if os.geteuid() == 0:
        return seccomp.enforcement()
    return f"{seccomp.enforcement()}; and bubblewrap's --disable-userns"


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def check_bwrap() -> str | None:
    """None when bubblewrap can make a sandbox here (namespaces and the seccomp filter), else why not
    (with what to do)."""
    path = bwrap_path()
    if path is None:
        return "bubblewrap is not installed: run `apt-get install bubblewrap` (as root) or your system's equivalent"
    with seccomp.filter_fd() as seccomp_fd:
        probe = [path, "--unshare-pid", "--unshare-net", "--seccomp", str(seccomp_fd), "--ro-bind", "/", "/"]
        if os.geteuid() != 0:
            probe[1:1] = ["--unshare-user"]
        result = subprocess.run(
            [*probe, "--", "true"], capture_output=True, text=True, timeout=30, check=False, pass_fds=(seccomp_fd,)
        )
    if result.returncode != 0:
        return f"bubblewrap cannot create a sandbox here: {result.stderr.strip()[:300]}"
    return None


def socket_root(sandboxes_root: Path) -> Path:
    """A short directory for sandboxes' Unix sockets (paths are limited to 107 bytes), private to us."""
    digest = hashlib.sha256(str(sandboxes_root.resolve()).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"threadline-{os.geteuid()}-{digest}"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
        raise PermissionError(f"{path} must be a directory of user {os.geteuid()} with mode 0700")
    return path


def sandbox_uid(sandbox_id: str, base: int) -> int:
    return base + int(hashlib.sha256(sandbox_id.encode()).hexdigest(), 16) % _UID_RANGE


def _python_prefix(runtime_dir: Path) -> Path | None:
    """The installation the runtime venv's interpreter comes from (to be mounted read-only too)."""
    try:
        for line in (runtime_dir / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    except OSError:
        return None
    return None


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class SandboxTransport(httpx.AsyncBaseTransport):
    """Routes `http://<sandbox id>.sandbox.internal/...` to that sandbox's agent socket, the rest to TCP."""

    def __init__(self, socket_of: dict[str, Path], default: httpx.AsyncBaseTransport) -> None:
        self.socket_of = socket_of
        self.default = default
        self._pools: dict[str, httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if not host.endswith(AGENT_HOST_SUFFIX):
            return await self.default.handle_async_request(request)
        sandbox_id = host.removesuffix(AGENT_HOST_SUFFIX)
        pool = self._pools.get(sandbox_id)
        if pool is None:
            path = self.socket_of.get(sandbox_id)
            if path is None:
                raise httpx.ConnectError(f"sandbox {sandbox_id} has no agent socket here", request=request)
            pool = self._pools[sandbox_id] = httpx.AsyncHTTPTransport(uds=str(path))
        return await pool.handle_async_request(request)

    async def forget(self, sandbox_id: str) -> None:
        pool = self._pools.pop(sandbox_id, None)
        if pool is not None:
            await pool.aclose()

    async def aclose(self) -> None:
        for sandbox_id in list(self._pools):
            await self.forget(sandbox_id)
        await self.default.aclose()


class IsolatedBackend(ProcessBackend):
    """Agent servers in bubblewrap sandboxes. Finding, checking and reaping a sandbox's processes works
    as for the process backend (the tag in their environment); what differs is how one is launched,
    reached and stopped."""

    name = "bwrap"
    # Every spec's runtime is mounted here (its host path stays hidden from the sandbox).
    inside_runtime_dir = _INSIDE_RUNTIME

    def __init__(
        self,
        runtime_dir: Path,
        sandboxes_root: Path,
        *,
        egress: EgressProxy,
        flush_delay: float = 1.0,
        limits: SandboxLimits | None = None,
        uid_base: int = 200_000,
        read_only_paths: list[Path] | None = None,
        expose_host: str | None = None,
    ) -> None:
        super().__init__(runtime_dir, sandboxes_root, flush_delay=flush_delay)
        # THREADLINE_SANDBOX_AGENT_URL=port: each agent server also gets a TCP port of its own on this host.
        self.expose_host = expose_host
        self._exposed: dict[str, asyncio.Server] = {}
        self.egress = egress
        self.limits = limits or SandboxLimits()
        self.cgroups = self._setup_cgroups(sandboxes_root)
        # Sandboxes whose memory the kernel limits (their cgroup's OOM kills are reported); the others'
        # (none when cgroups are used, but a sandbox re-attached from a run without them) the watchdog's.
        self._in_cgroup: set[str] = set()
        self.uid_base = uid_base
        self.read_only_paths = list(read_only_paths or [])
        self.sockets = socket_root(sandboxes_root)
        self.agent_sockets: dict[str, Path] = {}
        self._namespaces: dict[str, str] = {}
        self.transport: SandboxTransport | None = None

    def _setup_cgroups(self, sandboxes_root: Path) -> cgroups.SandboxCgroups | None:
        detection = self.limits.cgroup
        if detection is None or not detection.usable:
            return None
        manager = cgroups.SandboxCgroups(detection, sandboxes_root, self.limits.cgroup_limits())
        try:
            manager.prepare()
        except OSError as exc:
            log.warning("sandbox cgroups cannot be set up (%s): memory by the watchdog, CPU not limited", exc)
            self.limits = replace(self.limits, cgroup=cgroups.Detection(None, reason=f"setting up failed: {exc}"))
            return None
        return manager

    # -- wiring ---------------------------------------------------------------------------------

    def make_transport(self, default: httpx.AsyncBaseTransport) -> SandboxTransport:
        self.transport = SandboxTransport(self.agent_sockets, default)
        return self.transport

    def _sandbox_sockets(self, sandbox_id: str) -> Path:
        return self.sockets / sandbox_id

    def _uid(self, sandbox_id: str) -> int | None:
        return sandbox_uid(sandbox_id, self.uid_base) if os.geteuid() == 0 else None

    # -- launch ---------------------------------------------------------------------------------

    def _prepare_dirs(self, sandbox_id: str, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(work_dir, 0o700)  # host-only: the sandbox sees only the subdirectories bound into it
        uid = self._uid(sandbox_id)
        for name in ("workspace", "conversations", "home", "tmp"):
            path = work_dir / name
            path.mkdir(exist_ok=True)
            if uid is not None and path.lstat().st_uid != uid:
                os.chown(path, uid, uid)
        etc = work_dir / "etc"
        etc.mkdir(exist_ok=True)
        inside_uid = uid if uid is not None else os.geteuid()
        inside_gid = uid if uid is not None else os.getegid()
        (etc / "passwd").write_text(
            f"root:x:0:0:root:/root:/bin/sh\nagent:x:{inside_uid}:{inside_gid}:agent:{_INSIDE_HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )
        (etc / "group").write_text(f"root:x:0:\nagent:x:{inside_gid}:\nnogroup:x:65534:\n")
        # Repositories mounted read-only (a file:// git template) belong to another user; inside the sandbox
        # everything it may read is meant to be read.
        (etc / "gitconfig").write_text("[safe]\n\tdirectory = *\n")
        (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost\n")

    def environment_inside(self, sandbox_id: str, session_key: str) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{_PROXY_PORT}"
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": _INSIDE_HOME,
            "USER": "agent",
            "LOGNAME": "agent",
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
            "TMUX_TMPDIR": "/tmp",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",
            "GIT_TERMINAL_PROMPT": "0",
            SANDBOX_ENV: sandbox_id,
            SANDBOX_ROOT_ENV: str(self.root),
            "OH_SESSION_API_KEYS_0": session_key,
            "OH_WEBHOOKS_0_BASE_URL": f"http://{INTERNAL_HOST}/api/v1/webhooks",
            "OH_WEBHOOKS_0_FLUSH_DELAY": str(self.flush_delay),
            "OH_ENABLE_VSCODE": "false",
            "OH_ENABLE_BROWSER": "false",
            "OH_PRELOAD_TOOLS": "false",
            "OH_CONVERSATIONS_PATH": _INSIDE_CONVERSATIONS,
            # Every way out is the egress proxy; only the agent server's own address is direct.
            **{name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
            "NO_PROXY": "localhost",
            "no_proxy": "localhost",
            # LiteLLM's aiohttp transport ignores the proxy variables; its httpx one honours them.
            "DISABLE_AIOHTTP_TRANSPORT": "True",
        }

    def bwrap_command(
        self,
        sandbox_id: str,
        work_dir: Path,
        session_key: str,
        agent_fd: int,
        info_fd: int,
        seccomp_fd: int,
        runtime_dir: Path | None = None,
    ) -> list[str]:
        bwrap = bwrap_path()
        if bwrap is None:
            raise FileNotFoundError(check_bwrap() or "bubblewrap is not installed")
        uid = self._uid(sandbox_id)
        args = [bwrap]
        if uid is None:
            # Not root: a user namespace (our own uid inside), which may not make further ones.
            args += ["--unshare-user", "--disable-userns"]
        args += [
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--new-session", "--clearenv", "--info-fd", str(info_fd),
            # Loaded just before the first process starts: every process of the sandbox runs under it.
            "--seccomp", str(seccomp_fd),
        ]  # fmt: skip
        for key, value in self.environment_inside(sandbox_id, session_key).items():
            args += ["--setenv", key, value]
        args += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
            host = Path("/") / top
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{top}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{top}"]
        for name in _ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for name in ("passwd", "group", "hosts", "gitconfig"):
            args += ["--ro-bind", str(work_dir / "etc" / name), f"/etc/{name}"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(work_dir / "tmp"), "/tmp", "--bind", str(work_dir / "home"), _INSIDE_HOME]
        args += ["--ro-bind", str(self._sandbox_sockets(sandbox_id)), _INSIDE_RUN]
        # The runtime of the sandbox's spec (one agent-server version), always at the same place inside.
        runtime_dir = (runtime_dir or self.runtime_dir).resolve()
        args += ["--ro-bind", str(runtime_dir), _INSIDE_RUNTIME]
        prefix = _python_prefix(runtime_dir)
        if prefix is not None and not str(prefix).startswith("/usr/"):
            args += ["--ro-bind", str(prefix), str(prefix)]
        for path in self.read_only_paths:
            args += ["--ro-bind-try", str(path), str(path)]
        args += ["--ro-bind", str(Path(launcher.__file__).resolve()), _INSIDE_LAUNCHER]
        args += ["--bind", str(work_dir / "workspace"), INSIDE_WORKSPACE]
        args += ["--bind", str(work_dir / "conversations"), _INSIDE_CONVERSATIONS]
        args += _open_mount_parents(args)
        # The root tmpfs, /dev's and the directories bubblewrap made on them (/etc, /run, /dev/shm, ...) belong
        # to the sandbox's user when Threadline is not root (its user namespace): read-only, as they are to a
        # sandbox user of its own. Last: each applies to that one mount, not to the ones made on it.
        args += ["--remount-ro", "/dev", "--remount-ro", "/"]
        args += ["--chdir", INSIDE_WORKSPACE]
        python = str(runtime.python_of(Path(_INSIDE_RUNTIME)))
        args += ["--", python, "-I", _INSIDE_LAUNCHER]
        if uid is not None:
            args += ["--uid", str(uid), "--gid", str(uid)]
        args += [
            "--agent-fd", str(agent_fd), "--agent-port", str(_AGENT_PORT), "--proxy-port", str(_PROXY_PORT),
            "--egress-socket", f"{_INSIDE_RUN}/egress.sock", "--limit", "core=0",
            "--conversations", _INSIDE_CONVERSATIONS,
        ]  # fmt: skip
        if self.limits.pids:
            args += ["--limit", f"nproc={self.limits.pids}"]
        if self.limits.open_files:
            args += ["--limit", f"nofile={self.limits.open_files}"]
        args += ["--", python, "-m", "openhands.agent_server", "--host", "localhost", "--port", str(_AGENT_PORT)]
        return args

    async def launch(
        self, sandbox_id: str, work_dir: Path, session_key: str, webhook_base_url: str, runtime_dir: Path | None = None
    ) -> Launch:
        runtime_dir = runtime_dir or self.runtime_dir
        require_runtime(runtime_dir)
        await asyncio.to_thread(self._prepare_dirs, sandbox_id, work_dir)
        run_dir = self._sandbox_sockets(sandbox_id)
        _private_dir(self.sockets)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(mode=0o755)
        await self.egress.serve(sandbox_id, run_dir / "egress.sock")
        await self._load_policy(sandbox_id, work_dir)
        agent_path = run_dir / "agent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        info_read, info_write = os.pipe()
        try:
            listener.bind(str(agent_path))
            os.chmod(agent_path, 0o600)
            listener.listen(256)
            env = {SANDBOX_ENV: sandbox_id, SANDBOX_ROOT_ENV: str(self.root), "PATH": os.environ.get("PATH", "")}
            with seccomp.filter_fd() as seccomp_fd:
                command = self.bwrap_command(
                    sandbox_id, work_dir, session_key, listener.fileno(), info_write, seccomp_fd, runtime_dir
                )
                if self.cgroups is not None:
                    await asyncio.to_thread(self.cgroups.create, sandbox_id)
                    # bubblewrap is started inside the cgroup, so is everything it starts.
                    command = cgroups.enter_command(self.cgroups.procs_files(sandbox_id), command)
                proc = spawn(command, work_dir, env, pass_fds=(listener.fileno(), info_write, seccomp_fd))
        except BaseException:
            os.close(info_read)
            await self.egress.close(sandbox_id)
            await self._remove_cgroup(sandbox_id)
            raise
        finally:
            listener.close()
            os.close(info_write)
        try:
            info = await asyncio.to_thread(_read_info, info_read, proc)
        except BaseException:
            await self._remove_cgroup(sandbox_id)
            raise
        finally:
            os.close(info_read)
        if self.cgroups is not None:
            self._in_cgroup.add(sandbox_id)
        init_pid = int(info["child-pid"])
        self._children[sandbox_id] = proc
        self.agent_sockets[sandbox_id] = agent_path
        self._namespaces[sandbox_id] = f"pid:[{info['pid-namespace']}]"
        if self.transport is not None:
            await self.transport.forget(sandbox_id)
        port = await self._expose(sandbox_id, None)
        return Launch(pid=init_pid, port=port, url=f"http://{sandbox_id}{AGENT_HOST_SUFFIX}")

    async def reattach(self, sandbox_id: str, work_dir: Path, pid: int | None, port: int | None = None) -> int:
        """After a restart: serve the egress socket (and the agent port, on the same number when it is free)
        of a sandbox whose agent server kept running. Returns the agent port (0: none)."""
        run_dir = self._sandbox_sockets(sandbox_id)
        if not run_dir.is_dir():
            return 0
        await self.egress.serve(sandbox_id, run_dir / "egress.sock")
        await self._load_policy(sandbox_id, work_dir)
        self.agent_sockets[sandbox_id] = run_dir / "agent.sock"
        namespace = _pid_namespace(pid) if pid else None
        if namespace:
            self._namespaces[sandbox_id] = namespace
        # Its cgroup (made by the Threadline that launched it, maybe under another parent: found from where
        # its process is) is kept and used from now on; without one the watchdog watches it.
        if self.cgroups is not None and pid and await asyncio.to_thread(self.cgroups.adopt, sandbox_id, pid):
            self._in_cgroup.add(sandbox_id)
        return await self._expose(sandbox_id, port)

    # -- agent ports ----------------------------------------------------------------------------

    async def _expose(self, sandbox_id: str, port: int | None) -> int:
        """A TCP port on this host that leads straight to the sandbox's agent server (0 when ports are off).

        Upstream's sandboxes are reached at the root of a URL of their own, and some clients depend on it
        (the OpenHands SDK's cloud workspace cannot use a URL with a path). Bytes are relayed as they are:
        the agent server itself demands the sandbox's session key on everything but its liveness probes.
        """
        if self.expose_host is None:
            return 0
        await self._unexpose(sandbox_id)
        agent_socket = self.agent_sockets[sandbox_id]

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.open_unix_connection(str(agent_socket))
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(launcher.pipe(reader, upstream[1]), launcher.pipe(upstream[0], writer))
            finally:
                for end in (writer, upstream[1]):
                    end.close()

        try:
            server = await asyncio.start_server(relay, self.expose_host, port or 0)
        except OSError:
            server = await asyncio.start_server(relay, self.expose_host, 0)  # the old number is taken
        self._exposed[sandbox_id] = server
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def _unexpose(self, sandbox_id: str) -> None:
        server = self._exposed.pop(sandbox_id, None)
        if server is not None:
            server.close()

    # -- egress ---------------------------------------------------------------------------------

    async def allow_egress(self, sandbox_id: str, work_dir: Path, rules: list[Rule]) -> None:
        """Let this sandbox reach more (a user's LLM, its repository's host); kept with the sandbox."""
        policy = self.egress.policy(sandbox_id)
        added = [rule for rule in rules if policy.add(rule)]
        if not added:
            return
        extra = [r for r in policy.rules if r not in self.egress.base_rules]
        data = [{"host": r.host, "port": r.port, "trusted": r.trusted} for r in extra]
        await asyncio.to_thread((work_dir / "egress.json").write_text, json.dumps(data))

    async def _load_policy(self, sandbox_id: str, work_dir: Path) -> None:
        try:
            data = json.loads((work_dir / "egress.json").read_text())
        except (OSError, ValueError):
            return
        policy = self.egress.policy(sandbox_id)
        for item in data:
            policy.add(Rule(str(item["host"]), item.get("port"), bool(item.get("trusted"))))

    # -- limits ---------------------------------------------------------------------------------

    def workspace_dir(self, work_dir: Path) -> str:
        return INSIDE_WORKSPACE

    def threadline_url(self, callback_base_url: str) -> str:
        """Inside, Threadline is only reachable by name through the egress proxy's relay."""
        return f"http://{INTERNAL_HOST}"

    def private_file(self, sandbox_id: str, work_dir: Path, content: str) -> tuple[Path, str]:
        """In the sandbox's private /tmp, owned by its user (root-run) or ours (its user namespace)."""
        host, _ = write_private_file(work_dir / "tmp", content, uid=self._uid(sandbox_id))
        return host, f"/tmp/{host.name}"

    def limits_info(self) -> dict[str, object]:
        return {
            "isolation": "bubblewrap: own mount, pid, network, ipc and uts namespaces"
            + ("; a user of its own per sandbox" if os.geteuid() == 0 else "; a user namespace")
            + "; a seccomp filter (no user namespaces)",
            "egress": "only through Threadline's egress proxy (allowlist)",
            **self.limits.enforcement(),
        }

    def memory_used(self) -> dict[str, int]:
        """Resident bytes of each watched sandbox's processes together (found by pid namespace), in one
        pass over /proc for all of them. Sandboxes in a cgroup are not watched: the kernel limits them."""
        watched = {i: ns for i, ns in self._namespaces.items() if i not in self._in_cgroup}
        by_namespace = {ns: sandbox_id for sandbox_id, ns in watched.items()}
        used = dict.fromkeys(watched, 0)
        if not by_namespace:
            return used
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            sandbox_id = by_namespace.get(_pid_namespace(int(entry.name)) or "")
            if sandbox_id is not None:
                used[sandbox_id] += _rss_bytes(int(entry.name))
        return used

    def over_memory(self) -> dict[str, str]:
        """Sandboxes over their memory limit now: id -> why. In a cgroup: the kernel killed one of its
        processes for the limit (its OOM kill count went up); otherwise the watchdog's sum is over it."""
        if not self.limits.memory_mb:
            return {}
        over = {}
        setting = f"the sandbox memory limit of {self.limits.memory_mb} MiB (THREADLINE_SANDBOX_MEMORY_MB)"
        if self.cgroups is not None:
            for sandbox_id in list(self._in_cgroup):
                kills = self.cgroups.oom_kills(sandbox_id)
                if kills:
                    peak = self.cgroups.memory_peak(sandbox_id)
                    measured = f"oom_kill {kills}" + (f", peak {peak // (1024 * 1024)} MiB" if peak is not None else "")
                    over[sandbox_id] = (
                        f"killed: its processes reached {setting} and the kernel ended {kills} of them "
                        f"(cgroup v{self.cgroups.version}: {measured})"
                    )
        limit = self.limits.memory_mb * 1024 * 1024
        for sandbox_id, used in self.memory_used().items():
            if used > limit:
                over[sandbox_id] = f"killed: its processes used {used // (1024 * 1024)} MiB, over {setting}"
        return over

    # -- stop -----------------------------------------------------------------------------------

    async def stop(self, sandbox_id: str, pid: int | None, grace_seconds: float) -> None:
        """SIGTERM the launcher (it stops the agent server), wait, then SIGKILL the sandbox's first process:
        the kernel then ends every process in its pid namespace."""
        init = pid if pid is not None and self.is_alive(sandbox_id, pid) else None
        if init is not None:
            for first in _children(init):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(first, signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while time.monotonic() < deadline and self.is_alive(sandbox_id, init):
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(init, signal.SIGKILL)
        await self._kill_the_rest(sandbox_id, init)
        # Whatever is left in its cgroup (nothing, normally: the pid namespace ended with its first process).
        await self._remove_cgroup(sandbox_id)
        await self.forget(sandbox_id)

    async def _remove_cgroup(self, sandbox_id: str) -> None:
        self._in_cgroup.discard(sandbox_id)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove, sandbox_id)

    async def reap_orphans(self, live_ids: set[str]) -> list[int]:
        """Also remove the cgroups of this home's sandboxes that have no live record (killing what still
        runs in them); those of live sandboxes (re-attached ones among them) are kept."""
        killed = await super().reap_orphans(live_ids)
        if self.cgroups is not None:
            removed = await asyncio.to_thread(self.cgroups.remove_stale, live_ids)
            if removed:
                log.info("removed the cgroups of %d sandboxes that no longer run: %s", len(removed), removed)
        return killed

    async def forget(self, sandbox_id: str) -> None:
        await self._unexpose(sandbox_id)
        self._namespaces.pop(sandbox_id, None)
        self.agent_sockets.pop(sandbox_id, None)
        if self.transport is not None:
            await self.transport.forget(sandbox_id)
        await self.egress.close(sandbox_id)
        shutil.rmtree(self._sandbox_sockets(sandbox_id), ignore_errors=True)

    async def close(self) -> None:
        """On shutdown: stop serving the egress sockets and agent ports (sandboxes that keep running are
        re-attached later)."""
        await super().close()
        for sandbox_id in list(self._exposed):
            await self._unexpose(sandbox_id)
        await self.egress.close_all()
        with contextlib.suppress(OSError):
            self.sockets.rmdir()  # only when empty: sockets of sandboxes still running stay
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove_parents)  # the same: only when empty


def _open_mount_parents(args: list[str]) -> list[str]:
    """bubblewrap makes a mount point's missing parents with the host parents' modes (`/root` is 0700),
    which would keep the sandbox's own user from reaching what is mounted there: open them (0755)."""
    targets = {
        args[i + 2]
        for i, a in enumerate(args)
        if a in ("--bind", "--ro-bind") or (a == "--ro-bind-try" and Path(args[i + 1]).exists())
    }
    parents: set[str] = set()
    for target in targets:
        for parent in Path(target).parents:
            text = str(parent)
            if text != "/" and text not in targets and not text.startswith(("/usr", "/proc", "/dev")):
                parents.add(text)
    chmods: list[str] = []
    for directory in sorted(parents, key=lambda p: p.count("/")):
        chmods += ["--chmod", "0755", directory]
    return chmods


def _read_info(fd: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> dict[str, int]:
    """bubblewrap writes the sandbox's first pid and namespaces to the info pipe once they exist."""
    buffer = b""
    deadline = time.monotonic() + timeout
    decoder = json.JSONDecoder()
    while time.monotonic() < deadline:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
        with contextlib.suppress(ValueError):
            value, _ = decoder.raw_decode(buffer.decode())
            return dict(value)
    proc.poll()
    raise RuntimeError(f"bubblewrap did not start the sandbox (exit {proc.returncode}); see agent-server.log")
