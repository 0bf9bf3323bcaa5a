"""Reviewing what the agent did (issue 15 B1): git changes, a file's diff and the workspace download, on a
real agent server in an isolated sandbox, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.test_agent_e2e import API, _bare_repo, start_and_wait
from tests.test_sandbox_escape import sh
from tests.test_wire_strictness import problem

pytestmark = pytest.mark.agent


def test_review_the_agents_work(agent_server_factory: Any, tmp_path: Path) -> None:
    _bare_repo(tmp_path, "acme/widgets")
    server: LiveServer = agent_server_factory()
    _, alice_key = server.user("alice")
    _, bob_key = server.user("bob")
    alice, bob = server.client(alice_key), server.client(bob_key)
    task = start_and_wait(
        alice,
        {
            "initial_message": {"content": [{"type": "text", "text": "improve the readme"}]},
            "selected_repository": "acme/widgets",
            "selected_branch": "main",
            "git_provider": "github",
        },
    )
    assert task["status"] == "READY", task["detail"]
    cid, sid = task["app_conversation_id"], task["sandbox_id"]
    canary = server.settings.home / "canary-secret"
    canary.write_text("server-canary-9876")
    # What an agent does: edit a file, add one, and (a hostile one) plant links to the host's files.
    code, out = sh(
        server,
        sid,
        f"cd widgets && echo changed >> README.md && echo new > NEW.txt && ln -s {canary} leak "
        "&& ln -s /etc leak-dir && mkdir -p docs && echo doc > docs/guide.md",
    )
    assert code == 0, out

    changes = alice.get(f"{API}/{cid}/git/changes")
    assert changes.status_code == 200, changes.text
    assert {"README.md", "NEW.txt", "docs/guide.md"} <= {c["path"] for c in changes.json()}, changes.json()
    # Against HEAD: only the uncommitted work, with what happened to each file.
    since_head = alice.get(f"{API}/{cid}/git/changes", params={"ref": "HEAD"})
    by_path = {c["path"]: c["status"] for c in since_head.json()}
    assert by_path["README.md"] == "UPDATED" and by_path["NEW.txt"] == "ADDED", by_path
    problem(alice.get(f"{API}/{cid}/git/changes", params={"ref": "a b"}), 422)

    diff = alice.get(f"{API}/{cid}/git/diff", params={"path": "README.md", "ref": "HEAD"})
    assert diff.status_code == 200, diff.text
    # (the agent server gives each side without its final newline)
    assert diff.json()["original"].rstrip("\n") == "hello from main"
    assert diff.json()["modified"].rstrip("\n") == "hello from main\nchanged"
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b"):
        problem(alice.get(f"{API}/{cid}/git/diff", params={"path": bad}), 422)
    problem(alice.get(f"{API}/{cid}/git/diff"), 422)

    download = alice.get(f"{API}/{cid}/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert "attachment" in download.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    names = set(archive.namelist())
    assert {"widgets/README.md", "widgets/NEW.txt", "widgets/docs/guide.md"} <= names
    assert archive.read("widgets/README.md") == b"hello from main\nchanged\n"
    assert not [n for n in names if "leak" in n]  # links are left out, never followed
    assert b"server-canary" not in download.content
    assert int(download.headers["x-workspace-files"]) == len(names)

    # Another user sees none of it.
    for path in ("git/changes", "git/diff?path=README.md", "download"):
        problem(bob.get(f"{API}/{cid}/{path}"), 404)
    problem(alice.get(f"{API}/{'0' * 32}/git/changes"), 404)

    # Paused: git needs the agent server (409); the files are still there to download.
    assert alice.post(f"/api/v1/sandboxes/{sid}/pause").status_code == 200
    body = problem(alice.get(f"{API}/{cid}/git/changes"), 409)
    assert body["sandbox_status"] == "PAUSED"
    assert alice.get(f"{API}/{cid}/download").status_code == 200

    # Over the size limit: a 413 problem before any byte of the archive.
    server.stop()  # type: ignore[attr-defined]
    small: LiveServer = agent_server_factory(download_max_bytes=10)
    client = small.client(alice_key)
    body = problem(client.get(f"{API}/{cid}/download"), 413)
    assert body["limit"] == 10 and body["bytes"] > 10


def test_review_routes_need_a_key(server: LiveServer) -> None:
    for path in ("git/changes", "git/diff?path=a", "download"):
        problem(httpx.get(f"{server.base_url}{API}/{'1' * 32}/{path}"), 401)
