"""The isolating backend's non-root mode, tried as an attacker would: a whole Threadline (`threadline serve`,
its own process) runs as an unprivileged user, so bubblewrap gives each sandbox a user namespace of that
user instead of a uid of its own. From inside a real agent server's sandbox (its bash endpoint, reached
through Threadline's `/agent-server/...` route) every way out must fail; each attempt that the server's
user could make outside the sandbox is made there too, so that a check cannot pass for a wrong reason.
The allowed routes (the LLM, callbacks, an operator-allowed host, the proxy route) must work.
Runs on SQLite and PostgreSQL. Root-mode counterpart: tests/test_sandbox_escape.py."""

from __future__ import annotations

import contextlib
import getpass
import http.server
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import threadline
from tests.conftest import Database, free_port, wait_for
from tests.support import unprivileged
from tests.support.process_server import ProcessServer, agent_settings, sandbox_processes, server_env
from tests.test_agent_e2e import API, start_and_wait
from tests.test_sandbox_escape import Canary
from threadline.sandboxes import runtime
from threadline.sandboxes.isolated import IsolatedBackend

pytestmark = pytest.mark.agent

# The server's user: `nobody`, which owns nothing of the host.
UID = GID = 65534


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to start the server as another (unprivileged) user"
    missing = unprivileged.missing_tools() + ([] if shutil.which("bwrap") else ["bwrap"])
    return f"missing: {', '.join(missing)}" if missing else None


@dataclass
class Service:
    """A plain HTTP service on the host's loopback; `hits` are the paths it was asked for."""

    port: int
    hits: list[str]


@pytest.fixture
def services() -> Iterator[tuple[Service, Service]]:
    """One that no sandbox may reach, one the operator allows."""
    started = []
    for _ in range(2):
        hits: list[str] = []
        handler = type("Handler", (Canary,), {"hits": hits})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append((httpd, Service(httpd.server_address[1], hits)))
    yield started[0][1], started[1][1]
    for httpd, _ in started:
        httpd.shutdown()


@dataclass
class Unprivileged:
    server: ProcessServer
    home: Path  # THREADLINE_HOME
    user_home: Path  # the server user's HOME
    # Runs a command as the server's user, with what the server may read reachable.
    prefix: list[str]

    def api_key(self, name: str) -> str:
        """A user and a key made with `threadline users/keys create`, as the server's user would."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")} | self.server.env
        command = [*self.prefix, sys.executable, "-m", "threadline.cli.main"]
        out = ""
        for args in (["users", "create", name], ["keys", "create", "--user", name]):
            result = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            out = result.stdout
        return out.strip().splitlines()[-1]


@pytest.fixture
def unprivileged_server(
    database: Database, fake_llm: Any, agent_runtime: Path, services: tuple[Service, Service], tmp_path: Path
) -> Iterator[Unprivileged]:
    """`threadline serve` as `nobody` with the isolating backend and the real agent server. Its files are in
    a directory of its own: pytest's tmp_path is root's (0700). Short, as sandboxes' Unix socket paths below
    it are limited to 107 bytes."""
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))
    home, user_home, tmp = root / "home", root / "user", root / "t"
    for directory in (root, home, user_home, user_home / ".ssh", tmp):
        directory.mkdir(exist_ok=True)
        os.chown(directory, UID, GID)
    (user_home / ".ssh" / "id_ed25519").write_text("user-canary-4321")
    os.chown(user_home / ".ssh" / "id_ed25519", UID, GID)
    # SQLite: the file in the server's home (the fixture's is below root's tmp_path); PostgreSQL: the
    # fixture's schema, as the role the test itself connects as (asyncpg would take the OS user's name).
    url = f"sqlite+aiosqlite:///{home / 'threadline.db'}" if database.backend == "sqlite" else database.url
    allow = f"127.0.0.1:{services[1].port}"
    settings = agent_settings(agent_runtime, fake_llm.base_url, sandbox_agent_url="port", sandbox_egress_allow=allow)
    env = server_env(home, url, database.schema, "", free_port(), **settings)
    del env["THREADLINE_SECRET_KEY"]  # the server makes its `secret_key` file in its home
    env.update(
        PYTHONPATH=str(Path(threadline.__file__).resolve().parents[1]),
        HOME=str(user_home),
        USER="nobody",
        LOGNAME="nobody",
        TMPDIR=str(tmp),
        PGUSER=os.environ.get("PGUSER") or getpass.getuser(),
    )
    prefix = unprivileged.command_as(UID, GID, _readable(agent_runtime))
    server = ProcessServer(env, tmp_path / "threadline.log", wrap=prefix)
    try:
        yield Unprivileged(server.start(), home, user_home, prefix)
    finally:
        server.stop()
        # The server stops its sandboxes; whatever a failed start left behind is killed here.
        for pid in sandbox_processes(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _readable(runtime_dir: Path) -> list[Path]:
    """What the server must reach: its interpreter and venv, its source, every agent runtime and the
    interpreter each runtime's venv comes from."""
    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(threadline.__file__).resolve().parents[1]]
    for directory in [runtime_dir, *runtime.installed(runtime_dir).values()]:
        paths += [directory, runtime.python_of(directory).resolve().parents[1]]
    return paths


def _outside(command: str) -> tuple[int, str]:
    """`command` run by the server's user on the host, outside any sandbox."""
    result = subprocess.run(
        ["setpriv", "--reuid", str(UID), "--regid", str(GID), "--clear-groups", "--", "bash", "-c", command],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
        cwd="/",
    )
    return result.returncode, result.stdout + result.stderr


def test_nothing_of_the_server_or_another_user_is_reachable_from_a_sandbox_of_an_unprivileged_server(
    unprivileged_server: Unprivileged, services: tuple[Service, Service], database: Database, fake_llm: Any
) -> None:
    server, home, user_home = unprivileged_server.server, unprivileged_server.home, unprivileged_server.user_home
    loopback, allowed = services
    status = Path(f"/proc/{server.pid}/status").read_text()
    assert f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}" in status and "CapEff:\t0000000000000000" in status, status
    alice_key, bob_key = unprivileged_server.api_key("alice"), unprivileged_server.api_key("bob")
    alice, bob = server.client(alice_key, timeout=60), server.client(bob_key, timeout=60)

    def started(client: httpx.Client) -> tuple[str, dict[str, Any]]:
        task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
        assert task["status"] == "READY", task["detail"]
        info = client.get("/api/v1/sandboxes", params={"id": [task["sandbox_id"]]}).json()[0]
        return task["app_conversation_id"], info

    alice_conv, alice_sb = started(alice)
    bob_conv, bob_sb = started(bob)

    def sh(sandbox: dict[str, Any], command: str) -> tuple[int, str]:
        """`command` run by the sandbox's agent server, through Threadline's proxy route for clients."""
        r = httpx.post(
            f"{server.base_url}/agent-server/{sandbox['id']}/api/bash/execute_bash_command",
            json={"command": command, "timeout": 60},
            headers={"X-Session-API-Key": sandbox["session_api_key"]},
            timeout=90,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        return body["exit_code"], (body.get("stdout") or "") + (body.get("stderr") or "")

    def denied(command: str, *, outside: bool = True) -> str:
        """Fails inside alice's sandbox; with `outside`, works for the server's user on the host."""
        if outside:
            code, out = _outside(command)
            assert code == 0, f"{command!r} fails even outside the sandbox, so proves nothing: {out}"
        code, out = sh(alice_sb, command)
        assert code != 0, f"{command!r} succeeded inside the sandbox: {out}"
        return out

    work_dirs = {s["id"]: home / "sandboxes" / s["id"] for s in (alice_sb, bob_sb)}
    bob_dir = work_dirs[bob_sb["id"]]
    code, _ = sh(bob_sb, "echo bob-canary-5678 > bob-private.txt")
    assert code == 0 and (bob_dir / "workspace" / "bob-private.txt").read_text() == "bob-canary-5678\n"
    secret = (home / "secret_key").read_text().strip()

    # 1. Files: the server's home, its database, its secret, another user's sandbox, the server user's home.
    denied(f"ls {home}")
    denied(f"cat {home / 'secret_key'}")
    if database.backend == "sqlite":
        denied(f"cat {home / 'threadline.db'}")
    denied(f"cat {bob_dir / 'workspace' / 'bob-private.txt'}")
    denied(f"ls {bob_dir}")
    denied(f"cat {user_home / '.ssh' / 'id_ed25519'}")
    code, out = sh(alice_sb, "ls / /home /tmp && echo devices-work > /dev/null")
    assert code == 0 and "bob" not in out and "threadline.db" not in out, out
    # Writing outside its own directories; the first two are the server user's own, writable outside.
    denied(f"touch {home / 'evil'}")
    denied(f"touch {user_home / 'evil'}")
    inside_runtime = IsolatedBackend.inside_runtime_dir
    # Without root, the directories bubblewrap makes (/, /etc, /run, /dev, ...) belong to the sandbox's user.
    for target in ("/usr", "/etc", inside_runtime, "", "/run", "/home", "/dev", "/dev/shm"):
        denied(f"touch {target}/evil", outside=False)

    # 2. Processes: the server is invisible and cannot be signalled; only the sandbox's own processes exist.
    denied(f"kill -0 {server.pid}")
    denied(f"cat /proc/{server.pid}/environ")
    code, out = sh(alice_sb, "ls /proc | grep -E '^[0-9]+$' | wc -l")
    assert code == 0 and int(out.strip()) < 30, out
    code, out = sh(alice_sb, "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; env")
    assert code == 0 and "OH_SESSION_API_KEYS_0" in out, out  # what is read is read
    for leak in (secret, "THREADLINE_DATABASE", "postgresql", alice_key, bob_key, bob_sb["session_api_key"]):
        assert leak not in out

    # 3. Network: PostgreSQL, a loopback service, Threadline's port, bob's agent server, the world.
    bob_port = bob_sb["exposed_urls"][0]["port"]
    denied("bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432'")
    denied(f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{loopback.port}'")
    denied(f"curl -sf --max-time 5 --noproxy '*' http://127.0.0.1:{loopback.port}/direct")
    denied(f"curl -sf --max-time 5 --noproxy '*' http://127.0.0.1:{bob_port}/alive")
    denied(f"curl -sf --max-time 5 --noproxy '*' http://127.0.0.1:{server.port}/ready")
    bob_socket = next(Path(server.env["TMPDIR"]).glob(f"threadline-*/{bob_sb['id']}/agent.sock"))
    denied(f"test -S {bob_socket}")
    # Through the egress proxy, whose refusals are logged.
    denied(f"curl -sf --max-time 5 http://127.0.0.1:{loopback.port}/via-proxy", outside=False)
    denied(f"curl -sf --max-time 5 http://127.0.0.1:{bob_port}/alive", outside=False)
    denied("curl -sf --max-time 5 -x http://127.0.0.1:3128 https://127.0.0.1:5432/", outside=False)
    denied(f"curl -sf --max-time 5 http://127.0.0.1:{server.port}/api/v1/app-conversations/search", outside=False)
    denied("curl -sf --max-time 5 https://example.com/", outside=False)
    denied("curl -sf --max-time 5 http://threadline.internal/api/v1/app-conversations/search", outside=False)
    assert loopback.hits == ["/direct"]  # the request made outside only
    log = wait_for(lambda: "example.com:443" in (text := server.log_path.read_text()) and text, what="refusals logged")
    for destination in (f"127.0.0.1:{loopback.port}", f"127.0.0.1:{bob_port}", "127.0.0.1:5432", "example.com:443"):
        assert f"egress refused: sandbox {alice_sb['id']} -> {destination}" in log, destination

    # 4. No user namespaces: bubblewrap's --disable-userns and the seccomp filter; the server's user can.
    python = runtime.python_of(Path(IsolatedBackend.inside_runtime_dir))
    for command in ("unshare -U true", "unshare -Ur id", "unshare -Urnm true"):
        assert "Operation not permitted" in denied(command)
    assert "PermissionError" in denied(f"{python} -c 'import os; os.unshare(os.CLONE_NEWUSER)'", outside=False)
    code, out = sh(alice_sb, "grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
    assert code == 0 and "NoNewPrivs:\t1" in out and "CapEff:\t0000000000000000" in out, out
    assert "Seccomp:\t2" in out and f"Uid:\t{UID}\t" in out, out

    # 5. What it creates: owned by the server's user on the host (there is no uid per sandbox without root),
    # in a directory only that user can enter; a setuid copy of a shell gives nothing.
    code, out = sh(alice_sb, "echo mine > made-here.txt && cp /bin/sh ./sh && chmod u+s ./sh && ./sh -c 'id -u'")
    assert code == 0 and out.strip() == str(UID), out
    alice_dir = work_dirs[alice_sb["id"]]
    made = (alice_dir / "workspace" / "made-here.txt").stat()
    assert (made.st_uid, made.st_gid) == (UID, GID)
    assert stat.S_IMODE(alice_dir.stat().st_mode) == 0o700 and alice_dir.stat().st_uid == UID

    # The allowed routes work: the operator-allowed host, the LLM, the callbacks, the proxy route.
    code, out = sh(alice_sb, f"curl -sf --max-time 10 http://127.0.0.1:{allowed.port}/ok")
    assert code == 0 and out == "canary-answer" and allowed.hits == ["/ok"], out
    assert fake_llm.requests, "the LLM was never reached from the sandbox"
    finished = wait_for(
        lambda: (c := alice.get(f"{API}/{alice_conv}").json())["execution_status"] == "finished" and c,
        timeout=90,
        what="the conversation finished, reported by callback",
    )
    assert finished["sandbox_id"] == alice_sb["id"]
    assert alice.get(f"/api/v1/conversation/{alice_conv}/events/search").json()["items"]
    assert bob.get(f"{API}/{bob_conv}").status_code == 200 and bob_conv != alice_conv
    for key in ("wrong", bob_sb["session_api_key"], alice_key):
        r = httpx.get(
            f"{server.base_url}/agent-server/{alice_sb['id']}/api/conversations", headers={"X-Session-API-Key": key}
        )
        assert r.status_code == 401, r.text

    # Deleted, a sandbox's directory goes, even what it made unreadable to its (the server's) user.
    code, out = sh(alice_sb, "mkdir -p locked/deeper && echo x > locked/deeper/f && chmod 000 locked/deeper locked")
    assert code == 0, out
    assert alice.delete(f"/api/v1/sandboxes/{alice_sb['id']}").status_code == 200
    assert not alice_dir.exists(), sorted(str(p) for p in alice_dir.rglob("*"))
