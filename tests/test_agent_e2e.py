"""End to end with the real openhands-agent-server and the fake LLM: start, run, follow, message,
pause/resume, restart, delete — checked over HTTP and by process id."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for

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
    user, key = server.user("ada")
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
        lambda: (c := conversation(client, conv_id)["metrics"]["accumulated_cost"]) > conv["metrics"]["accumulated_cost"]
        and c,
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
