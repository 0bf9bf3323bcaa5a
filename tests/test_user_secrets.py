"""A user's secrets for their agents (issue 15 B3), private repositories cloned with a provider token from
them (B4) and a conversation's skills (B5): over HTTP, on SQLite and PostgreSQL, with the real agent server
in an isolated sandbox for what the agent does."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, wait_for
from tests.test_agent_e2e import API, conversation, start_and_wait
from tests.test_isolation import _insert_sandbox
from tests.test_sandbox_escape import sh
from tests.test_wire_strictness import problem
from threadline.secrets.models import MAX_SECRETS_PER_USER

SECRETS = "/api/v1/secrets"


def _message(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


# -- the API of the owner ----------------------------------------------------------------------------


def test_secrets_crud_values_write_only(server: LiveServer) -> None:
    _, key = server.user("alice")
    _, bob_key = server.user("bob")
    alice, bob = server.client(key), server.client(bob_key)
    value = "ghp_" + uuid.uuid4().hex

    created = alice.post(SECRETS, json={"name": "GITHUB_TOKEN", "value": value, "description": "for clones"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "GITHUB_TOKEN" and body["description"] == "for clones"
    assert body["created_at"] == body["updated_at"] and "value" not in body
    assert alice.post(SECRETS, json={"name": "NPM_TOKEN", "value": "npm-" + value}).status_code == 201

    listed = alice.get(SECRETS)
    assert listed.status_code == 200
    assert [s["name"] for s in listed.json()["secrets"]] == ["GITHUB_TOKEN", "NPM_TOKEN"]
    assert alice.get(f"{SECRETS}/GITHUB_TOKEN").json()["description"] == "for clones"

    # Duplicate names conflict; another user has their own namespace and sees nothing of alice's.
    problem(alice.post(SECRETS, json={"name": "GITHUB_TOKEN", "value": "x"}), 409)
    assert bob.get(SECRETS).json() == {"secrets": []}
    problem(bob.get(f"{SECRETS}/GITHUB_TOKEN"), 404)
    problem(bob.patch(f"{SECRETS}/GITHUB_TOKEN", json={"value": "stolen"}), 404)
    problem(bob.delete(f"{SECRETS}/GITHUB_TOKEN"), 404)
    assert bob.post(SECRETS, json={"name": "GITHUB_TOKEN", "value": "bobs"}).status_code == 201

    # PATCH: the value (write-only), the description (null clears), the name; updated_at moves.
    new_value = "ghp_new_" + uuid.uuid4().hex
    patched = alice.patch(f"{SECRETS}/GITHUB_TOKEN", json={"value": new_value, "description": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] is None and patched.json()["updated_at"] > body["updated_at"]
    assert new_value not in patched.text
    problem(alice.patch(f"{SECRETS}/GITHUB_TOKEN", json={"name": "NPM_TOKEN"}), 409)
    renamed = alice.patch(f"{SECRETS}/GITHUB_TOKEN", json={"name": "GH_TOKEN"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "GH_TOKEN"
    problem(alice.get(f"{SECRETS}/GITHUB_TOKEN"), 404)
    problem(alice.patch(f"{SECRETS}/NOPE", json={"value": "x"}), 404)

    assert alice.delete(f"{SECRETS}/GH_TOKEN").json() == {"success": True}
    problem(alice.delete(f"{SECRETS}/GH_TOKEN"), 404)
    assert [s["name"] for s in alice.get(SECRETS).json()["secrets"]] == ["NPM_TOKEN"]
    assert bob.get(f"{SECRETS}/GITHUB_TOKEN").status_code == 200  # bob's own is untouched

    # Not one answer carried a value; at rest there are only ciphertexts.
    async def stored() -> list[Any]:
        from sqlalchemy import select

        from threadline.secrets.tables import user_secrets

        async with server.ctx.db.read() as conn:
            return list((await conn.execute(select(user_secrets))).all())

    rows = server.run(stored())
    assert len(rows) == 2
    assert all(value not in repr(row) and new_value not in repr(row) and "npm-" not in repr(row) for row in rows)

    # No key: 401.
    for method, path in [("GET", SECRETS), ("POST", SECRETS), ("PATCH", f"{SECRETS}/A"), ("DELETE", f"{SECRETS}/A")]:
        problem(server.client().request(method, path, json={"name": "A", "value": "b"}), 401)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "lower-case-dash", "value": "v"},
        {"name": "1STARTS_WITH_DIGIT", "value": "v"},
        {"name": "", "value": "v"},
        {"name": "A" * 65, "value": "v"},
        {"name": "PATH", "value": "v"},
        {"name": "oh_session_api_keys_0", "value": "v"},
        {"name": "HTTPS_PROXY", "value": "v"},
        {"name": "LD_PRELOAD", "value": "v"},
        {"name": "OK", "value": ""},
        {"name": "OK", "value": 12345},
        {"name": "OK", "value": None},
        {"name": "OK"},
        {"name": "OK", "value": "v", "extra": 1},
        {"name": "OK", "value": "v", "description": "d" * 1001},
        {"name": "OK", "value": "x" * (64 * 1024 + 1)},
    ],
)
def test_bad_secrets_are_refused_without_echoing_the_value(server: LiveServer, body: dict[str, Any]) -> None:
    _, key = server.user("alice")
    client = server.client(key)
    answer = problem(client.post(SECRETS, json=body), 422)
    if isinstance(body.get("value"), str) and len(body["value"]) > 3:
        assert body["value"] not in str(answer)
    assert client.get(SECRETS).json() == {"secrets": []}


def test_a_patch_never_echoes_the_value_and_the_name_in_the_path_is_checked(server: LiveServer) -> None:
    _, key = server.user("alice")
    client = server.client(key)
    assert client.post(SECRETS, json={"name": "TOKEN", "value": "v"}).status_code == 201
    leaked = "leak-" + uuid.uuid4().hex
    answer = problem(client.patch(f"{SECRETS}/TOKEN", json={"value": [leaked]}), 422)
    assert leaked not in str(answer)
    problem(client.patch(f"{SECRETS}/TOKEN", content=b"{not json"), 422)
    problem(client.get(f"{SECRETS}/bad-name"), 422)
    problem(client.post(SECRETS, content=f'{{"name": "X", "value": "{leaked}", "x": NaN}}'.encode()), 422)


def test_at_most_a_hundred_secrets_per_user(server: LiveServer) -> None:
    _, key = server.user("alice")
    client = server.client(key)
    for i in range(MAX_SECRETS_PER_USER):
        assert client.post(SECRETS, json={"name": f"S{i}", "value": "v"}).status_code == 201
    assert "100" in problem(client.post(SECRETS, json={"name": "ONE_MORE", "value": "v"}), 409)["detail"]
    assert len(client.get(SECRETS).json()["secrets"]) == MAX_SECRETS_PER_USER


def test_the_sandbox_lookup_needs_the_key_of_that_running_sandbox(server: LiveServer) -> None:
    user, key = server.user("alice")
    bob, _ = server.user("bob")
    assert server.client(key).post(SECRETS, json={"name": "TOKEN", "value": "v"}).status_code == 201
    sandbox_id, session_key = _insert_sandbox(server, user.id, "PAUSED")
    other_sandbox, other_key = _insert_sandbox(server, bob.id, "PAUSED")
    lookup = f"/api/v1/sandboxes/{sandbox_id}/settings/secrets"
    anonymous = server.client()
    problem(anonymous.get(lookup), 401)
    problem(anonymous.get(f"{lookup}/TOKEN"), 401)
    problem(anonymous.get(f"{lookup}/TOKEN", headers={"X-Session-API-Key": "wrong"}), 401)
    # Another sandbox's key (upstream: 403; here 401, which tells no sandbox apart); an API key is no session key.
    problem(anonymous.get(f"{lookup}/TOKEN", headers={"X-Session-API-Key": other_key}), 401)
    problem(anonymous.get(f"{lookup}/TOKEN", headers={"X-Session-API-Key": key}), 401)
    # A sandbox that is not running has no business looking secrets up.
    problem(anonymous.get(f"{lookup}/TOKEN", headers={"X-Session-API-Key": session_key}), 409)
    problem(anonymous.get(lookup, headers={"X-Session-API-Key": session_key}), 409)
    assert other_sandbox != sandbox_id


# -- what the agent gets ------------------------------------------------------------------------------


@pytest.mark.agent
def test_the_agent_uses_stored_secrets_and_the_request_overrides_them(agent_server_factory: Any, fake_llm: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user("alice")
    _, bob_key = server.user("bob")
    client = server.client(key)
    stored, overridden, given = ("stored-" + uuid.uuid4().hex for _ in range(3))
    for name, value in (("DEPLOY_KEY", stored), ("OVERRIDE_ME", overridden)):
        assert client.post(SECRETS, json={"name": name, "value": value, "description": name}).status_code == 201
    assert server.client(bob_key).post(SECRETS, json={"name": "BOBS", "value": "bob-value"}).status_code == 201
    # The agent's first step uses both secrets in a command, as an agent told "deploy with $DEPLOY_KEY" does.
    fake_llm.enqueue_tool_call(
        "terminal",
        {
            "command": 'echo "$DEPLOY_KEY" > /tmp/deploy.txt; echo "$OVERRIDE_ME" > /tmp/override.txt; '
            'echo "k=$DEPLOY_KEY"'
        },
    )
    task = start_and_wait(
        client, {"initial_message": _message("deploy it"), "secrets": {"OVERRIDE_ME": given}}, timeout=180
    )
    assert task["status"] == "READY", task["detail"]
    cid, sid = task["app_conversation_id"], task["sandbox_id"]
    wait_for(lambda: conversation(client, cid)["execution_status"] == "finished", timeout=120, what="finished")
    code, out = sh(server, sid, "cat /tmp/deploy.txt /tmp/override.txt")
    assert code == 0 and out.split() == [stored, given], out

    # The command's output was masked in the events the agent server sent back; no value is stored anywhere.
    events = client.get(f"/api/v1/conversation/{cid}/events/search", params={"limit": 100}).json()["items"]
    text = str(events)
    assert "k=" in text, "the command's observation is not in the events"
    assert stored not in text and given not in text and overridden not in text

    # The agent server's own lookup: the names of the owner's secrets (not bob's), then a value read when
    # used: the current one, after an edit.
    session_key = conversation(client, cid)["session_api_key"]
    agent = server.client()
    agent.headers["X-Session-API-Key"] = session_key
    names = agent.get(f"/api/v1/sandboxes/{sid}/settings/secrets")
    assert names.status_code == 200, names.text
    assert names.json() == {
        "secrets": [
            {"name": "DEPLOY_KEY", "description": "DEPLOY_KEY"},
            {"name": "OVERRIDE_ME", "description": "OVERRIDE_ME"},
        ]
    }
    edited = "edited-" + uuid.uuid4().hex
    assert client.patch(f"{SECRETS}/DEPLOY_KEY", json={"value": edited}).status_code == 200
    value = agent.get(f"/api/v1/sandboxes/{sid}/settings/secrets/DEPLOY_KEY")
    assert value.status_code == 200 and value.text == edited
    assert value.headers["content-type"].startswith("text/plain")
    problem(agent.get(f"/api/v1/sandboxes/{sid}/settings/secrets/BOBS"), 404)
    # From inside the sandbox, the way the agent server does it: through the egress proxy's relay.
    code, out = sh(
        server,
        sid,
        f'curl -sS -H "X-Session-API-Key: {session_key}" '
        f"http://threadline.internal/api/v1/sandboxes/{sid}/settings/secrets/DEPLOY_KEY",
    )
    assert code == 0 and out == edited, out
    # A deleted secret is gone for the running agent too.
    assert client.delete(f"{SECRETS}/DEPLOY_KEY").status_code == 200
    problem(agent.get(f"/api/v1/sandboxes/{sid}/settings/secrets/DEPLOY_KEY"), 404)


# -- private repositories -----------------------------------------------------------------------------


class _TokenGitServer:
    """Git's dumb HTTP protocol over a directory of bare repositories, on 127.0.0.1, refusing every request
    without HTTP basic auth carrying the token (as a private repository on a git host does)."""

    def __init__(self, root: Path, token: str) -> None:
        self.token = token
        self.authorized: list[str] = []
        self.refused: list[str] = []
        self.seen_headers: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization") or ""
                outer.seen_headers.append(auth)
                expected = "Basic " + base64.b64encode(f"x-access-token:{outer.token}".encode()).decode()
                if auth != expected:
                    outer.refused.append(self.path)
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="private"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.authorized.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _TokenGitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _repository(root: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository `root/name.git` with one commit of `files` on main, ready for dumb HTTP."""
    env = dict(
        os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t"
    )
    work = root / "src" / name
    bare = root / f"{name}.git"
    work.mkdir(parents=True)
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("commit", "-qm", "init")
    bare.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    git("update-server-info", cwd=bare)
    return bare


@pytest.fixture
def token_git(tmp_path: Path) -> Iterator[_TokenGitServer]:
    root = tmp_path / "private-git"
    _repository(
        root,
        "acme/private",
        {
            "README.md": "private work\n",
            "AGENTS.md": "# Conventions\nRun the tests with make test.\n",
            ".openhands/skills/deploy.md": "---\nname: deploy\ntriggers:\n- deploy\n- release\n---\n"
            "Deploy with make deploy.\n",
        },
    )
    with _TokenGitServer(root, "tok-" + uuid.uuid4().hex) as served:
        yield served


@pytest.mark.agent
def test_a_private_repository_is_cloned_with_the_users_token_which_is_kept_out_of_everything(
    agent_server_factory: Any, token_git: _TokenGitServer
) -> None:
    server: LiveServer = agent_server_factory(git_url_template=f"http://127.0.0.1:{token_git.port}/{{repository}}.git")
    _, key = server.user("alice")
    client = server.client(key)
    token = token_git.token
    body = {
        "initial_message": _message("hello"),
        "selected_repository": "acme/private",
        "git_provider": "github",
    }

    # Without the token the clone is refused by the host, quickly and clearly (no prompt that hangs).
    failed = start_and_wait(client, body, timeout=180)
    assert failed["status"] == "ERROR" and "cloning acme/private failed" in failed["detail"], failed
    assert token_git.refused and not token_git.authorized

    assert client.post(SECRETS, json={"name": "GITHUB_TOKEN", "value": token}).status_code == 201
    task = start_and_wait(client, body, timeout=180)
    assert task["status"] == "READY", task["detail"]
    assert token_git.authorized
    cid, sid = task["app_conversation_id"], task["sandbox_id"]
    code, out = sh(server, sid, "cat private/README.md && git -C private config --list --show-origin && ls -a /tmp")
    assert code == 0 and "private work" in out, out
    assert token not in out, "the token is in the repository's git config or left in /tmp"
    assert "http://127.0.0.1" in out  # the remote is the plain URL

    # The token appears in nothing Threadline answers or stores in the clear, nor in what git keeps.
    wait_for(lambda: conversation(client, cid)["execution_status"] == "finished", timeout=120, what="finished")
    answers = [
        client.get(f"{API}/start-tasks", params={"ids": [task["id"]]}),
        client.get(f"{API}/start-tasks/search"),
        client.get(f"{API}/{cid}"),
        client.get(f"/api/v1/conversation/{cid}/events/search", params={"limit": 100}),
    ]
    for answer in answers:
        assert answer.status_code == 200 and token not in answer.text, answer.request.url
    # On disk: the sandbox's workspace, /tmp, home and the agent server's state all live under THREADLINE_HOME.
    leaked = subprocess.run(["grep", "-rl", "--", token, str(server.settings.home)], capture_output=True, text=True)
    assert leaked.stdout.strip() == "", f"the token is stored under THREADLINE_HOME: {leaked.stdout}"

    # A start request's own secret by the provider's name takes precedence over the stored one.
    token_git.token = "rotated-" + uuid.uuid4().hex
    assert client.patch(f"{SECRETS}/GITHUB_TOKEN", json={"value": "stale"}).status_code == 200
    again = start_and_wait(client, {**body, "secrets": {"GITHUB_TOKEN": token_git.token}}, timeout=180)
    assert again["status"] == "READY", again["detail"]
    assert token_git.token not in str(again)


@pytest.mark.agent
def test_the_skills_of_a_conversation(agent_server_factory: Any, token_git: _TokenGitServer) -> None:
    server: LiveServer = agent_server_factory(git_url_template=f"http://127.0.0.1:{token_git.port}/{{repository}}.git")
    _, key = server.user("alice")
    _, bob_key = server.user("bob")
    client = server.client(key)
    task = start_and_wait(
        client,
        {
            "initial_message": _message("hello"),
            "selected_repository": "acme/private",
            "secrets": {"GITHUB_TOKEN": token_git.token},
        },
        timeout=180,
    )
    assert task["status"] == "READY", task["detail"]
    cid, sid = task["app_conversation_id"], task["sandbox_id"]

    skills = client.get(f"{API}/{cid}/skills")
    assert skills.status_code == 200, skills.text
    by_name = {s["name"]: s for s in skills.json()["skills"]}
    assert by_name["deploy"]["type"] == "knowledge", by_name
    assert by_name["deploy"]["triggers"] == ["deploy", "release"]
    assert "make deploy" in by_name["deploy"]["content"]
    repo_skills = [s for s in by_name.values() if s["type"] == "repo"]
    assert any("make test" in s["content"] for s in repo_skills), by_name
    assert all(set(s) == {"name", "type", "content", "triggers", "description"} for s in by_name.values())

    problem(server.client(bob_key).get(f"{API}/{cid}/skills"), 404)
    problem(server.client().get(f"{API}/{cid}/skills"), 401)
    problem(client.get(f"{API}/{uuid.uuid4().hex}/skills"), 404)
    # A paused sandbox has no agent server to ask: 409.
    assert client.post(f"/api/v1/sandboxes/{sid}/pause").status_code == 200
    problem(client.get(f"{API}/{cid}/skills"), 409)


def test_skills_of_an_unknown_or_malformed_conversation(server: LiveServer) -> None:
    _, key = server.user("alice")
    client = server.client(key)
    problem(client.get(f"{API}/{uuid.uuid4().hex}/skills"), 404)
    problem(client.get(f"{API}/not-an-id/skills"), 404)  # a malformed id is an unknown one


# -- the SDK ------------------------------------------------------------------------------------------


def test_the_sdk_manages_secrets(server: LiveServer) -> None:
    import asyncio

    from threadline.client import AsyncThreadline, Threadline
    from threadline.client.errors import NotFound

    _, key = server.user("alice")
    with Threadline(server.base_url, key) as client:
        created = client.secrets.create("NPM_TOKEN", "npm-value", description="registry")
        assert (created.name, created.description) == ("NPM_TOKEN", "registry")
        assert [s.name for s in client.secrets.all()] == ["NPM_TOKEN"]
        updated = client.secrets.update("NPM_TOKEN", value="npm-new", description=None, new_name="NPM_AUTH")
        assert (updated.name, updated.description) == ("NPM_AUTH", None)
        assert client.secrets.get("NPM_AUTH").updated_at >= created.updated_at
        client.secrets.delete("NPM_AUTH")
        with pytest.raises(NotFound):
            client.secrets.get("NPM_AUTH")

    async def main() -> None:
        async with AsyncThreadline(server.base_url, key) as client:
            await client.secrets.create("GITHUB_TOKEN", "ghp")
            assert [s.name for s in await client.secrets.all()] == ["GITHUB_TOKEN"]
            await client.secrets.delete("GITHUB_TOKEN")
            assert await client.secrets.all() == []

    asyncio.run(main())
