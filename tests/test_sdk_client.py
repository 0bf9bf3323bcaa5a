"""A client no one here wrote: the OpenHands SDK that ships with the OpenHands CLI (1.21.0), with its cloud
workspace (`OpenHandsCloudWorkspace`, openhands-workspace 1.11.1), run against a real Threadline.

The client runs in a venv of its own (tests/support/sdk_client.py) as a subprocess. It creates a sandbox
of the agent-server version its SDK speaks (spec `bwrap-1.21.0`, an extra runtime installed beside the
pinned one), runs a command and a whole agent conversation there (LLM: the fake one), and on leaving
the workspace deletes the sandbox with `DELETE /api/v1/sandboxes?sandbox_id=<id>`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from tests.support import sdk_client
from tests.test_agent_e2e import sandbox_pids
from threadline.sandboxes import runtime

# The client sees only HTTP: one database is enough here (both are covered by every other test).
pytestmark = [pytest.mark.agent, pytest.mark.parametrize("database", ["sqlite"], indirect=True)]
SCRIPT = Path(__file__).parent / "support" / "sdk_client_script.py"


@pytest.fixture(scope="session")
def sdk_client_python(agent_runtime: Path) -> Path:
    """The SDK client venv, and the agent runtime of its release beside the default one (installed when
    missing: scripts/test installs both before the run, so this is the fallback for a bare pytest)."""
    old_runtime = runtime.is_installed(sdk_client.old_runtime_dir(), sdk_client.SDK_VERSION)
    if not (old_runtime and sdk_client.client_installed()):
        if os.environ.get("THREADLINE_SKIP_RUNTIME"):
            pytest.skip("SDK client or its agent runtime not installed (THREADLINE_SKIP_RUNTIME is set)")
        sdk_client.ensure_installed()
    assert sdk_client.old_runtime_dir() == runtime.dir_for(agent_runtime, sdk_client.SDK_VERSION)
    return sdk_client.client_python()


def run_client(python: Path, server: LiveServer, key: str, llm_base_url: str, spec_id: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "THREADLINE_URL": server.base_url,
        "THREADLINE_API_KEY": key,
        "SANDBOX_SPEC_ID": spec_id,
        "LLM_BASE_URL": llm_base_url,
        "LLM_MODEL": "openai/fake-model",
        # No network here but the registries: LiteLLM would try to fetch its price list, the SDK a banner.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "OPENHANDS_SUPPRESS_BANNER": "1",
    }
    result = subprocess.run(
        [str(python), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, f"client failed (exit {result.returncode}):\n{result.stderr[-6000:]}"
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_the_sdk_of_the_openhands_cli_runs_a_conversation_in_a_sandbox_of_its_version(
    agent_server_factory: Any, fake_llm: Any, sdk_client_python: Path
) -> None:
    # The workspace needs the agent server at the root of a URL (it cannot use /agent-server/<id>).
    server: LiveServer = agent_server_factory(sandbox_agent_url="port")
    _, key = server.user("sdk-user")
    client = server.client(key)
    backend = server.settings.sandbox_backend
    spec_id = f"{backend}-{sdk_client.SDK_VERSION}"
    listed = [s["id"] for s in client.get("/api/v1/sandbox-specs/search").json()["items"]]
    assert listed[:2] == [backend, f"{backend}-{runtime.AGENT_SERVER_VERSION}"] and spec_id in listed

    report = run_client(sdk_client_python, server, key, fake_llm.base_url, spec_id)

    sandbox_id = report["sandbox_id"]
    assert report["agent_server_url"].startswith("http://127.0.0.1:")
    assert report["command"]["exit_code"] == 0
    assert report["command"]["stdout"].startswith("hello from agent in /workspace")
    # The agent server of the SDK's own release ran it: its events were the SDK's to read, to the end.
    assert report["agent_server_version"] == sdk_client.SDK_VERSION
    assert report["execution_status"] == "finished", report
    # Events the agent server sent and the SDK parsed: the user's message and the finish tool's observation.
    assert {"MessageEvent", "ObservationEvent"} <= set(report["event_kinds"]), report["event_kinds"]
    assert fake_llm.agent_requests, "the agent in the sandbox never reached the LLM"
    # The workspace's cleanup deleted the sandbox, with the id in the query (openhands-workspace 1.11.1's form).
    assert client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json() == [None]
    assert not sandbox_pids(server.settings.home, sandbox_id)
    metrics = client.get("/metrics").text
    assert 'threadline_http_requests_total{method="DELETE",route="/api/v1/sandboxes",status="200"} 1.0' in metrics


def test_a_sandbox_of_an_older_spec_runs_that_version_also_after_a_resume(
    agent_server_factory: Any, sdk_client_python: Path
) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user("alice")
    client = server.client(key)
    backend = server.settings.sandbox_backend
    spec_id = f"{backend}-{sdk_client.SDK_VERSION}"
    specs = client.get("/api/v1/sandbox-specs", params={"id": [spec_id, backend, f"{backend}-0.0.1"]}).json()
    assert [s and s["id"] for s in specs] == [spec_id, backend, None]
    created = client.post("/api/v1/sandboxes", params={"sandbox_spec_id": spec_id})
    assert created.status_code == 200, created.text
    sandbox_id = created.json()["id"]
    assert created.json()["sandbox_spec_id"] == spec_id

    def running() -> dict[str, Any] | None:
        info: dict[str, Any] = client.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]
        return info if info["status"] == "RUNNING" else None

    def version(info: dict[str, Any]) -> str:
        url = info["exposed_urls"][0]["url"]
        answer = httpx.get(f"{url}/server_info", headers={"X-Session-API-Key": info["session_api_key"]})
        assert answer.status_code == 200, answer.text
        return str(answer.json()["version"])

    info = wait_for(running, timeout=120, what="the sandbox RUNNING")
    assert version(info) == sdk_client.SDK_VERSION
    # The liveness probes answer without the session key (as the agent server's own do); nothing else does.
    agent_url = info["exposed_urls"][0]["url"]
    assert httpx.get(f"{agent_url}/health").status_code == 200
    assert httpx.get(f"{agent_url}/api/conversations/search").status_code == 401
    assert httpx.get(f"{server.base_url}/agent-server/{'0' * 32}/health").status_code == 401

    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/pause").status_code == 200
    assert client.post(f"/api/v1/sandboxes/{sandbox_id}/resume").status_code == 200
    info = wait_for(running, timeout=120, what="the sandbox RUNNING again")
    assert info["sandbox_spec_id"] == spec_id and version(info) == sdk_client.SDK_VERSION
    # The default spec is the newest installed version.
    default = client.post("/api/v1/sandboxes").json()
    assert default["sandbox_spec_id"] == backend
    info = wait_for(
        lambda: (
            (d := client.get("/api/v1/sandboxes", params={"id": [default["id"]]}).json()[0])["status"] == "RUNNING"
            and d
        ),
        timeout=120,
        what="the default sandbox RUNNING",
    )
    assert version(info) == next(iter(runtime.installed(server.settings.resolved_runtime_dir)))


def test_agent_ports_serve_a_sandbox_of_an_older_spec_and_come_back_after_a_restart(
    agent_server_factory: Any, fake_llm: Any, sdk_client_python: Path
) -> None:
    from tests.test_agent_e2e import conversation, start_and_wait

    first: LiveServer = agent_server_factory(sandbox_agent_url="port", stop_sandboxes_on_shutdown=False)
    _, key = first.user("olga")
    client = first.client(key)
    spec_id = f"{first.settings.sandbox_backend}-{sdk_client.SDK_VERSION}"
    sandbox_id = client.post("/api/v1/sandboxes", params={"sandbox_spec_id": spec_id}).json()["id"]

    def running(api: Any) -> dict[str, Any] | None:
        info: dict[str, Any] = api.get("/api/v1/sandboxes", params={"id": [sandbox_id]}).json()[0]
        return info if info["status"] == "RUNNING" else None

    info = wait_for(lambda: running(client), timeout=120, what="the sandbox RUNNING")
    (exposed,) = info["exposed_urls"]
    assert exposed["url"] == f"http://127.0.0.1:{exposed['port']}"
    session = {"X-Session-API-Key": info["session_api_key"]}
    assert httpx.get(f"{exposed['url']}/health").status_code == 200
    assert httpx.get(f"{exposed['url']}/api/conversations/search").status_code == 401  # the agent server's own check
    assert httpx.get(f"{exposed['url']}/server_info", headers=session).json()["version"] == sdk_client.SDK_VERSION

    # Threadline's own conversations run in it too (started in the sandbox, as upstream's start request does).
    task = start_and_wait(
        client, {"sandbox_id": sandbox_id, "initial_message": {"content": [{"type": "text", "text": "hi"}]}}
    )
    assert task["status"] == "READY", task["detail"]
    assert task["agent_server_url"] == exposed["url"]
    wait_for(
        lambda: conversation(client, task["app_conversation_id"])["execution_status"] == "finished",
        timeout=90,
        what="the conversation finished",
    )

    first.stop()  # type: ignore[attr-defined]
    # The port closed with the server; the sandbox kept running and is re-attached with its port by the next.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{exposed['url']}/health")
    second: LiveServer = agent_server_factory(sandbox_agent_url="port")
    client = second.client(key)
    info = wait_for(lambda: running(client), timeout=60, what="the sandbox RUNNING after the restart")
    url = info["exposed_urls"][0]["url"]
    assert httpx.get(f"{url}/server_info", headers=session).json()["version"] == sdk_client.SDK_VERSION
    assert conversation(client, task["app_conversation_id"])["conversation_url"].startswith(url)
