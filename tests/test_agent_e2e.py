"""End to end with the real openhands-agent-server and the fake LLM: start, run, follow, message,
pause/resume, restart, delete — checked over HTTP and by process id."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import Database, LiveServer, wait_for
from tests.support.process_server import ProcessServer, agent_settings, recorded_sandbox_pid, with_database
from threadline.sandboxes import cgroups
from threadline.sandboxes.cgroups import enter_command
from threadline.sandboxes.runtime import AGENT_SERVER_VERSION
from threadline.sandboxes.tables import sandboxes

pytestmark = pytest.mark.agent
API = "/api/v1/app-conversations"


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def sandbox_pids(home: Path, sandbox_id: str) -> list[int]:
    """Every live process tagged with this sandbox (the agent server, tmux, shells)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"THREADLINE_SANDBOX_ID={sandbox_id}".encode() in env.split(b"\0") and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def agent_pid(home: Path, sandbox_id: str) -> int | None:
    """The agent server process of a sandbox (its tmux servers and shells are tagged too)."""
    return next((pid for pid in sandbox_pids(home, sandbox_id) if is_agent_server(pid)), None)


def is_agent_server(pid: int) -> bool:
    """The agent server itself, not bubblewrap or the sandbox's launcher (whose arguments name it too)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.split(b"\0")[1:3] == [b"-m", b"openhands.agent_server"]


def start_and_wait(client: httpx.Client, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    r = client.post(API, json=body)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "WORKING"

    def done() -> dict[str, Any] | None:
        current = client.get(f"{API}/start-tasks", params={"ids": [task["id"]]}).json()[0]
        return current if current["status"] in ("READY", "ERROR") else None

    final: dict[str, Any] = wait_for(done, timeout=timeout, what="start task to finish")
    return final


def conversation(client: httpx.Client, conversation_id: str) -> dict[str, Any]:
    r = client.get(f"{API}/{conversation_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_full_life_of_a_conversation(agent_server_factory: Any, fake_llm: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user("ada")
    client = server.client(key)
    task = start_and_wait(
        client,
        {
            "initial_message": {"content": [{"type": "text", "text": "Say hello"}]},
            "public": True,
            "tags": {"team": "core"},
            "trigger": "openhands_api",
            "pr_number": [12],
            "secrets": {"MY_TOKEN": "s3cr3t-value-123"},
        },
    )
    assert task["status"] == "READY", task["detail"]
    statuses = [h["status"] for h in task["history"]]
    assert statuses[0] == "WORKING" and statuses[-1] == "READY"
    assert "WAITING_FOR_SANDBOX" in statuses and "STARTING_CONVERSATION" in statuses
    assert task["request"]["secrets"] == {"MY_TOKEN": "**********"}
    assert "s3cr3t-value-123" not in str(task)
    conv_id = task["app_conversation_id"]
    sandbox_id = task["sandbox_id"]
    assert task["agent_server_url"].startswith("http://127.0.0.1:")

    # The agent runs to the end; callbacks bring status and metrics, the automatic title arrives.
    def finished() -> dict[str, Any] | None:
        c = conversation(client, conv_id)
        ok = c["execution_status"] == "finished" and c["metrics"] and c["metrics"]["accumulated_cost"] > 0
        return c if ok and c["title"] else None

    conv = wait_for(finished, timeout=90, what="conversation finished with metrics and title")
    assert conv["sandbox_status"] == "RUNNING"
    assert conv["public"] is True and conv["tags"] == {"team": "core"} and conv["pr_number"] == [12]
    assert conv["trigger"] == "openhands_api" and conv["llm_model"] == "openai/fake-model"
    usage = conv["metrics"]["accumulated_token_usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert conv["conversation_url"] == f"{task['agent_server_url']}/api/conversations/{conv_id}"
    assert conv["session_api_key"]
    # The owner can use the session key on the agent server directly.
    direct = httpx.get(conv["conversation_url"], headers={"X-Session-API-Key": conv["session_api_key"]})
    assert direct.status_code == 200

    # Events were stored by callbacks and are searchable.
    events = wait_for(
        lambda: client.get(f"/api/v1/conversation/{conv_id}/events/search").json()["items"],
        what="events stored",
    )
    kinds = {e["kind"] for e in events}
    assert "MessageEvent" in kinds and "ActionEvent" in kinds
    count = client.get(f"/api/v1/conversation/{conv_id}/events/count").json()
    assert count >= len(events) > 0

    # A follow-up message runs the agent again.
    calls_before = len(fake_llm.agent_requests)
    r = client.post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "Again"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "sandbox_status": "RUNNING", "message": None}
    wait_for(lambda: len(fake_llm.agent_requests) > calls_before, what="agent called the LLM again")
    wait_for(lambda: conversation(client, conv_id)["execution_status"] == "finished", what="finished again")
    cost_after = wait_for(
        lambda: (
            (c := conversation(client, conv_id)["metrics"]["accumulated_cost"]) > conv["metrics"]["accumulated_cost"]
            and c
        ),
        what="cost grew",
    )
    assert cost_after > conv["metrics"]["accumulated_cost"]

    # Pause: the agent server stops, the status says so, messages are refused with 409.
    pid = sandbox_pids(server.settings.home, sandbox_id)
    assert pid
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/pause").json() == {"success": True}
    paused = conversation(client, conv_id)
    assert paused["sandbox_status"] == "PAUSED"
    assert paused["execution_status"] is None and paused["conversation_url"] is None
    assert paused["session_api_key"] is None
    assert not sandbox_pids(server.settings.home, sandbox_id)
    r = client.post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "x"}]})
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")

    # Resume: STARTING until the agent answers, then RUNNING; the conversation survived.
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/resume").json() == {"success": True}
    wait_for(lambda: conversation(client, conv_id)["sandbox_status"] == "RUNNING", timeout=90, what="resumed")
    r = client.post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "After resume"}]})
    assert r.status_code == 200, r.text

    # Delete: the conversation, its events and start tasks go, and the sandbox with its processes.
    pids = sandbox_pids(server.settings.home, sandbox_id)
    assert pids
    assert client.delete(f"{API}/{conv_id}").json() == {"success": True}
    assert client.get(f"{API}/{conv_id}").status_code == 404
    assert client.get(f"/api/v1/conversation/{conv_id}/events/count").status_code == 404
    assert client.get(f"{API}/start-tasks", params={"ids": [task["id"]]}).json() == [None]
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json() == [None]
    assert not [p for p in pids if pid_alive(p)]
    assert not sandbox_pids(server.settings.home, sandbox_id)
    assert not (server.settings.sandboxes_dir / sandbox_id).exists()
    # The API key of the LLM never leaked into anything the user can read.
    assert server.settings.llm_api_key not in str(task)


def _bare_repo(root: Path, name: str) -> None:
    """A local bare repository with one commit on `main` and one on `feature/x` (git over file://)."""
    work = root / "work"
    bare = root / "git" / f"{name}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"
    )

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    work.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    (work / "README.md").write_text("hello from main\n")
    git("add", ".")
    git("commit", "-qm", "init")
    git("checkout", "-q", "-b", "feature/x")
    (work / "FEATURE.md").write_text("feature\n")
    git("add", ".")
    git("commit", "-qm", "feature")
    git("init", "-q", "--bare", str(bare), cwd=root)
    git("push", "-q", str(bare), "main", "feature/x")


def test_stream_start_with_repository_and_sub_conversation(agent_server_factory: Any, tmp_path: Path) -> None:
    _bare_repo(tmp_path, "acme/widgets")
    server: LiveServer = agent_server_factory()
    _, key = server.user("bea")
    client = server.client(key)
    body = {
        "initial_message": {"content": [{"type": "text", "text": "Look at the repo"}]},
        "selected_repository": "acme/widgets",
        "selected_branch": "feature/x",
        "git_provider": "github",
        "title": "My own title",
    }
    with client.stream("POST", f"{API}/stream-start", json=body, timeout=180) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        raw = response.read()
    import json

    tasks = json.loads(raw)
    statuses = [t["status"] for t in tasks]
    assert statuses[0] == "WORKING" and statuses[-1] == "READY", tasks[-1]["detail"]
    assert statuses == [
        "WORKING",
        "WAITING_FOR_SANDBOX",
        "PREPARING_REPOSITORY",
        "RUNNING_SETUP_SCRIPT",
        "SETTING_UP_GIT_HOOKS",
        "SETTING_UP_SKILLS",
        "STARTING_CONVERSATION",
        "READY",
    ] or set(statuses) <= {s["status"] for s in tasks[-1]["history"]}
    final = tasks[-1]
    assert [h["status"] for h in final["history"]][-1] == "READY"
    conv_id, sandbox_id = final["app_conversation_id"], final["sandbox_id"]
    clone = server.settings.sandboxes_dir / sandbox_id / "workspace" / "widgets"
    assert (clone / "FEATURE.md").read_text() == "feature\n"  # the branch asked for was checked out

    conv = conversation(client, conv_id)
    assert conv["selected_repository"] == "acme/widgets" and conv["selected_branch"] == "feature/x"
    assert conv["git_provider"] == "github"
    # A user-set title is never replaced by the agent's automatic title.
    wait_for(lambda: conversation(client, conv_id)["execution_status"] == "finished", timeout=90, what="finished")
    assert conversation(client, conv_id)["title"] == "My own title"

    # A sub-conversation shares the parent's sandbox and is listed on the parent.
    sub = start_and_wait(
        client,
        {
            "parent_conversation_id": conv_id,
            "initial_message": {"content": [{"type": "text", "text": "sub task"}]},
        },
    )
    assert sub["status"] == "READY", sub["detail"]
    assert sub["sandbox_id"] == sandbox_id
    parent = conversation(client, conv_id)
    assert parent["sub_conversation_ids"] == [sub["app_conversation_id"]]
    assert client.get(f"{API}/count").json() == 1
    assert client.get(f"{API}/count", params={"include_sub_conversations": True}).json() == 2
    page = client.get(f"{API}/search", params={"sandbox_id__eq": sandbox_id, "include_sub_conversations": True})
    assert {c["id"] for c in page.json()["items"]} == {conv_id, sub["app_conversation_id"]}
    assert all(c["sandbox_status"] == "RUNNING" for c in page.json()["items"])
    # Start tasks are searchable per conversation and counted alike.
    found = client.get(f"{API}/start-tasks/search", params={"conversation_id__eq": conv_id}).json()["items"]
    assert [t["id"] for t in found] == [final["id"]]
    assert client.get(f"{API}/start-tasks/count").json() == 2

    # Deleting the parent keeps the sandbox: the sub-conversation still uses it.
    assert client.delete(f"{API}/{conv_id}").status_code == 200
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]["status"] == "RUNNING"
    assert client.delete(f"{API}/{sub['app_conversation_id']}").status_code == 200
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json() == [None]
    assert not sandbox_pids(server.settings.home, sandbox_id)


def test_restart_reattaches_and_dead_sandboxes_are_reported(agent_server_factory: Any, fake_llm: Any) -> None:
    first: LiveServer = agent_server_factory(stop_sandboxes_on_shutdown=False)
    _, key = first.user("cy")
    client = first.client(key)
    task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
    assert task["status"] == "READY", task["detail"]
    conv_id, sandbox_id = task["app_conversation_id"], task["sandbox_id"]
    pid = agent_pid(first.settings.home, sandbox_id)
    assert pid
    cgroups = first.app.state.sandboxes.backend.cgroups  # None where the machine has no usable cgroup
    if cgroups is not None:
        assert pid in cgroups.pids(sandbox_id)
        # A stale cgroup of this home (a sandbox with no record, something still running in it): the next
        # start removes it and kills what is in it.
        cgroups.create("0" * 32)
        stale = subprocess.Popen(enter_command(cgroups.procs_files("0" * 32), ["sleep", "600"]))
        wait_for(lambda: stale.pid in cgroups.pids("0" * 32), what="the stale process in its cgroup")
    first.stop()  # type: ignore[attr-defined]
    assert pid_alive(pid)  # kept running, as configured

    # A new Threadline on the same database re-attaches the live sandbox.
    second: LiveServer = agent_server_factory(stop_sandboxes_on_shutdown=True)
    client = second.client(key)
    conv = conversation(client, conv_id)
    assert conv["sandbox_status"] == "RUNNING"
    assert conv["execution_status"] in ("finished", "idle", "running")
    assert agent_pid(second.settings.home, sandbox_id) == pid
    if cgroups is not None:
        # The re-attached sandbox keeps its cgroup (and stays in it); the stale one is gone, its process killed.
        assert pid in cgroups.pids(sandbox_id)
        assert not cgroups.exists("0" * 32) and stale.wait(timeout=30) == -9
    llm_calls = len(fake_llm.requests)
    r = client.post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "still there?"}]})
    assert r.status_code == 200, r.text
    # The re-attached sandbox still has its way out (isolated: the egress socket is served again): the agent
    # reaches the LLM again.
    wait_for(lambda: len(fake_llm.requests) > llm_calls, timeout=60, what="the LLM reached after re-attach")

    # Killed from outside: MISSING at once (its runtime is gone), never a hung request; messages get 410.
    recorded = second.run(_recorded_pid(second, sandbox_id))
    for pid in sandbox_pids(second.settings.home, sandbox_id):
        with contextlib.suppress(ProcessLookupError):  # in a pid namespace, the first one takes all with it
            os.kill(pid, 9)
    # Gone means exited: a process being killed has no environment to show (so it is no longer listed as the
    # sandbox's) a moment before it has exited, and until then the server rightly sees it running.
    wait_for(
        lambda: not sandbox_pids(second.settings.home, sandbox_id) and not pid_alive(recorded),
        what="processes gone",
    )
    started = time.monotonic()
    conv = conversation(client, conv_id)
    assert time.monotonic() - started < 5
    assert conv["sandbox_status"] == "MISSING" and conv["execution_status"] is None
    assert conv["session_api_key"] is None and conv["conversation_url"] is None
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]["status"] == "MISSING"
    # Not shown, so not matched: the stored copy of the agent's last status no longer counts.
    for status in ("finished", "idle", "running"):
        assert client.get(f"{API}/count", params={"execution_status__eq": status}).json() == 0
    r = client.post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "x"}]})
    assert r.status_code == 410

    # Another restart: the dead sandbox is MISSING, and its (empty) cgroup is removed as stale.
    second.stop()  # type: ignore[attr-defined]
    third: LiveServer = agent_server_factory()
    client = third.client(key)
    assert conversation(client, conv_id)["sandbox_status"] == "MISSING"
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]["status"] == "MISSING"
    if cgroups is not None:
        assert not any(d.exists() for d in cgroups.dirs(sandbox_id))


# -- a restart in another cgroup --------------------------------------------------------------------


def cgroup_pids(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove_cgroup_trees(tops: list[Path]) -> None:
    """Kill every process in these cgroups (servers and sandboxes this test started) and remove them,
    deepest first; the kernel lets a cgroup go only once its killed processes have exited."""

    def removed() -> bool:
        for top in tops:
            if not top.is_dir():
                continue
            tree = [top, *(d for d in top.rglob("*") if d.is_dir())]
            for directory in sorted(tree, key=lambda d: len(d.parts), reverse=True):
                for pid in cgroup_pids(directory):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    directory.rmdir()
        return not any(top.exists() for top in tops)

    wait_for(removed, timeout=60, interval=0.05, what="the test's cgroups removed")


@pytest.fixture
def two_cgroups() -> Iterator[tuple[list[Path], list[Path]]]:
    """Cgroups `a` and `b` (one per v1 memory, cpu and pids hierarchy) under this test process's own
    cgroups, for Threadline to run in; removed afterwards with everything in them, also after a failure.
    Requested before `process_server_factory`, so the servers are stopped before this is undone."""
    detection = cgroups.detect()
    if detection.version != 1:
        pytest.skip(f"sets up cgroup v1 hierarchies (as root); here: {detection.describe()}")
    name = f"threadline-test-{uuid.uuid4().hex[:12]}"
    tops = [h.base / name for h in detection.hierarchies]
    try:
        for top in tops:
            top.mkdir()
            (top / "a").mkdir()
            (top / "b").mkdir()
        yield [top / "a" for top in tops], [top / "b" for top in tops]
    finally:
        _remove_cgroup_trees(tops)


def _recorded(database: Database, sandbox_id: str) -> tuple[str, str | None]:
    async def read(db: Any) -> tuple[str, str | None]:
        async with db.read() as conn:
            query = select(sandboxes.c.status, sandboxes.c.detail).where(sandboxes.c.id == sandbox_id)
            row = (await conn.execute(query)).one()
            return str(row.status), row.detail

    result: tuple[str, str | None] = with_database(database.url, database.schema, read)
    return result


def test_restart_in_another_cgroup_keeps_the_sandboxes_cgroups_and_removes_stale_ones(
    two_cgroups: tuple[list[Path], list[Path]],
    process_server_factory: Callable[..., ProcessServer],
    database: Database,
    agent_runtime: Path,
    fake_llm: Any,
) -> None:
    """Threadline runs in cgroup `a`, then is restarted in `b` (a systemd unit moved, a start from another
    shell): the sandbox it re-attaches keeps its cgroup under `a`, whose OOM kills end it as ERROR and
    which is removed when it stops; a stale cgroup of this home under `a` is removed at once."""
    a, b = two_cgroups
    settings = agent_settings(agent_runtime, fake_llm.base_url, sandbox_memory_mb=400, instance_heartbeat_seconds=1)
    in_a = enter_command([d / "cgroup.procs" for d in a], [])
    first = process_server_factory(wrap=in_a, stop_sandboxes_on_shutdown="false", **settings)
    assert all(first.pid in cgroup_pids(d) for d in a)
    key = first.admin_key
    name = cgroups.parent_name(Path(first.env["THREADLINE_HOME"]) / "sandboxes")
    with first.client(key, timeout=60) as client:
        r = client.post("/api/v1/sandboxes")
        assert r.status_code == 200, r.text
        sandbox_id = r.json()["id"]
        wait_for(
            lambda: client.get("/api/v1/sandboxes", params={"id": sandbox_id}).json()[0]["status"] == "RUNNING",
            timeout=150,
            what="the sandbox RUNNING",
        )
    pid = recorded_sandbox_pid(database.url, database.schema, sandbox_id)
    in_cgroup = [d / name / sandbox_id for d in a]
    assert pid is not None and all(pid in cgroup_pids(d) for d in in_cgroup)
    assert first.stop() in (0, -signal.SIGTERM), first.log_tail()
    assert pid_alive(pid)
    # A stale cgroup of this home under `a` (a sandbox with no record), with a process in it. Made once the
    # first run has stopped: its own heartbeat would remove it otherwise.
    stale_dirs = [d / name / ("0" * 32) for d in a]
    for directory in stale_dirs:
        directory.mkdir()
    stale = subprocess.Popen(enter_command([d / "cgroup.procs" for d in stale_dirs], ["sleep", "600"]))
    try:
        wait_for(lambda: all(stale.pid in cgroup_pids(d) for d in stale_dirs), what="the stale process in `a`")

        # Restarted in `b`: its own parents are there, and the sandbox's cgroup stays under `a`, holding it.
        second = process_server_factory(
            port=first.port, wrap=enter_command([d / "cgroup.procs" for d in b], []), **settings
        )
        assert all(second.pid in cgroup_pids(d) for d in b)
        assert all((d / name).is_dir() for d in b) and not any((d / name / sandbox_id).exists() for d in b)
        assert all(pid in cgroup_pids(d) for d in in_cgroup)
        # The stale one under `a` is found although no Threadline runs there now: its process killed, removed.
        wait_for(lambda: stale.poll() is not None, timeout=30, what="the stale cgroup's process killed")
        assert stale.returncode == -signal.SIGKILL
        wait_for(lambda: not any(d.exists() for d in stale_dirs), timeout=30, what="the stale cgroup removed")
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait(30)

    with second.client(key, timeout=60) as client:
        sandbox = client.get("/api/v1/sandboxes", params={"id": sandbox_id}).json()[0]
        assert sandbox["status"] == "RUNNING", sandbox
        # Over the limit the first run wrote in `a`: the kernel kills the process there, and this run reads
        # the OOM kill there, so the sandbox is ended as ERROR with the kernel's figures.
        hog = "python3 -c 'x = bytearray(900 * 2**20); print(\"allocated\")'"
        with contextlib.suppress(httpx.HTTPError):  # the sandbox may be ended before it answers
            r = client.post(
                f"/agent-server/{sandbox_id}/api/bash/execute_bash_command",
                headers={"X-Session-API-Key": sandbox["session_api_key"]},
                json={"command": hog, "timeout": 60},
                timeout=90,
            )
            assert "allocated" not in r.text, r.text
    _, detail = wait_for(
        lambda: (found := _recorded(database, sandbox_id))[0] == "ERROR" and found,
        timeout=60,
        what="the sandbox ERROR for its memory",
    )
    pattern = r"the kernel ended (\d+) of them \(cgroup v1: oom_kill (\d+), peak (\d+) MiB\)"
    assert detail and re.search(pattern, detail) and "memory limit of 400 MiB" in detail, detail
    # Stopped: its cgroup under `a` is removed, then (at a heartbeat) the emptied parent there too.
    wait_for(lambda: not any(d.exists() for d in in_cgroup), timeout=30, what="the sandbox's cgroup removed")
    wait_for(lambda: not any((d / name).exists() for d in a), timeout=30, what="the old parent removed")
    assert all((d / name).is_dir() for d in b)


def test_shutdown_stops_sandboxes_and_they_resume_after_restart(agent_server_factory: Any) -> None:
    first: LiveServer = agent_server_factory()
    _, key = first.user("dee")
    client = first.client(key)
    task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
    assert task["status"] == "READY", task["detail"]
    sandbox_id = task["sandbox_id"]
    pids = sandbox_pids(first.settings.home, sandbox_id)
    first.stop()  # type: ignore[attr-defined]
    assert not [p for p in pids if pid_alive(p)]  # nothing outlives a stopped Threadline by default

    second: LiveServer = agent_server_factory()
    client = second.client(key)
    assert conversation(client, task["app_conversation_id"])["sandbox_status"] == "PAUSED"
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/resume").status_code == 200
    wait_for(
        lambda: conversation(client, task["app_conversation_id"])["sandbox_status"] == "RUNNING",
        timeout=90,
        what="resumed after restart",
    )
    # Events the agent flushed while Threadline was down are backfilled once the sandbox runs again.
    count_path = f"/api/v1/conversation/{task['app_conversation_id']}/events/count"
    wait_for(lambda: client.get(count_path).json() > 0, timeout=60, what="events backfilled after resume")


def test_sandboxes_api_and_isolation(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, alice_key = server.user("alice")
    _, bob_key = server.user("bob")
    alice, bob = server.client(alice_key), server.client(bob_key)
    created = alice.post("/api/v1/sandboxes")
    assert created.status_code == 200, created.text
    sandbox = created.json()
    assert sandbox["status"] == "STARTING" and sandbox["session_api_key"] is None
    sid = sandbox["id"]
    running = wait_for(
        lambda: (s := alice.get("/api/v1/sandboxes", params={"id": [sid]}).json()[0])["status"] == "RUNNING" and s,
        timeout=90,
        what="sandbox RUNNING",
    )
    assert running["session_api_key"]
    assert running["exposed_urls"][0]["url"] == f"{server.base_url}/agent-server/{sid}"
    assert [s["id"] for s in alice.get("/api/v1/sandboxes/search").json()["items"]] == [sid]
    # Bob sees nothing of it and can do nothing to it.
    assert bob.get("/api/v1/sandboxes/search").json()["items"] == []
    assert bob.get("/api/v1/sandboxes", params={"id": [sid]}).json() == [None]
    for method, path in (
        ("POST", f"/api/v1/sandboxes/{sid}/pause"),
        ("POST", f"/api/v1/sandboxes/{sid}/resume"),
        ("DELETE", f"/api/v1/sandboxes/{sid}"),
    ):
        assert bob.request(method, path).status_code == 404
    # Bob cannot start a conversation in Alice's sandbox.
    task = start_and_wait(bob, {"sandbox_id": sid})
    assert task["status"] == "ERROR" and "not found" in task["detail"]
    # Alice's session key is no API key, and Bob's key cannot call back as her sandbox.
    assert (
        httpx.get(
            f"{server.base_url}/api/v1/users/me", headers={"X-Access-Token": running["session_api_key"]}
        ).status_code
        == 401
    )
    r = httpx.post(f"{server.base_url}/api/v1/webhooks/conversations", json={}, headers={"X-Session-API-Key": bob_key})
    assert r.status_code == 401
    specs = alice.get("/api/v1/sandbox-specs/search").json()["items"]
    backend = server.settings.sandbox_backend
    # The default spec, then the pinned version by its own id (other installed versions may follow).
    assert [s["id"] for s in specs][:2] == [backend, f"{backend}-{AGENT_SERVER_VERSION}"]
    assert alice.get("/api/v1/sandbox-specs", params={"id": [backend, "nope"]}).json()[1] is None
    assert alice.post("/api/v1/sandboxes", params={"sandbox_spec_id": "docker"}).status_code == 404
    pids = sandbox_pids(server.settings.home, sid)
    assert alice.delete(f"/api/v1/sandboxes/{sid}").json() == {"success": True}
    assert not [p for p in pids if pid_alive(p)]
    assert alice.get("/api/v1/sandboxes", params={"id": [sid]}).json() == [None]


def test_pause_and_resume_during_start_ends_running(agent_server_factory: Any) -> None:
    """A sandbox paused and resumed while still starting, several times quickly, ends RUNNING: the watcher of
    an earlier start must not judge the later start by its own, stopped, process (it recorded ERROR)."""
    server: LiveServer = agent_server_factory()
    _, key = server.user("alice")
    with server.client(key) as client:
        sid = client.post("/api/v1/sandboxes").json()["id"]
        for _ in range(4):
            assert client.post(f"/api/v1/sandboxes/{sid}/pause").json() == {"success": True}
            assert client.post(f"/api/v1/sandboxes/{sid}/resume").json() == {"success": True}

        def settled() -> dict[str, Any] | None:
            sandbox: dict[str, Any] = client.get("/api/v1/sandboxes", params={"id": [sid]}).json()[0]
            return sandbox if sandbox["status"] != "STARTING" else None

        final = wait_for(settled, timeout=90, what="sandbox to leave STARTING")
        assert final["status"] == "RUNNING", final
        # It stays so: no late verdict of an old watcher.
        stable_until = time.monotonic() + 1.0
        while time.monotonic() < stable_until:
            assert client.get("/api/v1/sandboxes", params={"id": [sid]}).json()[0]["status"] == "RUNNING"
        # One agent server: each pause stopped the process of the start before it.
        agents = [p for p in sandbox_pids(server.settings.home, sid) if is_agent_server(p)]
        assert len(agents) == 1, agents


def test_warm_pool_hands_out_running_sandboxes_and_refills(agent_server_factory: Any) -> None:
    from sqlalchemy import select

    from threadline.sandboxes.tables import sandboxes

    server: LiveServer = agent_server_factory(warm_pool_size=1, warm_pool_refill_interval=1.0)
    _, key = server.user("wu")
    client = server.client(key)

    def pool_ids() -> list[str]:
        async def query() -> list[str]:
            async with server.ctx.db.read() as conn:
                rows = await conn.execute(select(sandboxes.c.id).where(sandboxes.c.user_id.is_(None)))
                return [r.id for r in rows]

        return server.run(query())

    wait_for(lambda: client.get("/server_info").json()["warm_pool"]["ready"] == 1, timeout=90, what="pool ready")
    (pooled,) = pool_ids()
    # Pool sandboxes belong to nobody: no user sees them.
    assert client.get("/api/v1/sandboxes/search").json()["items"] == []
    assert client.get("/api/v1/sandboxes", params={"id": [pooled]}).json() == [None]

    task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "warm"}]}})
    assert task["status"] == "READY", task["detail"]
    assert task["sandbox_id"] == pooled  # handed the pre-started agent server, not a new one
    assert [s["id"] for s in client.get("/api/v1/sandboxes/search").json()["items"]] == [pooled]
    wait_for(
        lambda: conversation(client, task["app_conversation_id"])["execution_status"] == "finished",
        timeout=90,
        what="conversation on the pooled sandbox finished",
    )
    # The pool refills with a new sandbox.
    wait_for(lambda: (ids := pool_ids()) and ids[0] != pooled, timeout=30, what="pool refilled")
    wait_for(lambda: client.get("/server_info").json()["warm_pool"]["ready"] == 1, timeout=90, what="refill ready")


def test_an_unresponsive_agent_server_degrades_only_its_own_rows(agent_server_factory: Any) -> None:
    """An agent server that is alive but does not answer (SIGSTOP): reads stay fast and fall back to the
    stored status for its rows only; send-message is a 503, not a hang; it recovers when it answers again."""
    import signal

    server: LiveServer = agent_server_factory(agent_timeout=1.0)
    _, key = server.user("gus")
    client = server.client(key)
    frozen_task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "a"}]}})
    healthy_task = start_and_wait(client, {"initial_message": {"content": [{"type": "text", "text": "b"}]}})
    assert frozen_task["status"] == healthy_task["status"] == "READY"
    assert frozen_task["sandbox_id"] != healthy_task["sandbox_id"]
    frozen, healthy = frozen_task["app_conversation_id"], healthy_task["app_conversation_id"]
    for cid in (frozen, healthy):
        wait_for(lambda c=cid: conversation(client, c)["execution_status"] == "finished", timeout=90, what="finished")

    pid = agent_pid(server.settings.home, frozen_task["sandbox_id"])
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        items = {c["id"]: c for c in client.get(f"{API}/search").json()["items"]}
        assert time.monotonic() - started < 10  # bounded by the agent timeout, not hung
        assert items[frozen]["sandbox_status"] == "RUNNING"  # the process lives
        assert items[frozen]["execution_status"] == "finished"  # the stored copy
        assert items[healthy]["execution_status"] == "finished" and items[healthy]["session_api_key"]
        r = client.post(f"{API}/{frozen}/send-message", json={"content": [{"type": "text", "text": "x"}]})
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/problem+json")
        r = client.post(f"{API}/{healthy}/send-message", json={"content": [{"type": "text", "text": "y"}]})
        assert r.status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    r = client.post(f"{API}/{frozen}/send-message", json={"content": [{"type": "text", "text": "z"}]})
    assert r.status_code == 200, r.text


def test_two_replicas_own_their_sandboxes(agent_server_factory: Any) -> None:
    """Two Threadline processes on one database: neither stops, adopts or marks MISSING the other's
    sandboxes while it lives; when one goes away, the other adopts what it left running."""
    from sqlalchemy import select

    from threadline.sandboxes.tables import sandboxes

    def owner(server: LiveServer, sandbox_id: str) -> str:
        async def query() -> str:
            async with server.ctx.db.read() as conn:
                row = (await conn.execute(select(sandboxes.c.owner_instance).where(sandboxes.c.id == sandbox_id))).one()
                return str(row.owner_instance)

        return server.run(query())

    def instance_id(server: LiveServer) -> str:
        return str(server.app.state.sandboxes.owner)

    a: LiveServer = agent_server_factory(stop_sandboxes_on_shutdown=False)
    b: LiveServer = agent_server_factory()
    _, key = a.user("ria")
    task = start_and_wait(a.client(key), {"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
    assert task["status"] == "READY", task["detail"]
    sandbox_id, conv_id = task["sandbox_id"], task["app_conversation_id"]
    pid = agent_pid(a.settings.home, sandbox_id)
    assert pid and owner(a, sandbox_id) == instance_id(a)

    # B serves the conversation too, but the sandbox stays A's.
    assert conversation(b.client(key), conv_id)["sandbox_status"] == "RUNNING"
    b.run(b.app.state.sandboxes.adopt_orphans())
    assert owner(b, sandbox_id) == instance_id(a)

    # A goes away (keeping its sandboxes running): B adopts the sandbox on its next pass.
    a.stop()  # type: ignore[attr-defined]
    assert pid_alive(pid)
    b.run(b.app.state.sandboxes.adopt_orphans())
    assert owner(b, sandbox_id) == instance_id(b)
    r = b.client(key).post(f"{API}/{conv_id}/send-message", json={"content": [{"type": "text", "text": "B here"}]})
    assert r.status_code == 200, r.text

    # A replica that stops only stops its own: C comes and goes, B's sandbox keeps running.
    c: LiveServer = agent_server_factory()
    assert owner(c, sandbox_id) == instance_id(b), (owner(c, sandbox_id), instance_id(b), instance_id(c))
    c.stop()  # type: ignore[attr-defined]
    assert pid_alive(pid)
    b.stop()  # type: ignore[attr-defined]
    wait_for(lambda: not pid_alive(pid), timeout=60, what=f"B to have stopped its adopted agent server {pid}")


async def _recorded_pid(server: LiveServer, sandbox_id: str) -> int:
    """The pid the server recorded for the sandbox (the process it watches)."""
    async with server.ctx.db.read() as conn:
        pid = (await conn.execute(select(sandboxes.c.pid).where(sandboxes.c.id == sandbox_id))).scalar_one()
    assert pid is not None
    return int(pid)
