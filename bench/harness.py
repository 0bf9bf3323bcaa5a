"""Driver of `bench/run`: load data, start servers, run the workloads with wrk, time starts, write the results.

Run it through bench/run (which makes the venv and installs wrk); `bench/run --help` lists the options.
Everything it starts (servers, agent servers, the fake LLM, wrk, py-spy) runs in its own process group and
is killed on the way out, also on errors and Ctrl-C; agent servers that a Threadline server started (W4)
are found by the sandbox root they are tagged with and killed too. A fresh THREADLINE_HOME and, for
PostgreSQL, a fresh schema (with a role of the same name, whose search_path is that schema) are made and
removed per run (W4 gets its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
LUA = BENCH / "lua"
RESULTS = BENCH / "results"
PROFILES = RESULTS / "profiles"
DOC = ROOT / "docs" / "performance.md"
sys.path.insert(0, str(BENCH))

import datagen  # noqa: E402
import profiles  # noqa: E402
import report  # noqa: E402

DEFAULT_PG_URL = "postgresql://127.0.0.1:5432/test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = "0", "1"
FULL = {
    "w1": 10_000,
    "w2.sqlite": 100_000,
    "w2.postgresql": 1_000_000,
    "deep": 10_000,
    "w3": 10_000,
    "w5": 20,
    "w4.cold": 4,
    "w4.warm": 8,
    "w4.pool": 2,
}
QUICK = {
    "w1": 500,
    "w2.sqlite": 2_000,
    "w2.postgresql": 2_000,
    "deep": 1_000,
    "w3": 2_000,
    "w5": 2,
    "w4.cold": 1,
    "w4.warm": 2,
    "w4.pool": 1,
}
WRK_WORKLOADS = ("w1", "w2", "w3", "w5")
WORKLOADS = ("w1", "w2", "w3", "w4", "w5")
LIMIT = 100
W3_KIND = "ActionEvent"
FLOOR = report.FLOOR  # workload names the report looks up
W1_LIVE = report.W1_LIVE


class BenchError(Exception):
    """A step of the harness failed: the message says which and why."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------

_started: list[subprocess.Popen[bytes]] = []
# Sandbox roots of the Threadline servers W4 starts: their agent servers run in sessions of their own (not
# in the server's process group), so cleanup() finds them by the root they are tagged with.
_sandbox_roots: list[Path] = []


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, out: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, remembered so that cleanup() can end it."""
    sink = out.open("ab") if out else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if out:
            sink.close()  # type: ignore[union-attr]
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `grace` seconds."""
    if proc.returncode is None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children that outlived their leader (same group): end them too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc in _started:
        _started.remove(proc)


def sandbox_pids(root: Path) -> list[int]:
    """Processes tagged THREADLINE_SANDBOX_ROOT=<root>: the agent servers (and their children) that a
    Threadline server with that sandbox directory started, as its process backend tags them."""
    tag = f"THREADLINE_SANDBOX_ROOT={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if tag in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_sandboxes(root: Path) -> int:
    """SIGKILL whatever still runs of the sandboxes under `root`; returns how many processes were found."""
    pids = sandbox_pids(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def cleanup() -> None:
    for proc in reversed(list(_started)):
        with contextlib.suppress(Exception):
            stop(proc, grace=10.0)
    for root in list(_sandbox_roots):
        with contextlib.suppress(Exception):
            kill_sandboxes(root)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def pinned(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus is not None else []


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port below the kernel's ephemeral range: the test suites running beside us take theirs from
    that range (bind to port 0), so a server of theirs cannot grab ours between our check and our bind."""
    low, high = _ephemeral_range()
    top = low - 1 if low > 12000 else 65000
    for _ in range(200):
        port = random.randint(10000, top) if top > 10000 else random.randint(high + 1, 65535)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("found no free port")


def listening_pids_ok(pid: int, port: int) -> bool:
    """Whether the socket listening on 127.0.0.1:port belongs to process `pid` (and not to someone else's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    links = set()
    for fd in fds:
        # A descriptor the (busy, starting) server closes between the listing and the readlink is not its
        # listening socket; skipping it is right, and failing on it was a flaky "not our process".
        with contextlib.suppress(OSError):
            links.add(os.readlink(fd_dir / fd))
    return any(f"socket:[{inode}]" in links for inode in inodes)


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all its threads) and of its live children (the workers of
    `threadline serve --workers N`) from /proc/<pid>/stat."""
    total = 0.0
    for stat in [Path(f"/proc/{pid}/stat"), *_children_stats(pid)]:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def machine_cpu_seconds() -> float:
    """CPU time every core of the machine spent busy (user, nice, system, irq, softirq, steal; not idle or
    iowait) from /proc/stat: the server, the database, wrk and the kernel together."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / CLK_TCK


def _children_stats(pid: int) -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(pid):
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(entry / "stat")
        except (OSError, IndexError, ValueError):
            continue
    return found


def settle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the server has finished the requests still in flight from the last run (its CPU time
    stops growing), so they are not charged to the next one. Returns the seconds waited."""
    t0 = time.monotonic()
    last = proc_cpu_seconds(pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(0.25)
        now = proc_cpu_seconds(pid)
        if now - last <= 0.02:
            break
        last = now
    return time.monotonic() - t0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- HTTP ---------------------------------------------------------------------------------------


class Client:
    """A keep-alive HTTP client for the sanity checks and the deep-page walk (not for load)."""

    def __init__(self, port: int, token: str | None = None, timeout: float = 60.0) -> None:
        self.port, self.token, self.timeout = port, token, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        headers = {"X-Access-Token": self.token} if self.token else {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, data = self.request(method, path, body)
        if status != expect:
            raise BenchError(f"{method} {path} answered {status}, not {expect}: {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


_WRITER_LOCK = re.compile(
    r"^threadline_sqlite_(write_transactions|writer_lock_held_seconds)_total (\S+)$", re.MULTILINE
)


def writer_lock(port: int) -> dict[str, float] | None:
    """A SQLite server's writer-lock counters from its /metrics (None when it has none: PostgreSQL)."""
    client = Client(port, timeout=10)
    try:
        status, body = client.request("GET", "/metrics")
    finally:
        client.close()
    found = {name: float(value) for name, value in _WRITER_LOCK.findall(body.decode()) if status == 200}
    return found if len(found) == 2 else None


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], log_file: Path | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"process exited with {proc.returncode} before answering; log:\n{tail(log_file)}"
                if log_file
                else f"process exited with {proc.returncode} before answering"
            )
        try:
            client = Client(port, timeout=2)
            status, _ = client.request("GET", path)
            client.close()
            if status == 200:
                if not listening_pids_ok(proc.pid, port):
                    raise BenchError(f"port {port} answered, but not from the process we started (pid {proc.pid})")
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(
        f"nothing answered GET {path} on port {port} within {timeout:.0f}s"
        + (f"; log:\n{tail(log_file)}" if log_file else "")
    )


# -- PostgreSQL ---------------------------------------------------------------------------------


def pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin_url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_create(admin_url: str) -> tuple[str, str]:
    """A fresh schema and a login role of the same name whose search_path is that schema.

    SQLAlchemy's asyncpg URLs cannot carry a search_path, so the role carries it: the server's URL
    names the role as its user and everything it creates or reads lands in the schema."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    pg_admin(
        admin_url,
        f'CREATE ROLE "{name}" LOGIN; CREATE SCHEMA "{name}" AUTHORIZATION "{name}"; '
        f'ALTER ROLE "{name}" SET search_path = "{name}";',
    )
    host_part = admin_url.split("://", 1)[1]
    host_part = host_part.split("@", 1)[1] if "@" in host_part else host_part
    return name, f"postgresql+asyncpg://{name}@{host_part}"


def pg_drop(admin_url: str, name: str) -> None:
    pg_admin(
        admin_url,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'; "
        f'DROP SCHEMA IF EXISTS "{name}" CASCADE; DROP ROLE IF EXISTS "{name}";',
    )


# -- wrk ----------------------------------------------------------------------------------------


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        multi = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.server_cpus = SERVER_CPU if multi else None
        self.client_cpus = CLIENT_CPU if multi else None

    def wrk(
        self,
        name: str,
        port: int,
        script: str,
        env: dict[str, str],
        duration: float,
        server_pid: int,
        log_dir: Path,
    ) -> dict[str, Any]:
        """One wrk run against 127.0.0.1:port; latency, throughput and both sides' CPU time."""
        a = self.args
        slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
        out = log_dir / f"wrk-{slug}.log"
        out.write_text("")
        cmd = [
            *pinned(self.client_cpus),
            "wrk",
            "-t",
            str(a.threads),
            "-c",
            str(a.connections),
            "-d",
            f"{max(1, round(duration))}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA / script),
            f"http://127.0.0.1:{port}",
        ]
        full_env = {**os.environ, "BENCH_LUA_DIR": str(LUA), **env}
        settled = settle(server_pid)
        load = os.getloadavg()[0]
        cpu0, machine0, t0 = proc_cpu_seconds(server_pid), machine_cpu_seconds(), time.monotonic()
        proc = spawn(cmd, env=full_env, out=out)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        _started.remove(proc)
        wall = time.monotonic() - t0
        server_cpu = proc_cpu_seconds(server_pid) - cpu0
        machine_cpu = machine_cpu_seconds() - machine0
        text = out.read_text(errors="replace")
        line = next((x for x in text.splitlines() if x.startswith("BENCH_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"wrk for {name} failed (exit {proc.returncode}):\n{text[-2000:]}")
        raw = json.loads(line.split(" ", 1)[1])
        seconds = raw["duration_us"] / 1e6
        lat = raw["latency_us"]
        errors = raw["errors"]
        client_cpu = usage.ru_utime + usage.ru_stime
        return {
            "requests": raw["requests"],
            "seconds": round(seconds, 3),
            "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
            "p50_ms": round(lat["p50"] / 1000, 2),
            "p90_ms": round(lat["p90"] / 1000, 2),
            "p99_ms": round(lat["p99"] / 1000, 2),
            "max_ms": round(lat["max"] / 1000, 2),
            "mean_ms": round(lat["mean"] / 1000, 2),
            "bytes_per_response": round(raw["bytes"] / raw["requests"]) if raw["requests"] else 0,
            "errors": errors,
            "server_cpu_s": round(server_cpu, 2),
            # Less sensitive to a busy machine than req/s: what one request costs the server.
            "server_cpu_ms_per_request": round(1000 * server_cpu / raw["requests"], 3) if raw["requests"] else None,
            "client_cpu_s": round(client_cpu, 2),
            # 1.0 = one core busy the whole run: the side near 1.0 is the one that saturated.
            "server_cpu_util": round(server_cpu / wall, 2) if wall else None,
            "client_cpu_util": round(client_cpu / wall, 2) if wall else None,
            # Everything the machine's cores did meanwhile (server, database, wrk, kernel): a run near
            # `cores` had no CPU left to give, whatever the server does.
            "machine_cpu_util": round(machine_cpu / wall, 2) if wall else None,
            "machine_cpu_ms_per_request": round(1000 * machine_cpu / raw["requests"], 3) if raw["requests"] else None,
            "cores": os.cpu_count(),
            "load_avg_1m_before": round(load, 2),
            "settle_seconds_before": round(settled, 2),
            "connections": a.connections,
            "threads": a.threads,
        }

    def measure(
        self, name: str, port: int, script: str, env: dict[str, str], server_pid: int, log_dir: Path
    ) -> dict[str, Any]:
        a = self.args
        if a.warmup > 0:
            self.wrk(f"{name}-warmup", port, script, env, a.warmup, server_pid, log_dir)
        result = self.wrk(name, port, script, env, a.duration, server_pid, log_dir)
        e = result["errors"]
        failed = e["connect"] + e["read"] + e["write"] + e["status"]
        result["ok"] = result["requests"] > 0 and failed == 0
        if not result["ok"]:
            result["failure"] = f"{failed} failed requests (non-2xx or socket errors) of {result['requests']}"
        log(
            f"  {name}: {result['rps']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
            f"server CPU {result['server_cpu_util']}, client CPU {result['client_cpu_util']}"
            + ("" if result["ok"] else f"  FAILED: {result['failure']}")
        )
        return result

    def profile(
        self, name: str, port: int, script: str, env: dict[str, str], server_pid: int, log_dir: Path, stamp: str
    ) -> dict[str, Any]:
        """The same load with py-spy sampling the server: a speedscope file and a summary."""
        PROFILES.mkdir(parents=True, exist_ok=True)
        target = PROFILES / f"{stamp}-{name}.speedscope.json"
        duration = max(2, round(self.args.duration))
        settle(server_pid)  # before py-spy starts: requests left over from the last run are not this profile's
        spy = spawn(
            [
                str(VENV_BIN / "py-spy"),
                "record",
                "--pid",
                str(server_pid),
                "--rate",
                "200",
                "--duration",
                str(duration + 1),
                "--format",
                "speedscope",
                "--output",
                str(target),
            ],
            out=log_dir / f"py-spy-{name}.log",
        )
        time.sleep(0.5)
        self.wrk(f"{name}-profiled", port, script, env, duration, server_pid, log_dir)
        try:
            spy.wait(duration + 60)
        except subprocess.TimeoutExpired:
            stop(spy)
        if spy in _started:
            _started.remove(spy)
        if not target.exists():
            raise BenchError(f"py-spy wrote no profile for {name}:\n{tail(log_dir / f'py-spy-{name}.log')}")
        summary = profiles.summarise(target)
        log(f"  profile {name}: {target.relative_to(ROOT)} ({summary['busy_seconds']} s busy)")
        return summary


# -- one database -------------------------------------------------------------------------------


def server_env(home: Path, url: str, secret: str) -> tuple[dict[str, str], dict[str, str]]:
    """The server's environment (no THREADLINE_* inherited) and the rate-limit overrides it got."""
    from threadline.config import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(
        THREADLINE_HOME=str(home),
        THREADLINE_DATABASE_URL=url,
        THREADLINE_SECRET_KEY=secret,
        THREADLINE_CREATE_ADMIN_ON_FIRST_START="false",
        # One process unless a workload says otherwise (`serve` defaults to one worker per core).
        THREADLINE_WORKERS="1",
    )
    # Generous rate limits wherever the settings have them (checked now, not hard-coded: they change).
    overrides = {}
    for name in Settings.model_fields:
        if "rate_limit" in name and ("per_" in name or "burst" in name):
            overrides[f"THREADLINE_{name.upper()}"] = "1000000000"
    env.update(overrides)
    return env, overrides


def runtime_dir() -> Path:
    """The real agent runtime's directory (bench/run installs it when missing)."""
    return Path(os.environ.get("THREADLINE_BENCH_RUNTIME_DIR", Path.home() / ".cache" / "threadline" / "agent-runtime"))


def runtime_python() -> Path:
    runtime = runtime_dir()
    python = runtime / "bin" / "python"
    if not python.exists():
        raise BenchError(f"no agent runtime at {runtime}: run `threadline runtime install` with THREADLINE_RUNTIME_DIR")
    return python


def start_agents(count: int, home: Path, log_dir: Path) -> list[dict[str, Any]]:
    """Real openhands-agent-server processes, tagged the way Threadline's process backend tags its own, so
    Threadline sees them as live RUNNING sandboxes."""
    agents: list[dict[str, Any]] = []
    procs = []
    root = home / "sandboxes"
    python = runtime_python()
    for _ in range(count):
        sandbox_id, port = uuid.uuid4().hex, free_port()
        work = root / sandbox_id
        (work / "workspace").mkdir(parents=True)
        session_key = secrets.token_urlsafe(32)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "THREADLINE_SANDBOX_ID": sandbox_id,
            "THREADLINE_SANDBOX_ROOT": str(root),
            "OH_SESSION_API_KEYS_0": session_key,
            "OH_ENABLE_VSCODE": "false",
            "OH_ENABLE_BROWSER": "false",
            "OH_PRELOAD_TOOLS": "false",
            "OH_CONVERSATIONS_PATH": str(work / "conversations"),
            "TMUX_TMPDIR": str(work),
            "TZ": "UTC",
            # Wide enough that the access log keeps one request per line (it is how calls are counted).
            "COLUMNS": "1000",
        }
        log_file = log_dir / f"agent-{sandbox_id}.log"
        proc = spawn(
            [str(python), "-m", "openhands.agent_server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            out=log_file,
        )
        procs.append(proc)
        agents.append(
            {"sandbox_id": sandbox_id, "pid": proc.pid, "port": port, "session_key": session_key, "log": str(log_file)}
        )
    for agent, proc in zip(agents, procs, strict=True):
        wait_http(agent["port"], "/alive", proc, Path(agent["log"]), 180)
    return agents


def agent_calls(agents: list[dict[str, Any]]) -> int:
    """Batch conversation reads the agent servers answered, from their own access logs."""
    return sum(Path(a["log"]).read_text(errors="replace").count("GET /api/conversations?ids=") for a in agents)


AGENT_API_REQUEST = re.compile(r"\b(?:GET|POST|PUT|PATCH|DELETE) /api/")


def agent_requests(agents: list[dict[str, Any]]) -> int:
    """Every API request the agent servers answered (batch reads and anything else), from their access logs."""
    return sum(len(AGENT_API_REQUEST.findall(Path(a["log"]).read_text(errors="replace"))) for a in agents)


def fresh_database(kind: str, pg_url: str, home: Path) -> tuple[str, str | None]:
    """The URL of a new, empty database of `kind` (SQLite: a file under `home`) and its PostgreSQL schema."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{home / 'threadline.db'}", None
    schema, url = pg_create(pg_url)
    log(f"PostgreSQL schema {schema}")
    return url, schema


def run_database(
    kind: str, args: argparse.Namespace, runner: Runner, state: dict[str, Any], result: dict[str, Any]
) -> None:
    """Run every workload on one database, filling `result` as it goes (a failure keeps what was measured)."""
    sizes = datagen.Sizes(
        w1=args.sizes["w1"],
        w2=args.sizes[f"w2.{kind}"],
        deep=args.sizes["deep"],
        w3=args.sizes["w3"],
        w5_sandboxes=args.sizes["w5"] if "w5" in args.workloads else 0,
    )
    if sizes.deep + LIMIT > sizes.w2:
        raise BenchError(f"deep={sizes.deep} needs at least {sizes.deep + LIMIT} W2 conversations, not {sizes.w2}")
    result.update({"db": kind, "sizes": asdict(sizes), "workloads": {}})
    home = Path(tempfile.mkdtemp(prefix=f"threadline-bench-{kind}-"))
    log_dir = home / "logs"
    log_dir.mkdir()
    schema = None
    server = None
    agents: list[dict[str, Any]] = []
    try:
        url, schema = fresh_database(kind, args.pg_url, home)
        secret = secrets.token_urlsafe(48)
        if sizes.w5_sandboxes:
            agents = start_agents(sizes.w5_sandboxes, home, log_dir)
        from threadline.core.crypto import SecretBox

        log(f"{kind}: loading data (W1 {sizes.w1}, W2 {sizes.w2}, W3 {sizes.w3} events, W5 {len(agents)} sandboxes)")
        t0 = time.monotonic()
        data = asyncio.run(
            datagen.load(
                url,
                sizes,
                seed=args.seed,
                w5_agents=agents,
                session_box=SecretBox(secret),
                work_root=str(home / "sandboxes"),
                log=log,
            )
        )
        result["load_seconds"] = round(time.monotonic() - t0, 1)
        result["rows"] = data.counts
        log(f"{kind}: loaded {data.counts} in {result['load_seconds']}s")
        ids_file = home / "w1-ids.txt"
        ids_file.write_text("\n".join(data.w1_ids) + "\n")
        live_ids_file = home / "w1-live-ids.txt"
        if agents:
            if not data.w5_ids:
                raise BenchError("datagen made no W5 conversations, so W1-live has nothing to PATCH")
            live_ids_file.write_text("\n".join(data.w5_ids) + "\n")

        env, overrides = server_env(home, url, secret)
        result["rate_limit_overrides"] = sorted(overrides)
        port = free_port()
        server_log = log_dir / "server.log"
        server = spawn(
            [
                *pinned(runner.server_cpus),
                str(VENV_BIN / "threadline"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            out=server_log,
        )
        wait_http(port, "/ready", server, server_log, 120)
        log(f"{kind}: threadline serve ready on {port} (pid {server.pid}, CPU {runner.server_cpus})")

        # -- sanity checks: each workload's request once, answers checked -----------------------
        w1 = Client(port, data.keys["w1"])
        body = {"title": "Fix the flaky test", "tags": {"team": "core", "priority": "p1"}}
        status, patched = w1.request("PATCH", f"/api/v1/app-conversations/{data.w1_ids[0]}", body)
        conv = json.loads(patched) if status == 200 else None
        if conv is None or conv.get("title") != body["title"] or conv.get("tags", {}).get("team") != "core":
            raise BenchError(
                f"sanity PATCH failed: {status} {patched[:500]!r}; server log tail:\n{tail(server_log, 15)}"
            )
        if "ceiling_body" not in state:
            state["ceiling_body"] = patched
        result["conversation_bytes"] = len(patched)

        w2 = Client(port, data.keys["w2"])
        first_path = f"/api/v1/app-conversations/search?limit={LIMIT}"
        page = w2.json("GET", first_path)
        if len(page["items"]) != LIMIT or not page.get("next_page_id"):
            raise BenchError(f"W2 first page has {len(page['items'])} items, next_page_id {page.get('next_page_id')}")
        t0 = time.monotonic()
        token, walked = page["next_page_id"], LIMIT
        while walked < sizes.deep:
            page = w2.json("GET", f"{first_path}&page_id={quote(token)}")
            if not page.get("next_page_id"):
                raise BenchError(f"W2 ran out of pages after {walked} items")
            token, walked = page["next_page_id"], walked + len(page["items"])
        deep_path = f"{first_path}&page_id={quote(token)}"
        deep_page = w2.json("GET", deep_path)
        if len(deep_page["items"]) != LIMIT:
            raise BenchError(f"W2 deep page has {len(deep_page['items'])} items")
        result["deep_walk_seconds"] = round(time.monotonic() - t0, 1)
        result["deep_offset"] = walked
        log(f"{kind}: walked {walked} items to the deep page in {result['deep_walk_seconds']}s")

        w3_path = f"/api/v1/conversation/{data.w3_conversation_id}/events/search?kind__eq={W3_KIND}&limit={LIMIT}"
        events = w1.json("GET", w3_path)
        if not events["items"] or any(e.get("kind") != W3_KIND for e in events["items"]):
            raise BenchError(f"W3 page is wrong: {len(events['items'])} items")
        result["w3_items"] = len(events["items"])

        w5_path = f"/api/v1/app-conversations/search?limit={LIMIT}"
        if agents:
            w5 = Client(port, data.keys["w5"])
            before = agent_calls(agents)
            page = w5.json("GET", w5_path)
            calls = agent_calls(agents) - before
            running = sum(1 for c in page["items"] if c.get("sandbox_status") == "RUNNING")
            result["w5_check"] = {
                "conversations": len(page["items"]),
                "running_in_page": running,
                "sandboxes": len(agents),
                "agent_calls_one_page": calls,
            }
            log(f"{kind}: W5 page of {len(page['items'])} ({running} RUNNING) made {calls} agent calls")
            # W1-live: W1's PATCH on a conversation whose sandbox is RUNNING (after the W5 check, which
            # must see the records as datagen wrote them).
            live_body = {"title": "Watch the agent", "tags": {"team": "web", "priority": "p2"}}
            before, before_any = agent_calls(agents), agent_requests(agents)
            status, patched = w5.request("PATCH", f"/api/v1/app-conversations/{data.w5_ids[0]}", live_body)
            calls, requests = agent_calls(agents) - before, agent_requests(agents) - before_any
            conv = json.loads(patched) if status == 200 else None
            if (
                conv is None
                or conv.get("title") != live_body["title"]
                or conv.get("tags", {}).get("team") != "web"
                or conv.get("sandbox_status") != "RUNNING"
            ):
                raise BenchError(
                    f"sanity W1-live PATCH failed (200 with sandbox_status RUNNING expected): {status} "
                    f"{patched[:500]!r}; server log tail:\n{tail(server_log, 15)}"
                )
            result["w1_live_check"] = {
                "sandbox_status": conv["sandbox_status"],
                "agent_calls_one_patch": calls,
                "agent_requests_one_patch": requests,
            }
            log(f"{kind}: W1-live PATCH answered 200, sandbox RUNNING, {calls} agent calls ({requests} requests)")
            w5.close()
        w1.close()
        w2.close()

        # -- ceiling: the first time a real response body is known --------------------------------
        if "ceiling" not in state:
            state["ceiling"] = [measure_ceiling(runner, state["ceiling_body"], ids_file, log_dir)]
        # -- the workloads --------------------------------------------------------------------------
        work = result["workloads"]
        # The framework's floor: Threadline's cheapest route (no auth, no database), same wrk settings, on
        # each database's server (issue 14 has a target for it per database); the first is also the run's.
        work[FLOOR] = floor = runner.measure(
            f"{kind}-floor GET /alive", port, "get.lua", {"BENCH_PATH": "/alive"}, server.pid, log_dir
        )
        state.setdefault("floor", {**floor, "db": kind})
        patch_env = {"BENCH_TOKEN": data.keys["w1"], "BENCH_IDS_FILE": str(ids_file)}
        live_env = {"BENCH_TOKEN": data.keys["w5"], "BENCH_IDS_FILE": str(live_ids_file)}

        def get_env(key: str, path: str) -> dict[str, str]:
            return {"BENCH_TOKEN": data.keys[key], "BENCH_PATH": path}

        plan = []
        if "w1" in args.workloads:
            plan.append(("W1 PATCH", "patch.lua", patch_env))
        if "w2" in args.workloads:
            plan.append(("W2 first page", "get.lua", get_env("w2", first_path)))
            plan.append(("W2 deep page", "get.lua", get_env("w2", deep_path)))
        if "w3" in args.workloads:
            plan.append(("W3 events", "get.lua", get_env("w1", w3_path)))
        for name, script, wenv in plan:
            if server.poll() is not None:
                raise BenchError(f"the server exited ({server.returncode}) before {name}; log:\n{tail(server_log)}")
            lock_before = writer_lock(port) if name == "W1 PATCH" else None
            work[name] = runner.measure(f"{kind}-{name}", port, script, wenv, server.pid, log_dir)
            if lock_before is not None and (lock_after := writer_lock(port)) is not None:
                # Warm-up included: a figure per write transaction, which the warm-up does not skew.
                count = lock_after["write_transactions"] - lock_before["write_transactions"]
                held = lock_after["writer_lock_held_seconds"] - lock_before["writer_lock_held_seconds"]
                if count > 0:
                    work[name]["writer_lock_held_ms_per_write"] = round(1000 * held / count, 3)
        if agents:
            before = agent_calls(agents)
            work["W5 live page"] = r = runner.measure(
                f"{kind}-W5 live page", port, "get.lua", get_env("w5", w5_path), server.pid, log_dir
            )
            r["agent_calls"] = agent_calls(agents) - before
            # Warm-up and measured requests both reached the agents; in-flight requests at the end of
            # a run make this approximate, the single-request check above is exact.
            r["agent_calls_per_page"] = result["w5_check"]["agent_calls_one_page"]
            # W1-live: W1's PATCH on the W5 conversations, whose sandboxes are RUNNING (after W5, so that
            # W5 measures the records as datagen wrote them).
            before, before_any = agent_calls(agents), agent_requests(agents)
            work[W1_LIVE] = r = runner.measure(f"{kind}-{W1_LIVE}", port, "patch.lua", live_env, server.pid, log_dir)
            # As for W5: warm-up included. agent_requests also counts anything other than batch reads.
            r["agent_calls"] = agent_calls(agents) - before
            r["agent_requests"] = agent_requests(agents) - before_any
            r["agent_calls_one_patch"] = result["w1_live_check"]["agent_calls_one_patch"]

        if args.profile:
            prof = result.setdefault("profiles", {})
            stamp = state["stamp"]
            if agents:
                plan.append(("W5 live page", "get.lua", get_env("w5", w5_path)))
                plan.append((W1_LIVE, "patch.lua", live_env))
            for name, script, wenv in plan:
                if name.startswith(("W1 ", "W2")) or (name.startswith(("W5", "W1-live")) and args.profile_w5):
                    slug = f"{kind}-{name.lower().replace(' ', '-')}"
                    prof[name] = runner.profile(slug, port, script, wenv, server.pid, log_dir, stamp)

        if server.poll() is not None:
            raise BenchError(f"the server died during the run; log:\n{tail(server_log)}")
        if "w1" in args.workloads and args.workers_w1 > 1:
            name = f"W1 PATCH, {args.workers_w1} workers"
            work[name] = measure_workers(runner, args.workers_w1, env, patch_env, name, kind, log_dir)
    except BaseException:
        if server is not None and server.poll() is not None:
            log(f"the server exited with {server.returncode}; log tail ({kind}):\n{tail(log_dir / 'server.log')}")
        raise
    finally:
        if server is not None:
            stop(server, grace=30)
        for agent in agents:
            for proc in list(_started):
                if proc.pid == agent["pid"]:
                    stop(proc, grace=2)
        remove_data(args, home, schema)


def measure_workers(
    runner: Runner, workers: int, env: dict[str, str], patch_env: dict[str, str], name: str, kind: str, log_dir: Path
) -> dict[str, Any]:
    """W1 against `threadline serve --workers N` on the same data. Not pinned: the workers are to use every
    core (wrk stays on its own CPU, so on 2 cores it shares one with a worker). CPU is the whole process tree's."""
    port = free_port()
    out = log_dir / f"server-{workers}-workers.log"
    proc = spawn(
        [str(VENV_BIN / "threadline"), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env,
        out=out,
    )
    try:
        wait_http(port, "/ready", proc, out, 120)
        log(f"{kind}: threadline serve --workers {workers} ready on {port} (pid {proc.pid})")
        result = runner.measure(f"{kind}-{name}", port, "patch.lua", patch_env, proc.pid, log_dir)
        result["workers"] = workers
        return result
    finally:
        stop(proc, grace=30)


def remove_data(args: argparse.Namespace, home: Path, schema: str | None) -> None:
    """Drop a run's PostgreSQL schema and THREADLINE_HOME, unless --keep."""
    if args.keep:
        log(f"kept {home}" + (f" and schema {schema}" if schema else ""))
        return
    if schema:
        with contextlib.suppress(Exception):
            pg_drop(args.pg_url, schema)
    shutil.rmtree(home, ignore_errors=True)


def measure_ceiling(runner: Runner, body: bytes, ids_file: Path, log_dir: Path) -> dict[str, Any]:
    """The bare ASGI app under the same uvicorn settings, driven by the same wrk script as W1."""
    body_file = log_dir / "ceiling-body.json"
    body_file.write_bytes(body)
    port = free_port()
    out = log_dir / "ceiling.log"
    proc = spawn(
        [*pinned(runner.server_cpus), sys.executable, str(BENCH / "ceiling_app.py"), str(port), str(body_file)],
        out=out,
    )
    try:
        wait_http(port, "/", proc, out, 60)
        env = {"BENCH_TOKEN": "tl_ceiling", "BENCH_IDS_FILE": str(ids_file)}
        result = runner.measure("ceiling", port, "patch.lua", env, proc.pid, log_dir)
        result["body_bytes"] = len(body)
        return result
    finally:
        stop(proc)


# -- W4: start -> READY ---------------------------------------------------------------------------

STARTS = "/api/v1/app-conversations"
W4_POLL_SECONDS = 0.05  # between two reads of the start task: the resolution of a sample
W4_START_TIMEOUT = 240.0  # for one start to reach READY (a cold agent server boots in 9-15 s here)
W4_POOL_TIMEOUT = 300.0  # for the warm pool to be full
# What a user sends: a first message, so the agent runs (against the fake LLM) once it is READY.
W4_BODY = {"initial_message": {"content": [{"type": "text", "text": "Say hello, then finish."}]}}
FAKE_LLM_MODEL = "openai/fake-model"


def start_fake_llm(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The tests' fake OpenAI-compatible LLM (tests/support/fake_llm.py) on 127.0.0.1; returns its base URL."""
    port = free_port()
    out = log_dir / "fake-llm.log"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = spawn(
        [sys.executable, "-m", "tests.support.fake_llm", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": path},
        out=out,
    )
    wait_http(port, "/v1/models", proc, out, 60)
    return proc, f"http://127.0.0.1:{port}/v1"


def w4_env(home: Path, url: str, secret: str, llm_url: str, pool_size: int) -> dict[str, str]:
    """server_env() plus the real agent runtime, the fake LLM, the warm pool, and no per-user sandbox cap."""
    env, _ = server_env(home, url, secret)
    env.update(
        THREADLINE_RUNTIME_DIR=str(runtime_dir()),
        THREADLINE_LLM_MODEL=FAKE_LLM_MODEL,
        THREADLINE_LLM_BASE_URL=llm_url,
        THREADLINE_LLM_API_KEY="fake-llm-key",
        THREADLINE_WARM_POOL_SIZE=str(pool_size),
        # Refills follow every claim at once; the interval only replaces pool sandboxes that died.
        THREADLINE_WARM_POOL_REFILL_INTERVAL="5",
        THREADLINE_MAX_RUNNING_SANDBOXES_PER_USER="0",
        # Deleting a sample's conversation stops its agent server; it is not timed, so no need to wait long.
        THREADLINE_SANDBOX_STOP_GRACE_SECONDS="1",
    )
    return env


def start_w4_server(env: dict[str, str], log_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`threadline serve`, not pinned to a CPU: the agent servers it starts would inherit the pinning."""
    port = free_port()
    server = spawn(
        [str(VENV_BIN / "threadline"), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, out=log_file
    )
    wait_http(port, "/ready", server, log_file, 120)
    return server, port


def check_alive(server: subprocess.Popen[bytes], log_file: Path) -> None:
    if server.poll() is not None:
        raise BenchError(f"the W4 server exited ({server.returncode}); log:\n{tail(log_file)}")


def wait_pool(client: Client, size: int, server: subprocess.Popen[bytes], log_file: Path) -> float:
    """Poll /server_info until `size` pool sandboxes are RUNNING; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        pool = client.json("GET", "/server_info").get("warm_pool") or {}
        if pool.get("ready", 0) >= size:
            return time.monotonic() - t0
        check_alive(server, log_file)
        if time.monotonic() - t0 > W4_POOL_TIMEOUT:
            raise BenchError(f"the warm pool is {pool} after {W4_POOL_TIMEOUT:.0f}s, not {size} ready")
        time.sleep(0.2)


def wait_ready(client: Client, task_id: str, deadline: float, server: subprocess.Popen[bytes], log_file: Path) -> Any:
    """Poll the start task until it is READY (returned) or ERROR, or the deadline passes (BenchError)."""
    path = f"{STARTS}/start-tasks?ids={task_id}"
    while True:
        task = client.json("GET", path)[0]
        status = task["status"] if task else None
        if status == "READY":
            return task
        if status in ("ERROR", None):
            detail = task["detail"] if task else "the start task vanished"
            raise BenchError(f"start task {task_id} failed: {detail}; server log:\n{tail(log_file, 15)}")
        check_alive(server, log_file)
        if time.monotonic() > deadline:
            raise BenchError(f"start task {task_id} still {status} after {W4_START_TIMEOUT:.0f}s")
        time.sleep(W4_POLL_SECONDS)


def parse_time(value: str) -> datetime:
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def task_timing(task: dict[str, Any]) -> dict[str, Any]:
    """The server's own clock: creation to READY, and the seconds spent in each status of the history."""
    created = parse_time(task["created_at"])
    marks = [(h["status"], parse_time(h["at"])) for h in task.get("history") or []]
    phases: dict[str, float] = {}
    for (status, at), (_, after) in itertools.pairwise(marks):
        phases[status] = round(phases.get(status, 0.0) + (after - at).total_seconds(), 3)
    ready_at = marks[-1][1] if marks else parse_time(task["updated_at"])
    return {"server_seconds": round((ready_at - created).total_seconds(), 3), "phases": phases}


def was_pooled(client: Client, task: dict[str, Any]) -> bool | None:
    """Whether the start got a pre-started sandbox: one created before the start task was."""
    box = client.json("GET", f"/api/v1/sandboxes?id={task['sandbox_id']}")[0]
    if box is None:
        return None
    return parse_time(box["created_at"]) < parse_time(task["created_at"])


def one_start(client: Client, server: subprocess.Popen[bytes], log_file: Path) -> dict[str, Any]:
    """One sample: POST sent -> READY seen; then the conversation is deleted, which stops its sandbox."""
    t0 = time.monotonic()
    task = client.json("POST", STARTS, W4_BODY)
    task = wait_ready(client, task["id"], t0 + W4_START_TIMEOUT, server, log_file)
    seconds = time.monotonic() - t0
    sample = {"seconds": round(seconds, 3), **task_timing(task), "sandbox_id": task["sandbox_id"]}
    sample["pooled"] = was_pooled(client, task)
    t1 = time.monotonic()
    client.json("DELETE", f"{STARTS}/{task['app_conversation_id']}")
    sample["delete_seconds"] = round(time.monotonic() - t1, 2)
    return sample


def measure_starts(
    label: str, env: dict[str, str], count: int, pool_size: int, token: str, log_dir: Path, into: dict[str, Any]
) -> None:
    """`count` starts one at a time on a server of its own; with a pool, each waits for the pool to be full.
    Fills `into` as it goes, so that a failure keeps the samples taken."""
    log_file = log_dir / f"server-{label.replace(' ', '-')}.log"
    samples: list[dict[str, Any]] = []
    into.update(pool_size=pool_size, samples=samples)
    server, port = start_w4_server(env, log_file)
    client = Client(port, token)
    try:
        for i in range(count):
            waited = wait_pool(client, pool_size, server, log_file) if pool_size else None
            settle(server.pid)
            sample = one_start(client, server, log_file)
            sample["pool_wait_seconds"] = round(waited, 2) if waited is not None else None
            samples.append(sample)
            into.update(report.start_stats(samples))
            pooled = {True: ", pooled sandbox", False: ", new sandbox", None: ""}[sample["pooled"]]
            if pool_size and not sample["pooled"]:
                pooled += " (NOT from the pool)"
            log(
                f"  {label} {i + 1}/{count}: READY in {sample['seconds']:.2f} s "
                f"(server {sample['server_seconds']:.2f} s{pooled}; delete {sample['delete_seconds']:.1f} s)"
            )
    finally:
        client.close()
        stop(server, grace=60)


def run_w4(kind: str, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """W4 on a fresh, empty database of `kind`: cold starts (warm pool off), then warm ones (pool on)."""
    sizes = args.sizes
    w4 = result.setdefault("w4", {})
    home = Path(tempfile.mkdtemp(prefix=f"threadline-bench-w4-{kind}-"))
    log_dir = home / "logs"
    log_dir.mkdir()
    root = home / "sandboxes"
    _sandbox_roots.append(root)
    schema = None
    llm = None
    try:
        url, schema = fresh_database(kind, args.pg_url, home)
        _, token = asyncio.run(datagen.user_only(url, "bench-w4"))
        llm, llm_url = start_fake_llm(log_dir)
        secret = secrets.token_urlsafe(48)
        log(f"{kind}: W4 {sizes['w4.cold']} cold starts, then {sizes['w4.warm']} with a pool of {sizes['w4.pool']}")
        plan = [("cold", 0, sizes["w4.cold"]), ("warm", sizes["w4.pool"], sizes["w4.warm"])]
        for mode, pool_size, count in plan:
            if count > 0:
                env = w4_env(home, url, secret, llm_url, pool_size)
                measure_starts(f"{kind} W4 {mode}", env, count, pool_size, token, log_dir, w4.setdefault(mode, {}))
                left = kill_sandboxes(root)
                if left:
                    log(f"  {kind} W4 {mode}: {left} agent-server processes outlived their server; killed")
    finally:
        if llm is not None:
            stop(llm, grace=5)
        kill_sandboxes(root)
        _sandbox_roots.remove(root)
        remove_data(args, home, schema)


# -- main ---------------------------------------------------------------------------------------


def parse_sizes(text: str | None, quick: bool) -> dict[str, int]:
    sizes = dict(QUICK if quick else FULL)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise SystemExit(f"--sizes: {item!r} is not key=value")
        number = int(float(value.replace("_", "").replace("k", "e3").replace("M", "e6")))
        if key == "w2":
            sizes["w2.sqlite"] = sizes["w2.postgresql"] = number
        elif key in sizes:
            sizes[key] = number
        else:
            raise SystemExit(f"--sizes: unknown key {key!r} (known: w2, {', '.join(sizes)})")
    return sizes


def w4_databases(choice: str | None, dbs: list[str]) -> list[str]:
    return [kind for kind in dbs if choice in (None, kind, "both")]


def attempt(label: str, results: dict[str, Any], step: Any, *argv: Any) -> int:
    """Run one database's step; a failure is recorded (and the run goes on with the next): returns 1."""
    try:
        step(*argv)
    except Exception as exc:
        if not isinstance(exc, BenchError):
            traceback.print_exc()
        log(f"{label}: FAILED: {exc}")
        results["failures"].append(f"{label}: {type(exc).__name__}: {exc}")
        return 1
    return 0


def merge_w4(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """A copy of the results in `path` with this run's W4 (per database, replacing any W4 there) added;
    where and when W4 was measured is kept under "w4_run"."""
    merged: dict[str, Any] = json.loads(path.read_text())
    for kind, db in results["databases"].items():
        if "w4" in db:
            merged["databases"].setdefault(kind, {"db": kind})["w4"] = db["w4"]
    merged["w4_run"] = {
        key: results.get(key) for key in ("date", "quick", "git", "machine", "settings", "total_seconds", "failures")
    }
    source = path.resolve()
    merged["w4_run"]["merged_into"] = str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    merged["failures"] = [*merged.get("failures", []), *(f"W4 run: {f}" for f in results["failures"])]
    merged["ok"] = bool(merged.get("ok", True)) and results["ok"]
    report.add_ratios_and_goals(merged)
    return merged


def git_info() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "threadline",
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
        "sqlalchemy",
        "aiosqlite",
        "asyncpg",
        "uvloop",
        "httptools",
        "h11",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    found["wrk"] = (wrk.stdout + wrk.stderr).split("\n", 1)[0].strip()
    return found


def preflight(args: argparse.Namespace, dbs: list[str]) -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (bench/run installs it: apt-get install wrk)")
    if args.profile and not (VENV_BIN / "py-spy").exists():
        raise BenchError("--profile needs py-spy in the venv: pip install -e '.[bench]' (bench/run does it)")
    # Fail in seconds, not after loading a million rows: the server must at least import.
    check = subprocess.run(
        [sys.executable, "-c", "import threadline.api.app, threadline.cli.main"], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise BenchError(f"the server cannot start: importing it fails:\n{check.stderr[-1500:]}")
    if "postgresql" in dbs:
        try:
            pg_admin(args.pg_url, "SELECT 1")
        except Exception as exc:
            raise BenchError(
                f"PostgreSQL at {args.pg_url} is not reachable ({exc}); start it, set --pg-url or use --db sqlite"
            ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Threadline benchmarks (issues 6 and 14): W1 PATCH, W2 search pages, W3 events, W5 live page "
        "and W1-live (W1's PATCH on W5's conversations, whose sandboxes are RUNNING: runs with w5), each "
        "against the ceiling of a bare ASGI app and the floor GET /alive; W4 start -> READY with real agent "
        "servers and the fake LLM, cold (warm pool off) and warm (from the pool). Writes "
        "bench/results/<date>.json and the tables in docs/performance.md.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short runs (CI; under 3 minutes)")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument(
        "--sizes",
        help="comma-separated key=value: w1 (conversations PATCHed), w2 / w2.sqlite / w2.postgresql "
        "(conversations searched), deep (items before the deep page), w3 (events), w5 (sandboxes), "
        "w4.cold / w4.warm (W4 starts timed without / with the warm pool), w4.pool (warm pool size); "
        f"defaults {FULL}, with --quick {QUICK}",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="which of w1,w2,w3,w4,w5 (default all; w5 also runs W1-live)"
    )
    parser.add_argument(
        "--w4-db",
        choices=["sqlite", "postgresql", "both"],
        help="databases W4 runs on, of those --db picks (default: all of them; W4 boots real agent servers, "
        "about 10 s each: with --quick it adds about 35 s per database)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        metavar="RESULTS_JSON",
        help="with --workloads w4: add this run's W4 to a copy of that results file (the other workloads' "
        "numbers stay the ones measured there) and write it as this run's results",
    )
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, --quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each run (default 3, --quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: wrk has one core)")
    parser.add_argument(
        "--profile", action="store_true", help="also profile W1 and W2 (and W5 and W1-live) with py-spy"
    )
    parser.add_argument(
        "--no-profile-w5", dest="profile_w5", action="store_false", help="with --profile: skip W5 and W1-live"
    )
    parser.add_argument("--pg-url", default=os.environ.get("THREADLINE_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--docs",
        dest="docs",
        action="store_true",
        default=None,
        help="update docs/performance.md (default: yes, except with --quick)",
    )
    parser.add_argument(
        "--workers-w1",
        type=int,
        default=2,
        help="also run W1 against `threadline serve --workers N` (default 2; 1: skip)",
    )
    parser.add_argument("--no-docs", dest="docs", action="store_false")
    parser.add_argument("--output", type=Path, help="results file (default bench/results/<date>[-quick].json)")
    parser.add_argument("--keep", action="store_true", help="keep THREADLINE_HOME and the PostgreSQL schema")
    parser.add_argument(
        "--report", type=Path, metavar="RESULTS_JSON", help="only regenerate docs/performance.md from a results file"
    )
    args = parser.parse_args(argv)

    if args.report:
        saved = json.loads(args.report.read_text())
        report.update_doc(DOC, saved, args.report.relative_to(ROOT) if args.report.is_absolute() else args.report)
        log(f"updated {DOC.relative_to(ROOT)} from {args.report}")
        return 0

    args.sizes = parse_sizes(args.sizes, args.quick)
    args.workloads = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"--workloads: unknown {sorted(unknown)}")
    if args.merge and args.workloads != ["w4"]:
        raise SystemExit("--merge needs --workloads w4 (the others are ratios to a ceiling measured in the same run)")
    if args.merge and not args.merge.is_file():
        raise SystemExit(f"--merge: no results file {args.merge}")
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    docs_asked = bool(args.docs)
    if args.docs is None:
        args.docs = not args.quick
    dbs = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    args.w4_dbs = w4_databases(args.w4_db, dbs) if "w4" in args.workloads else []

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    runner = Runner(args)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "git": git_info(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "server_cpus": runner.server_cpus,
            "client_cpus": runner.client_cpus,
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "sizes": args.sizes,
            "workloads": args.workloads,
            "server": "threadline serve (uvicorn, 1 worker, 127.0.0.1, log level info)",
            "w4": {
                "databases": args.w4_dbs,
                "poll_seconds": W4_POLL_SECONDS,
                "request": W4_BODY,
                "llm": f"tests/support/fake_llm.py, model {FAKE_LLM_MODEL}",
                "server": "threadline serve as above, not pinned to a CPU (its agent servers would inherit it)",
            },
        },
        "databases": {},
        "failures": [],
    }
    state: dict[str, Any] = {"stamp": stamp}
    code = 0
    t_start = time.monotonic()
    try:
        preflight(args, dbs)
        results["versions"] = versions()
        wrk_dbs = dbs if set(args.workloads) & set(WRK_WORKLOADS) else []
        for kind in wrk_dbs:
            db = results["databases"].setdefault(kind, {})
            code |= attempt(kind, results, run_database, kind, args, runner, state, db)
        if "ceiling_body" in state:
            # Measured again at the end: the two runs show how much the machine's load moved meanwhile.
            with tempfile.TemporaryDirectory(prefix="threadline-bench-ceiling-") as tmp:
                ids_file = Path(tmp) / "ids.txt"
                ids_file.write_text(uuid.uuid4().hex + "\n")
                state.setdefault("ceiling", []).append(
                    measure_ceiling(runner, state["ceiling_body"], ids_file, Path(tmp))
                )
        # After the ceiling's second run, which tells how the machine's load moved during the wrk runs.
        for kind in args.w4_dbs:
            db = results["databases"].setdefault(kind, {"db": kind})
            code |= attempt(f"{kind} W4", results, run_w4, kind, args, db)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        results["failures"].append(str(exc))
        code = 1
    except (KeyboardInterrupt, SystemExit) as exc:
        log(f"interrupted ({exc!r}); stopping everything started")
        cleanup()
        raise
    finally:
        cleanup()

    results["ceiling"] = report.combine_ceiling(state.get("ceiling", []))
    results["floor"] = state.get("floor")
    report.add_ratios_and_goals(results)
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = elapsed = round(time.monotonic() - t_start, 1)
    for kind, db in results["databases"].items():
        for name, w in db.get("workloads", {}).items():
            if not w.get("ok", True):
                results["failures"].append(f"{kind} {name}: {w.get('failure')}")
                code = 1
    results["ok"] = code == 0

    if not results["databases"]:
        log("FAILED before any measurement: " + "; ".join(results["failures"]))
        return code or 1
    if args.merge:
        results = merge_w4(args.merge, results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.output or RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"results: {out}")
    print(report.summary_text(results))
    if args.docs and (code == 0 or docs_asked):
        report.update_doc(DOC, results, out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
        log(f"updated {DOC.relative_to(ROOT)}")
    elif args.docs:
        log(f"the run failed: {DOC.relative_to(ROOT)} left as it was (--docs writes it anyway)")
    log(f"done in {elapsed}s: {'ok' if code == 0 else 'FAILED'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
