"""The user CLI (`threadline login`, `threadline conversations ...`) against a live Threadline."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.conftest import LiveServer
from threadline.cli.main import app
from threadline.client import Threadline
from threadline.events.service import store_events

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "threadline" / "config.json"
    monkeypatch.setenv("THREADLINE_CONFIG", str(path))
    monkeypatch.delenv("THREADLINE_URL", raising=False)
    monkeypatch.delenv("THREADLINE_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return path


@pytest.fixture
def cli(config_file: Path) -> Callable[..., Result]:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def session(server: LiveServer, cli: Callable[..., Result]) -> Iterator[tuple[Any, str, Threadline]]:
    """A user logged in with `threadline login`, and an SDK client of the same user to check with."""
    user, key = server.user("ada")
    result = cli("login", "--url", server.base_url, "--key", key)
    assert result.exit_code == 0, result.output
    with Threadline(server.base_url, key) as client:
        yield user, key, client


# -- login -------------------------------------------------------------------------------------------


def test_login_stores_url_and_key_readable_by_the_owner_only(
    server: LiveServer, cli: Callable[..., Result], config_file: Path
) -> None:
    _, key = server.user("ada")
    result = cli("login", input=f"{server.base_url}\n{key}\n")
    assert result.exit_code == 0, result.output
    assert "Logged in" in result.stderr and "ada" in result.stderr
    assert key not in result.output  # the key is asked for without echo
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_file.parent.stat().st_mode) == 0o700
    assert json.loads(config_file.read_text()) == {"url": server.base_url, "api_key": key}
    assert cli("conversations", "list").exit_code == 0

    # An existing file readable by others is replaced by one that is not.
    config_file.chmod(0o644)
    assert cli("login", "--url", server.base_url + "/", "--key", key).exit_code == 0
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert json.loads(config_file.read_text())["url"] == server.base_url

    # A key the server refuses is not stored.
    before = config_file.read_text()
    refused = cli("login", "--url", server.base_url, "--key", "tl_wrong")
    assert refused.exit_code == 1 and "unknown or revoked" in refused.stderr
    assert config_file.read_text() == before
    unreachable = cli("login", "--url", "http://127.0.0.1:9", "--key", key)
    assert unreachable.exit_code == 1 and "error:" in unreachable.stderr
    bad_url = cli("login", "--url", "ftp://example.com", "--key", key)
    assert bad_url.exit_code == 2 and "not an http" in bad_url.stderr
    from_stdin = cli("login", "--url", server.base_url, "--key", "-", input=key + "\n")
    assert from_stdin.exit_code == 0, from_stdin.output


def test_environment_overrides_the_config_file(
    server: LiveServer, cli: Callable[..., Result], config_file: Path
) -> None:
    user, key = server.user("ada")
    server.conversation(user.id, title="visible")
    assert cli("conversations", "list").exit_code == 2  # not logged in
    assert "threadline login" in cli("conversations", "list").stderr

    config_file.parent.mkdir(parents=True)
    config_file.write_text(json.dumps({"url": server.base_url, "api_key": "tl_revoked"}))
    assert cli("conversations", "list").exit_code == 1
    ok = cli("conversations", "list", env={"THREADLINE_API_KEY": key})
    assert ok.exit_code == 0 and "visible" in ok.stdout
    both = cli("conversations", "list", env={"THREADLINE_URL": server.base_url, "THREADLINE_API_KEY": key})
    assert both.exit_code == 0 and "visible" in both.stdout
    # The stored key is never sent to a server other than the stored one.
    elsewhere = cli("conversations", "list", env={"THREADLINE_URL": "http://127.0.0.1:9"})
    assert elsewhere.exit_code == 2 and "not logged in" in elsewhere.stderr

    config_file.write_text("{not json")
    broken = cli("conversations", "list")
    assert broken.exit_code == 2 and "not valid JSON" in broken.stderr
    assert cli("login", "--url", server.base_url, "--key", key).exit_code == 0  # replaces the broken file
    assert cli("conversations", "list").exit_code == 0


# -- list, get, update, delete -----------------------------------------------------------------------


def test_list_with_filters_table_json_and_ids(
    server: LiveServer, cli: Callable[..., Result], session: tuple[Any, str, Threadline]
) -> None:
    user, _, _ = session
    convs = [
        server.conversation(
            user.id,
            title=f"task {i}",
            selected_repository="octo/app" if i % 2 else "octo/web",
            tags={"team": "core" if i < 3 else "web"},
            trigger="gui" if i == 0 else "openhands_api",
            public=i == 4,
            created_at=T0 + dt.timedelta(hours=i),
        )
        for i in range(6)
    ]
    newest_first = [c["id"] for c in reversed(convs)]

    table = cli("conversations", "list")
    assert table.exit_code == 0, table.output
    assert all(c["id"] in table.stdout for c in convs) and "task 5" in table.stdout and "octo/app" in table.stdout
    assert table.stdout.index(convs[5]["id"]) < table.stdout.index(convs[0]["id"])

    as_json = cli("conversations", "list", "--json")
    assert [c["id"] for c in json.loads(as_json.stdout)] == newest_first

    def ids(*args: str) -> list[str]:
        result = cli("conversations", "list", "-q", *args)
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert ids() == newest_first
    assert ids("--limit", "2") == newest_first[:2]
    assert ids("--sort", "CREATED_AT", "-n", "0") == [c["id"] for c in convs]
    assert ids("--tag", "team=core") == newest_first[3:]
    assert ids("--tag", "team=core", "--repo", "octo/app") == [convs[1]["id"]]
    assert ids("--tag-key", "team", "--trigger", "gui") == [convs[0]["id"]]
    assert ids("--public") == [convs[4]["id"]]
    assert len(ids("--private")) == 5
    assert ids("--title", "TASK 3") == [convs[3]["id"]]
    assert ids("--since", "2025-03-01T04:00", "--until", "2025-03-01T05:00:00+00:00") == [convs[4]["id"]]

    nothing = cli("conversations", "list", "--tag", "team=nobody")
    assert nothing.exit_code == 0 and "No conversations" in nothing.stderr
    assert cli("conversations", "list", "--tag", "no-equals-sign").exit_code == 2
    assert cli("conversations", "list", "--provider", "sourceforge").exit_code == 2
    assert cli("conversations", "list", "--since", "yesterday").exit_code == 2
    assert cli("conversations", "list", "--status", "finished", "--min-cost", "0").exit_code == 0


def test_get_update_and_delete(
    server: LiveServer, cli: Callable[..., Result], session: tuple[Any, str, Threadline]
) -> None:
    user, _, client = session
    conv = server.conversation(
        user.id,
        title="Fix bug",
        selected_repository="octo/app",
        selected_branch="main",
        git_provider="github",
        tags={"team": "core", "env": "prod"},
    )
    cid = conv["id"]
    shown = cli("conversations", "get", cid)
    assert shown.exit_code == 0 and "Fix bug" in shown.stdout and "octo/app@main (github)" in shown.stdout
    assert json.loads(cli("conversations", "get", cid, "--json").stdout)["tags"] == {"team": "core", "env": "prod"}

    r = cli("conversations", "update", cid, "--title", "Fixed", "--tag", "stage=done", "--untag", "env", "--public")
    assert r.exit_code == 0, r.output
    c = client.conversations.get(cid)
    assert (c.title, c.public, c.tags) == ("Fixed", True, {"team": "core", "stage": "done"})
    assert (c.selected_repository, c.selected_branch) == ("octo/app", "main")  # not mentioned: kept

    r = cli("conversations", "update", cid, "--repo", "octo/other", "--branch", "dev", "--provider", "gitlab", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["selected_repository"] == "octo/other"
    assert cli("conversations", "update", cid, "--private", "--clear-title").exit_code == 0
    c = client.conversations.get(cid)
    assert c.public is False and c.title is None and c.selected_branch == "dev"
    assert cli("conversations", "update", cid, "--clear-repo").exit_code == 0
    c = client.conversations.get(cid)
    assert (c.selected_repository, c.selected_branch, c.git_provider) == (None, None, None)

    # Usage errors: exit 2, nothing sent.
    for args in (
        [],
        ["--repo", "a/b", "--clear-repo"],
        ["--title", "x", "--clear-title"],
        ["--tag", "k=v", "--untag", "k"],
        ["--tag", "novalue"],
    ):
        result = cli("conversations", "update", cid, *args)
        assert result.exit_code == 2, (args, result.output)
    # API errors: exit 1 with the problem's detail.
    invalid = cli("conversations", "update", cid, "--repo", "not a repository")
    assert invalid.exit_code == 1 and "selected_repository" in invalid.stderr and "422" in invalid.stderr
    stale = cli("conversations", "update", cid, "--title", "x", "--if-match", '"1-stale"')
    assert stale.exit_code == 1 and "If-Match" in stale.stderr
    missing = uuid.uuid4().hex
    gone = cli("conversations", "get", missing)
    assert gone.exit_code == 1 and f"conversation {missing} not found" in gone.stderr

    declined = cli("conversations", "delete", cid, input="n\n")
    assert declined.exit_code == 1 and "Nothing deleted" in declined.stderr
    assert client.conversations.get(cid).id == cid
    no_answer = cli("conversations", "delete", cid, input="")
    assert no_answer.exit_code == 1
    confirmed = cli("conversations", "delete", cid, input="y\n")
    assert confirmed.exit_code == 0 and f"Deleted {cid}" in confirmed.stderr
    assert cli("conversations", "get", cid).exit_code == 1

    other = server.conversation(user.id)["id"]
    assert cli("conversations", "delete", other, "--yes").exit_code == 0
    assert client.conversations.count() == 0
    assert cli("conversations", "delete", other, "-y").exit_code == 1


# -- send, events, costs, start ----------------------------------------------------------------------


def _store(server: LiveServer, conversation_id: str, events: list[dict[str, Any]]) -> None:
    async def run() -> None:
        async with server.ctx.db.write() as conn:
            await store_events(conn, conversation_id=conversation_id, items=events)

    server.run(run())


def _message(text: str, at: dt.datetime, source: str = "user") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "kind": "MessageEvent",
        "timestamp": at.isoformat(),
        "source": source,
        "llm_message": {"role": source, "content": [{"type": "text", "text": text}]},
    }


def test_send_and_events(server: LiveServer, cli: Callable[..., Result], session: tuple[Any, str, Threadline]) -> None:
    user, _, _ = session
    cid = server.conversation(user.id)["id"]
    sent = cli("conversations", "send", cid, "hello")
    assert sent.exit_code == 1 and "sandbox is MISSING" in sent.stderr and "410" in sent.stderr
    assert cli("conversations", "send", cid, "   ").exit_code == 2

    now = dt.datetime.now(dt.UTC)
    _store(
        server,
        cid,
        [
            _message("Fix the test", now - dt.timedelta(seconds=3)),
            {
                "id": str(uuid.uuid4()),
                "kind": "ActionEvent",
                "timestamp": (now - dt.timedelta(seconds=2)).isoformat(),
                "source": "agent",
                "action": {"kind": "FinishAction", "message": "done"},
            },
            {
                "id": str(uuid.uuid4()),
                "kind": "ConversationStateUpdateEvent",
                "timestamp": (now - dt.timedelta(seconds=1)).isoformat(),
                "source": "environment",
                "key": "execution_status",
                "value": "finished",
            },
        ],
    )
    shown = cli("conversations", "events", cid)
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.strip().splitlines()
    assert len(lines) == 3
    assert "user: Fix the test" in lines[0] and "FinishAction: done" in lines[1]
    assert "execution_status = finished" in lines[2]
    as_json = cli("conversations", "events", cid, "--json", "--kind", "MessageEvent")
    assert [json.loads(line)["kind"] for line in as_json.stdout.splitlines()] == ["MessageEvent"]

    # --follow prints what arrives later, each event once, and stops after --timeout.
    later = threading.Timer(1.0, _store, (server, cid, [_message("and one more thing", now)]))
    later.start()
    started = time.monotonic()
    followed = cli("conversations", "events", cid, "--follow", "--interval", "0.3", "--timeout", "3")
    later.join()
    assert followed.exit_code == 0, followed.output
    assert time.monotonic() - started >= 2.5
    out = followed.stdout.strip().splitlines()
    assert len(out) == 4 and "and one more thing" in out[3]
    assert cli("conversations", "events", uuid.uuid4().hex).exit_code == 1


def test_costs_grouped_by_repository_trigger_and_tag(
    server: LiveServer, cli: Callable[..., Result], session: tuple[Any, str, Threadline]
) -> None:
    user, _, _ = session

    def spent(cost: float, prompt: int, completion: int, **fields: Any) -> dict[str, Any]:
        metrics = {
            "has_metrics": True,
            "accumulated_cost": cost,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "metrics_model_name": "openai/x",
        }
        return server.conversation(user.id, **metrics, **fields)

    parent = spent(1.5, 1000, 100, selected_repository="octo/app", trigger="gui", tags={"team": "core"})
    spent(0.25, 200, 20, selected_repository="octo/app", trigger="gui", parent_conversation_id=parent["id"])
    spent(2.0, 3000, 300, selected_repository="octo/web", trigger="openhands_api", tags={"team": "web"})
    server.conversation(user.id, tags={"team": "core"})  # no metrics: counts, costs nothing

    def costs(*args: str) -> dict[str, Any]:
        result = cli("conversations", "costs", "--json", *args)
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    by_repo = costs()
    assert [(g["key"], g["conversations"], g["cost"]) for g in by_repo["groups"]] == [
        ("octo/web", 1, 2.0),
        ("octo/app", 2, 1.75),  # the sub-conversation counts
        ("(none)", 1, 0.0),
    ]
    assert by_repo["total"]["cost"] == 3.75 and by_repo["total"]["prompt_tokens"] == 4200
    assert by_repo["total"]["total_tokens"] == 4620
    assert costs("--top-level")["total"]["cost"] == 3.5
    by_tag = {g["key"]: g["cost"] for g in costs("--by", "tag:team")["groups"]}
    assert by_tag == {"web": 2.0, "core": 1.5, "(none)": 0.25}
    by_trigger = {g["key"]: g["conversations"] for g in costs("--by", "trigger")["groups"]}
    assert by_trigger == {"openhands_api": 1, "gui": 2, "(none)": 1}
    assert costs("--repo", "octo/app")["total"]["conversations"] == 2

    table = cli("conversations", "costs", "--by", "repository")
    assert table.exit_code == 0 and "octo/web" in table.stdout and "$3.7500" in table.stdout
    assert "4,200" in table.stdout and "total" in table.stdout
    assert cli("conversations", "costs", "--by", "colour").exit_code == 2
    assert cli("conversations", "costs", "--by", "tag:").exit_code == 2


def test_start_shows_progress_and_fails_with_the_task_detail(
    starter: Callable[..., LiveServer], cli: Callable[..., Result]
) -> None:
    # No agent runtime: the start gets as far as its sandbox, then ends in ERROR.
    server = starter()
    _, key = server.user("ada")
    env = {"THREADLINE_URL": server.base_url, "THREADLINE_API_KEY": key}
    result = cli("conversations", "start", "Say hello", "--tag", "team=cli", "--title", "t", env=env)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Start task ")
    assert "✓ WORKING" in lines[1] and "✗ ERROR" in result.stderr
    assert "failed:" in lines[-1] and lines[-1].startswith("error:")

    no_wait = cli("conversations", "start", "Again", "--no-wait", env=env)
    assert no_wait.exit_code == 0 and len(no_wait.stdout.strip()) == 32
    assert cli("conversations", "start", "x", "--tag", "bad", env=env).exit_code == 2


def test_the_installed_command_exit_codes(server: LiveServer, config_file: Path) -> None:
    """The real `threadline` executable, in a process of its own."""
    _, key = server.user("ada")
    command = [sys.executable, "-m", "threadline.cli.main"]
    env = {**os.environ, "THREADLINE_CONFIG": str(config_file)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)

    assert run("conversations", "list").returncode == 2
    login = run("login", "--url", server.base_url, "--key", key)
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert run("conversations", "list", "--json").stdout.strip() == "[]"
    missing = run("conversations", "get", uuid.uuid4().hex)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert run("conversations", "list", "--limit", "-1").returncode == 2
    assert run("keys", "--help").returncode == 0  # the admin commands are still there
