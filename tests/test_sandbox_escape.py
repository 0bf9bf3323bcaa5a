"""The isolating backend, tried as an attacker would: from inside a real agent server's sandbox (through
the agent server's own command execution), every way out of issue 13 points 1 and 2 must fail, while the
routes that must work (the LLM, callbacks, an operator-allowed host, the proxy route for clients) work.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client

from tests.conftest import LiveServer, wait_for
from tests.support.cli import run_cli
from tests.test_agent_e2e import API, start_and_wait
from threadline.config import Settings
from threadline.sandboxes import cgroups, runtime

pytestmark = pytest.mark.agent


class Canary(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = b"canary-answer"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def loopback_service() -> Iterator[tuple[int, list[str]]]:
    """A service on the host's loopback that no sandbox may reach."""
    hits: list[str] = []
    handler = type("Handler", (Canary,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], hits
    httpd.shutdown()


def sh(server: LiveServer, sandbox_id: str, command: str, timeout: int = 60) -> tuple[int | None, str]:
    """Run a command inside the sandbox, as its agent does (the agent server's bash endpoint)."""
    service = server.app.state.sandboxes

    async def run() -> Any:
        row = (await service.records_by_id([sandbox_id]))[sandbox_id]
        return await service.client(row, timeout=timeout + 20).execute_bash(command, timeout=timeout)

    result = server.run(run(), timeout=timeout + 30)
    return result.exit_code, (result.stdout or "") + (result.stderr or "")


def started(server: LiveServer, client: httpx.Client, text: str = "hi") -> tuple[str, str]:
    task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": text}]}})
    assert task["status"] == "READY", task["detail"]
    return task["app_conversation_id"], task["sandbox_id"]


def test_nothing_of_the_server_or_another_user_is_reachable_from_a_sandbox(
    agent_server_factory: Any, fake_llm: Any, loopback_service: tuple[int, list[str]], database: Any
) -> None:
    port, hits = loopback_service
    # A second loopback service the operator allows: the egress allowlist must let it through.
    allowed_hits: list[str] = []
    handler = type("Allowed", (Canary,), {"hits": allowed_hits})
    allowed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=allowed.serve_forever, daemon=True).start()
    allowed_port = allowed.server_address[1]
    try:
        server: LiveServer = agent_server_factory(sandbox_egress_allow=f"127.0.0.1:{allowed_port}")
        home = server.settings.home
        home.mkdir(parents=True, exist_ok=True)
        (home / "canary-secret").write_text("server-canary-1234")
        _, alice_key = server.user("alice")
        _, bob_key = server.user("bob")
        alice, bob = server.client(alice_key), server.client(bob_key)
        alice_conv, alice_sb = started(server, alice)
        bob_conv, bob_sb = started(server, bob)
        bob_row = server.run(server.app.state.sandboxes.records_by_id([bob_sb]))[bob_sb]
        bob_workspace = Path(bob_row.work_dir) / "workspace"
        (bob_workspace / "bob-private.txt").write_text("bob-canary-5678")
        threadline_pid = os.getpid()
        secret = server.settings.resolved_secret_key

        def denied(command: str) -> str:
            code, out = sh(server, alice_sb, command)
            assert code != 0, f"{command!r} succeeded inside the sandbox: {out}"
            return out

        # 1. Files: the server's home, the database, the secret, another sandbox, the installing user's home.
        denied(f"ls {home}")
        denied(f"cat {home / 'canary-secret'}")
        if database.backend == "sqlite":
            denied(f"cat {database.url.split('///', 1)[1]}")
        denied(f"cat {bob_workspace / 'bob-private.txt'}")
        denied(f"ls {bob_row.work_dir}")
        denied(f"ls {Path.home()}/.ssh {Path.home()}/.bash_history")
        code, out = sh(server, alice_sb, "ls /; ls /home; ls /tmp")
        assert code == 0 and "bob" not in out and "threadline.db" not in out
        # Writing outside its own directories.
        for target in ("/usr/evil", "/etc/evil", f"{server.settings.resolved_runtime_dir}/evil", "/evil", "/run/evil"):
            denied(f"touch {target}")
        # 2. Processes: the server is invisible and cannot be signalled; only the sandbox's own processes exist.
        denied(f"kill -0 {threadline_pid}")
        denied(f"cat /proc/{threadline_pid}/environ")
        code, out = sh(server, alice_sb, "ls /proc | grep -E '^[0-9]+$' | wc -l")
        assert code == 0 and int(out.strip()) < 30, out
        code, out = sh(server, alice_sb, "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; env")
        assert secret not in out and "THREADLINE_DATABASE" not in out and "postgresql" not in out
        assert bob_key not in out and alice_key not in out
        # 3. Network: the database port, the loopback service, another sandbox's agent server, the world.
        denied("python3 -c \"import socket; socket.create_connection(('127.0.0.1', 5432), 3)\"")
        denied(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 3)\"")
        denied(f"curl -sf --max-time 5 http://127.0.0.1:{port}/via-proxy")
        denied(f"curl -sf --max-time 5 --noproxy '*' http://127.0.0.1:{port}/direct")
        denied("curl -sf --max-time 5 -x http://127.0.0.1:3128 https://127.0.0.1:5432/")
        denied(f"curl -sf --max-time 5 http://127.0.0.1:{server.settings.port}/api/v1/app-conversations/search")
        denied("curl -sf --max-time 5 https://example.com/")
        denied("curl -sf --max-time 5 http://threadline.internal/api/v1/app-conversations/search")
        backend = server.app.state.sandboxes.backend
        denied(f"test -e {backend.agent_sockets[bob_sb]}")
        assert hits == []
        refused = [r.destination for r in backend.egress.refusals if r.sandbox_id == alice_sb]
        assert f"127.0.0.1:{port}" in refused and "example.com:443" in refused
        # Files it creates cannot be used against anything outside (another user when we are root).
        code, _ = sh(server, alice_sb, "echo mine > made-here.txt && cp /bin/sh ./sh && chmod u+s ./sh")
        made = Path(server.run(server.app.state.sandboxes.records_by_id([alice_sb]))[alice_sb].work_dir)
        owner = (made / "workspace" / "made-here.txt").stat().st_uid
        if os.geteuid() == 0:
            assert owner not in (0, bob_row and os.stat(bob_workspace).st_uid)
        code, out = sh(server, alice_sb, "./sh -c 'id -u'")
        assert out.strip() != "0"
        code, out = sh(server, alice_sb, "cat /proc/self/status | grep -E 'NoNewPrivs|CapEff'")
        assert "NoNewPrivs:\t1" in out and "CapEff:\t0000000000000000" in out

        # The allowed routes work: an operator-allowed host, the LLM, the callbacks.
        code, out = sh(server, alice_sb, f"curl -sf --max-time 10 http://127.0.0.1:{allowed_port}/ok")
        assert code == 0 and out == "canary-answer" and allowed_hits == ["/ok"]
        assert fake_llm.requests, "the LLM was never reached from the sandbox"
        events = wait_for(
            lambda: alice.get(f"/api/v1/conversation/{alice_conv}/events/search").json()["items"],
            timeout=60,
            what="events delivered by callback",
        )
        assert events
        assert bob_conv != alice_conv
    finally:
        allowed.shutdown()


# One line of Python for the agent's bash tool: clone with CLONE_NEWUSER (a child that got through exits at
# once), then clone3, which must answer ENOSYS so that C libraries fall back to the clone that is checked.
CLONE_PROBE = (
    "import ctypes, errno, os; libc = ctypes.CDLL(None, use_errno=True); "
    "clone = {'x86_64': 56, 'aarch64': 220}[os.uname().machine]; "
    "pid = libc.syscall(clone, 0x10000000 | 17, 0, 0, 0, 0); "
    "pid == 0 and os._exit(0); "
    "print('clone:', 'made a child' if pid > 0 else errno.errorcode[ctypes.get_errno()]); "
    "print('clone3:', 'ok' if libc.syscall(435, 0, 0) >= 0 else errno.errorcode[ctypes.get_errno()])"
)
PROCESSES_PROBE = (
    "import subprocess, threading; t = threading.Thread(target=print, args=('thread ran',)); t.start(); t.join(); "
    "print(subprocess.run(['sh', '-c', 'echo child ran'], capture_output=True, text=True, check=True).stdout.strip())"
)


def test_a_sandbox_cannot_create_user_namespaces_but_still_runs_processes(agent_server_factory: Any) -> None:
    """Issue 13: a user namespace would re-open the kernel's attack surface and let the sandbox make mount
    and network namespaces of its own. Run as root (as here) each sandbox has a uid of its own and no user
    namespace, so the seccomp filter is what refuses them."""
    server: LiveServer = agent_server_factory()
    _, key = server.user("mallory")
    _, sandbox_id = started(server, server.client(key))
    # The agent runtime's Python (3.13: os.unshare exists), at its place inside the sandbox.
    python = runtime.python_of(Path(server.app.state.sandboxes.backend.inside_runtime_dir))

    def refused(command: str) -> str:
        code, out = sh(server, sandbox_id, command)
        assert code != 0 and "Operation not permitted" in out, f"{command!r} inside the sandbox: {code} {out}"
        return out

    code, out = sh(server, sandbox_id, "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert code == 0 and "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out, out  # 2: a filter
    unshare_inside = sh(server, sandbox_id, "command -v unshare")[0] == 0
    assert unshare_inside or shutil.which("unshare") is None  # the host's /usr is the sandbox's
    if unshare_inside:
        refused("unshare -U true")
        refused("unshare -Ur id")
        refused("unshare -Urnm true")  # with network and mount namespaces of its own
    out = refused(f"{python} -c 'import os; os.unshare(os.CLONE_NEWUSER)'")
    assert "PermissionError" in out
    code, out = sh(server, sandbox_id, f'{python} -c "{CLONE_PROBE}"')
    assert code == 0 and "clone: EPERM" in out and "clone3: ENOSYS" in out, out
    # Nor any other namespace: without a user namespace those need capabilities the sandbox does not have.
    refused(f"{python} -c 'import os; os.unshare(os.CLONE_NEWNET)'")
    refused(f"{python} -c 'import os; os.unshare(os.CLONE_NEWNS)'")

    # Ordinary process creation works: threads, subprocesses (posix_spawn tries clone3 first, then clone),
    # a shell's pipelines and background jobs, and the agent server's own tools (this very bash session).
    code, out = sh(server, sandbox_id, f'{python} -c "{PROCESSES_PROBE}"')
    assert code == 0 and out.split() == ["thread", "ran", "child", "ran"], out
    code, out = sh(server, sandbox_id, "echo piped | tr a-z A-Z; (echo in-background) & wait")
    assert code == 0 and out.split() == ["PIPED", "in-background"], out
    code, out = sh(server, sandbox_id, "git init -q /tmp/repo && git -C /tmp/repo status --short && echo git ran")
    assert code == 0 and "git ran" in out, out


def test_clients_reach_an_isolated_agent_server_only_through_threadline(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, alice_key = server.user("alice")
    _, bob_key = server.user("bob")
    alice, bob = server.client(alice_key), server.client(bob_key)
    conversation_id, sandbox_id = started(server, alice)
    conv = alice.get(f"{API}/{conversation_id}").json()
    url, key = conv["conversation_url"], conv["session_api_key"]
    assert url.startswith(f"{server.base_url}/agent-server/{sandbox_id}/"), url
    sandbox = alice.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]
    assert sandbox["exposed_urls"][0]["url"] == f"{server.base_url}/agent-server/{sandbox_id}"
    assert sandbox["sandbox_spec_id"] == "bwrap"
    ok = httpx.get(url, headers={"X-Session-API-Key": key}, timeout=30)
    assert ok.status_code == 200 and ok.json()["id"].replace("-", "") == conversation_id
    # No key, a wrong key, another sandbox's key, an API key: the same 401 problem, nothing forwarded.
    _, bob_sandbox = started(server, bob)
    bob_info = bob.get("/api/v1/sandboxes", params={"id": [bob_sandbox]}).json()[0]
    for headers in ({}, {"X-Session-API-Key": "nope"}, {"X-Session-API-Key": bob_info["session_api_key"]},
                    {"X-Session-API-Key": alice_key}):  # fmt: skip
        r = httpx.get(url, headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert httpx.get(f"{server.base_url}/agent-server/not-an-id/alive", timeout=30).status_code == 401
    # Streaming POST through the proxy: a command run by the agent server.
    r = httpx.post(
        f"{sandbox['exposed_urls'][0]['url']}/api/bash/execute_bash_command",
        json={"command": "echo through-threadline", "timeout": 30},
        headers={"X-Session-API-Key": key},
        timeout=60,
    )
    assert r.status_code == 200 and "through-threadline" in r.json()["stdout"]
    # WebSocket: the agent server's event socket, forwarded.
    ws_url = sandbox["exposed_urls"][0]["url"].replace("http://", "ws://", 1)
    with websockets.sync.client.connect(
        f"{ws_url}/sockets/events/{conversation_id}?resend_all=true&session_api_key={key}", open_timeout=30
    ) as ws:
        first = json.loads(ws.recv(timeout=30))
        assert first.get("kind") or first.get("id")
    with pytest.raises(websockets.exceptions.InvalidStatus):
        websockets.sync.client.connect(
            f"{ws_url}/sockets/events/{conversation_id}?session_api_key=wrong", open_timeout=30
        ).close()
    # Paused: the proxy says so instead of hanging.
    assert alice.post(f"/api/v1/sandboxes/{sandbox_id}/pause").status_code == 200
    assert httpx.get(url, headers={"X-Session-API-Key": key}, timeout=30).status_code in (401, 409)


def test_a_sandbox_over_its_memory_limit_is_killed_and_recorded(agent_server_factory: Any) -> None:
    """Without cgroups (turned off here; the fallback on machines without them) the watchdog does it."""
    server: LiveServer = agent_server_factory(sandbox_memory_mb=700, sandbox_cgroups="off")
    _, key = server.user("alice")
    client = server.client(key)
    _, sandbox_id = started(server, client)
    code, out = sh(server, sandbox_id, "cat /proc/self/limits | grep -E 'processes|open files'")
    assert code == 0 and "1024" in out and "4096" in out, out
    service = server.app.state.sandboxes
    with pytest.raises(Exception):  # noqa: B017 - the agent server dies with the command
        sh(server, sandbox_id, "python3 -c 'import time; x = bytearray(900 * 2**20); time.sleep(120)'", timeout=60)
    info = wait_for(
        lambda: (
            (s := client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0])["status"] == "ERROR" and s
        ),
        timeout=60,
        what="sandbox ERROR",
    )
    assert info["status"] == "ERROR"
    row = server.run(service.records_by_id([sandbox_id]))[sandbox_id]
    assert "memory limit of 700 MiB" in row.detail and "its processes used" in row.detail, row.detail
    # The server is fine and serves on.
    assert client.get("/api/v1/app-conversations/search").status_code == 200


def test_the_unsafe_process_backend_is_an_explicit_choice_with_a_warning(
    server_factory: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    first = server_factory(sandbox_backend="process")
    first.user("alice")
    first.user("bob")
    first.stop()
    caplog.clear()
    with caplog.at_level("WARNING", logger="threadline"):
        again = server_factory(sandbox_backend="process")
    assert any("no isolation" in r.getMessage() for r in caplog.records)
    info = httpx.get(f"{again.base_url}/server_info").json()
    assert info["sandboxes"]["backend"] == "process"
    assert Settings(home=tmp_path).sandbox_backend == "bwrap"  # the default


def test_server_info_shows_the_isolation_and_the_limits(server_factory: Any) -> None:
    server: LiveServer = server_factory(sandbox_cpus=1.5)
    info = httpx.get(f"{server.base_url}/server_info").json()["sandboxes"]
    assert info["backend"] == "bwrap" and "namespaces" in info["isolation"]
    assert info["memory_mb"] == 4096 and info["pids"] == 1024 and info["cpus"] == 1.5
    assert info["open_files_enforced_by"] == "rlimit (RLIMIT_NOFILE)"
    detection = cgroups.detect()
    if detection.usable:
        version = f"cgroup v{detection.version}"
        assert info["cgroups"].startswith(version), info
        assert info["memory_enforced_by"].startswith(f"{version} (memory."), info
        assert info["cpus_enforced_by"] == f"{version} ({'cpu.max' if detection.version == 2 else 'cpu.cfs_quota_us'})"
        assert info["pids_enforced_by"] == f"{version} (pids.max) and rlimit (RLIMIT_NPROC)"
        assert "cpus_note" not in info
    else:
        assert info["cgroups"].startswith("not used: ")
        assert info["memory_enforced_by"].startswith("watchdog") and info["pids_enforced_by"] == "rlimit (RLIMIT_NPROC)"
        assert info["cpus_enforced_by"] is None and info["cpus_note"].startswith("not enforced")
    assert "seccomp" in info["isolation"] and info["user_namespaces"].startswith("refused (seccomp")
    assert "clone3" in info["user_namespaces"] and "ENOSYS" in info["user_namespaces"]
    # Turned off by the operator: what enforces the limits without cgroups.
    server.stop()  # type: ignore[attr-defined]
    off: LiveServer = server_factory(sandbox_cgroups="off")
    info = httpx.get(f"{off.base_url}/server_info").json()["sandboxes"]
    assert info["cgroups"] == "not used: turned off (THREADLINE_SANDBOX_CGROUPS=off)"
    assert info["memory_enforced_by"] == "watchdog (sum of the sandbox's resident memory, checked every second)"
    assert info["pids_enforced_by"] == "rlimit (RLIMIT_NPROC)" and info["cpus"] is None
    assert info["cpus_enforced_by"] is None and info["cpus_note"].startswith("not enforced: needs a writable cgroup")


def test_a_users_own_llm_url_cannot_point_a_sandbox_at_the_hosts_services(
    agent_server_factory: Any, loopback_service: tuple[int, list[str]]
) -> None:
    """The server-wide LLM (the operator's choice) may be on loopback; a user's own base URL may not."""
    port, hits = loopback_service
    server: LiveServer = agent_server_factory()
    _, key = server.user("mallory")
    client = server.client(key)
    own = {"llm_base_url": f"http://127.0.0.1:{port}/v1", "llm_api_key": "mallory-key"}
    r = client.post("/api/v1/settings", json=own)
    assert r.status_code == 200, r.text
    _, sandbox_id = started(server, client, "call my LLM")
    backend = server.app.state.sandboxes.backend
    refusal = wait_for(
        lambda: next(
            (x for x in backend.egress.refusals if x.sandbox_id == sandbox_id and x.destination.startswith("127.")),
            None,
        ),
        timeout=60,
        what="the agent's LLM call refused",
    )
    assert refusal.destination == f"127.0.0.1:{port}" and "non-public address" in refusal.reason
    assert hits == []


def test_serve_without_bubblewrap_stops_with_the_command_to_run(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path / "home"), PATH=str(empty))
    result = run_cli(env, "serve", "--port", "1")
    assert result.returncode == 1
    assert "apt-get install bubblewrap" in result.stderr and "THREADLINE_SANDBOX_BACKEND=process" in result.stderr
    assert not (tmp_path / "home" / "threadline.db").exists()  # stopped before touching anything


def test_runtime_status_shows_the_isolation_and_what_is_enforced(agent_runtime: Path, tmp_path: Path) -> None:
    env = dict(
        os.environ,
        THREADLINE_HOME=str(tmp_path),
        THREADLINE_RUNTIME_DIR=str(agent_runtime),
        THREADLINE_SANDBOX_MEMORY_MB="900",
    )
    result = run_cli(env, "runtime", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sandbox backend: bwrap" in result.stdout and "bubblewrap: works here" in result.stdout
    assert "memory_mb: 900" in result.stdout and "user_namespaces: refused (seccomp" in result.stdout
    detection = cgroups.detect()
    if detection.usable:
        version = f"cgroup v{detection.version}"
        assert f"memory_enforced_by: {version} (memory." in result.stdout, result.stdout
        assert f"pids_enforced_by: {version} (pids.max) and rlimit (RLIMIT_NPROC)" in result.stdout
        assert "cpus_enforced_by: None" in result.stdout and "cpus_note" not in result.stdout  # unlimited
        limited = run_cli(dict(env, THREADLINE_SANDBOX_CPUS="0.5"), "runtime", "status")
        assert "cpus: 0.5" in limited.stdout and f"cpus_enforced_by: {version} (cpu." in limited.stdout
    else:
        assert "pids_enforced_by: rlimit (RLIMIT_NPROC)" in result.stdout and "cpus_note: not enforced" in result.stdout
    off = run_cli(dict(env, THREADLINE_SANDBOX_CGROUPS="off"), "runtime", "status")
    assert "cgroups: not used: turned off (THREADLINE_SANDBOX_CGROUPS=off)" in off.stdout, off.stdout
    assert "memory_enforced_by: watchdog" in off.stdout and "pids_enforced_by: rlimit (RLIMIT_NPROC)" in off.stdout
    assert "cpus_note: not enforced" in off.stdout
    nonsense = run_cli(dict(env, THREADLINE_SANDBOX_CPUS="0"), "runtime", "status")
    assert nonsense.returncode != 0 and "sandbox_cpus" in nonsense.stderr
    unsafe = run_cli(dict(env, THREADLINE_SANDBOX_BACKEND="process"), "runtime", "status")
    assert unsafe.returncode == 0 and "no isolation" in unsafe.stdout


# -- limits enforced by the kernel (cgroups) --------------------------------------------------------

DETECTED = cgroups.detect()
needs_cgroups = pytest.mark.skipif(not DETECTED.usable, reason=f"no writable cgroup hierarchy: {DETECTED.reason}")


def sandbox_cgroups(server: LiveServer) -> cgroups.SandboxCgroups:
    manager = server.app.state.sandboxes.backend.cgroups
    assert manager is not None, "the backend did not set up cgroups"
    assert isinstance(manager, cgroups.SandboxCgroups)
    return manager


def counters(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}


def sandbox_status(client: httpx.Client, sandbox_id: str) -> str:
    return str(client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]["status"])


@needs_cgroups
def test_the_kernel_kills_a_process_over_the_sandbox_memory_limit(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory(sandbox_memory_mb=400)
    _, key = server.user("alice")
    client = server.client(key)
    _, sandbox_id = started(server, client)
    manager = sandbox_cgroups(server)
    memory_dir = manager.dir_of(sandbox_id, "memory")
    limit_file = "memory.max" if manager.version == 2 else "memory.limit_in_bytes"
    assert int((memory_dir / limit_file).read_text()) == 400 * 2**20
    assert manager.oom_kills(sandbox_id) == 0
    try:
        code, out = sh(server, sandbox_id, "python3 -c 'x = bytearray(900 * 2**20); print(\"allocated\")'")
    except Exception:  # the sandbox may be ended before the agent server answers
        code, out = None, ""
    assert "allocated" not in out and code in (None, 137, -9), (code, out)
    row = wait_for(
        lambda: (
            sandbox_status(client, sandbox_id) == "ERROR"
            and server.run(server.app.state.sandboxes.records_by_id([sandbox_id]))[sandbox_id]
        ),
        timeout=60,
        what="sandbox ERROR",
    )
    # The kernel did it (its OOM kill count, read from the cgroup), not the watchdog (which is not running).
    assert "memory limit of 400 MiB (THREADLINE_SANDBOX_MEMORY_MB)" in row.detail, row.detail
    pattern = r"the kernel ended (\d+) of them \(cgroup v\d: oom_kill (\d+), peak (\d+) MiB\)"
    match = re.search(pattern, row.detail)
    assert match and int(match[1]) >= 1 and int(match[2]) == int(match[1]), row.detail
    assert int(match[3]) <= 400 and "its processes used" not in row.detail, row.detail
    print(f"memory: oom_kill {match[2]}, peak {match[3]} MiB of 400 MiB; detail: {row.detail}")
    # Ended: its processes and its cgroup are gone; the server serves on.
    wait_for(lambda: not manager.exists(sandbox_id), timeout=30, what="the sandbox's cgroup removed")
    assert client.get("/api/v1/app-conversations/search").status_code == 200


FORK_LOOP = """
import os, sys
cap = int(sys.argv[1])
r, w = os.pipe()
made, error = 0, "none"
while made < cap:
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.strerror
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # until the parent closes its end
        os._exit(0)
    made += 1
os.close(w)
for _ in range(made):
    os.wait()
print("made", made, "error", error)
"""


@needs_cgroups
def test_a_fork_loop_stops_at_the_sandbox_process_limit(agent_server_factory: Any) -> None:
    limit = 200
    server: LiveServer = agent_server_factory(sandbox_max_processes=limit)
    _, key = server.user("mallory")
    client = server.client(key)
    _, sandbox_id = started(server, client)
    manager = sandbox_cgroups(server)
    pids_dir = manager.dir_of(sandbox_id, "pids")
    assert (pids_dir / "pids.max").read_text().strip() == str(limit)
    before = int((pids_dir / "pids.current").read_text())
    row = server.run(server.app.state.sandboxes.records_by_id([sandbox_id]))[sandbox_id]
    (Path(row.work_dir) / "workspace" / "fork.py").write_text(FORK_LOOP)
    # Twice the limit at most: without any limit the loop ends there, and the test fails. Detached: while it
    # holds every process slot, the agent server itself cannot start a thread to answer.
    code, out = sh(server, sandbox_id, f"(python3 fork.py {2 * limit} > /tmp/fork.out 2>&1 &); echo started")
    assert code == 0 and "started" in out, out
    result = Path(row.work_dir) / "tmp" / "fork.out"
    out = wait_for(lambda: "made" in (text := result.read_text() if result.exists() else "") and text, what="fork loop")
    made = int(out.split()[1])
    events = counters(pids_dir / "pids.events")
    peak_file = pids_dir / "pids.peak"
    peak = int(peak_file.read_text()) if peak_file.exists() else None
    print(f"pids: {before} in the sandbox before, the loop made {made} more; peak {peak} of {limit}; {events}")
    assert made < 2 * limit and "Resource temporarily unavailable" in out, out
    assert events["max"] >= 1  # the cgroup refused forks (RLIMIT_NPROC would leave this at 0)
    assert peak is None or peak <= limit
    # The sandbox is not ended for it: the agent's command failed, the sandbox runs on and works.
    code, out = sh(server, sandbox_id, "echo still-usable")
    assert code == 0 and out.strip() == "still-usable"
    assert sandbox_status(client, sandbox_id) == "RUNNING"
    # Paused: its cgroup goes with its processes; resumed: a fresh one, with the limits, holds the new ones.
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/pause").status_code == 200
    assert not manager.exists(sandbox_id)
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/resume").status_code == 200
    wait_for(lambda: sandbox_status(client, sandbox_id) == "RUNNING", timeout=120, what="resumed")
    assert (pids_dir / "pids.max").read_text().strip() == str(limit)
    assert counters(pids_dir / "pids.events")["max"] == 0  # fresh counters
    row = server.run(server.app.state.sandboxes.records_by_id([sandbox_id]))[sandbox_id]
    assert row.pid in manager.pids(sandbox_id)
    # Deleted: its cgroups are gone.
    assert client.delete(f"/api/v1/sandboxes/{sandbox_id}").status_code == 200
    assert not any(d.exists() for d in manager.dirs(sandbox_id))


@needs_cgroups
def test_a_busy_loop_is_throttled_to_the_sandbox_cpu_limit(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory(sandbox_cpus=0.2)
    _, key = server.user("mallory")
    client = server.client(key)
    r = client.post("/api/v1/sandboxes")
    assert r.status_code == 200, r.text
    sandbox_id = r.json()["id"]
    wait_for(lambda: sandbox_status(client, sandbox_id) == "RUNNING", timeout=150, what="sandbox RUNNING")
    manager = sandbox_cgroups(server)
    cpu_dir = manager.dir_of(sandbox_id, "cpu")
    if manager.version == 2:
        assert (cpu_dir / "cpu.max").read_text().split() == ["20000", "100000"]
        throttled_time = "throttled_usec"
    else:
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "20000"
        assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
        throttled_time = "throttled_time"
    before = counters(cpu_dir / "cpu.stat")
    code, out = sh(server, sandbox_id, "(timeout 60 python3 -c 'while True: pass' >/dev/null 2>&1 &) ; echo spinning")
    assert code == 0 and "spinning" in out, out

    def throttled() -> dict[str, int] | None:
        now = counters(cpu_dir / "cpu.stat")
        more = now["nr_throttled"] - before["nr_throttled"] >= 5 and now[throttled_time] > before[throttled_time]
        return now if more else None

    after = wait_for(throttled, timeout=60, what="the busy loop throttled")
    print(f"cpu: before {before}, after {after}")
    assert after["nr_throttled"] > 0 and after[throttled_time] > 0
