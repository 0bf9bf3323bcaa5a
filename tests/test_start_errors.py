"""Starting conversations: validation and failures that need no agent server, orphan reaping, runtime discovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, wait_for

API = "/api/v1/app-conversations"


def _final(client: Any, task_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task = client.get(f"{API}/start-tasks", params={"ids": [task_id]}).json()[0]
        return task if task["status"] in ("READY", "ERROR") else None

    result: dict[str, Any] = wait_for(done, timeout=30, what="start task to end")
    return result


@pytest.mark.parametrize(
    "body",
    [
        {"unknown": 1},
        {"selected_repository": "not a repo"},
        {"selected_branch": "bad..branch"},
        {"git_provider": "svn"},
        {"trigger": "carrier-pigeon"},
        {"conversation_id": "nope"},
        {"parent_conversation_id": "nope"},
        {"pr_number": ["x"]},
        {"tags": {"k" * 65: "v"}},
        {"tags": {f"k{i}": "v" for i in range(51)}},
        {"secrets": {"A": 1}},
        {"initial_message": {"content": [{"type": "text"}]}},
    ],
)
def test_start_validation_is_422(server: LiveServer, alice: Any, body: dict[str, Any]) -> None:
    _, client = alice
    r = client.post(API, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get(f"{API}/start-tasks/count").json() == 0


def test_start_without_llm_model_ends_in_error_with_detail(server: LiveServer, alice: Any) -> None:
    _, client = alice
    r = client.post(API, json={"title": "t", "secrets": {"TOKEN": "very-secret-value"}})
    assert r.status_code == 200
    task = _final(client, r.json()["id"])
    assert task["status"] == "ERROR"
    assert "LLM model" in task["detail"]
    assert [h["status"] for h in task["history"]] == ["WORKING", "ERROR"]
    assert task["request"]["secrets"] == {"TOKEN": "**********"} and "very-secret-value" not in str(task)
    assert client.get(f"{API}/count").json() == 0  # no half-made conversation


def test_start_with_missing_runtime_fails_cleanly(server_factory: Any, tmp_path: Path) -> None:
    server: LiveServer = server_factory(runtime_dir=tmp_path / "no-runtime", llm_model="openai/x")
    _, key = server.user("ed")
    client = server.client(key)
    task = _final(client, client.post(API, json={}).json()["id"])
    assert task["status"] == "ERROR"
    assert task["sandbox_id"] and "runtime" in task["detail"]
    sandbox = client.get("/api/v1/sandboxes", params={"id": [task["sandbox_id"]]}).json()[0]
    assert sandbox["status"] == "ERROR"


def test_start_in_unknown_sandbox_or_parent(server_factory: Any) -> None:
    server: LiveServer = server_factory(llm_model="openai/x")
    user, key = server.user("fay")
    client = server.client(key)
    for body in ({"sandbox_id": uuid.uuid4().hex}, {"parent_conversation_id": uuid.uuid4().hex}):
        task = _final(client, client.post(API, json=body).json()["id"])
        assert task["status"] == "ERROR" and "not found" in task["detail"], body
    existing = server.conversation(user.id)
    task = _final(client, client.post(API, json={"conversation_id": existing["id"]}).json()["id"])
    assert task["status"] == "ERROR" and "already exists" in task["detail"]


def test_start_task_reads(server: LiveServer, alice: Any, bob: Any) -> None:
    _, client = alice
    _, bob_client = bob
    ids = [client.post(API, json={"title": f"t{i}"}).json()["id"] for i in range(3)]
    for task_id in ids:
        _final(client, task_id)
    page1 = client.get(f"{API}/start-tasks/search", params={"limit": 2}).json()
    page2 = client.get(f"{API}/start-tasks/search", params={"limit": 2, "page_id": page1["next_page_id"]}).json()
    assert [t["id"] for t in page1["items"] + page2["items"]] == list(reversed(ids))
    assert page2["next_page_id"] is None
    asc = client.get(f"{API}/start-tasks/search", params={"sort_order": "CREATED_AT"}).json()["items"]
    assert [t["id"] for t in asc] == ids
    assert client.get(f"{API}/start-tasks/count").json() == 3
    assert bob_client.get(f"{API}/start-tasks/count").json() == 0
    assert bob_client.get(f"{API}/start-tasks", params={"ids": ids}).json() == [None, None, None]
    assert client.get(f"{API}/start-tasks", params={"ids": ["bad"]}).status_code == 422
    assert client.get(f"{API}/start-tasks/search", params={"page_id": "garbled"}).status_code == 400
    assert client.get(f"{API}/start-tasks/search", params={"conversation_id__eq": "x"}).status_code == 422


def test_send_message_to_missing_conversation_and_sandbox(server: LiveServer, alice: Any) -> None:
    user, client = alice
    body = {"content": [{"type": "text", "text": "hi"}]}
    assert client.post(f"{API}/{uuid.uuid4().hex}/send-message", json=body).status_code == 404
    conv = server.conversation(user.id)  # its sandbox does not exist
    r = client.post(f"{API}/{conv['id']}/send-message", json=body)
    assert r.status_code == 410 and r.headers["content-type"].startswith("application/problem+json")
    assert client.post(f"{API}/{conv['id']}/send-message", json={"content": []}).status_code == 422
    assert client.post(f"{API}/{conv['id']}/send-message", json={"role": "agent", **body}).status_code == 422


def test_orphan_sandbox_processes_are_killed_on_start(server_factory: Any, tmp_path: Path) -> None:
    """A process tagged as a sandbox of this Threadline but without a live record is killed at start-up."""
    home = tmp_path / "home"
    root = home / "sandboxes"
    root.mkdir(parents=True)
    env = dict(os.environ, THREADLINE_SANDBOX_ID=uuid.uuid4().hex, THREADLINE_SANDBOX_ROOT=str(root))
    orphan = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    other_root = dict(env, THREADLINE_SANDBOX_ROOT=str(tmp_path / "someone-else"))
    bystander = subprocess.Popen(["sleep", "300"], env=other_root, start_new_session=True)
    try:
        server_factory()
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None  # another Threadline's sandbox is not ours to kill
    finally:
        for proc in (orphan, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_runtime_install_without_a_suitable_python(tmp_path: Path) -> None:
    env = dict(os.environ, THREADLINE_RUNTIME_DIR=str(tmp_path / "rt"), THREADLINE_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "threadline.cli.main", "runtime", "install", "--python", sys.executable],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if sys.version_info < (3, 12):
        assert result.returncode == 1 and "3.12" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "threadline.cli.main", "runtime", "install", "--python", str(tmp_path / "nope")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "not a Python interpreter" in result.stderr
    # An install is never minutes of silence: it says what it installs, where and how big, and that pip's
    # progress follows, all on stderr (stdout stays for what a caller parses).
    assert "Installing openhands-agent-server==" in result.stderr and "740 MB" in result.stderr, result.stderr
    assert "pip's progress follows" in result.stderr and result.stdout == ""
    status = subprocess.run(
        [sys.executable, "-m", "threadline.cli.main", "runtime", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 1 and "not installed" in status.stdout
