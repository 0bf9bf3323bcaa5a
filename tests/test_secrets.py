"""Secrets hygiene: keys are hashed or encrypted at rest and compared in constant time, and no secret a run
created shows up in Threadline's logs, in what a non-owner or the public can read, or in error details.

The full run (one real agent server, the fake LLM) makes every kind of secret there is: API keys of the
owner and of another user, the sandbox's session key, the server-wide and the user's own LLM API key,
a secret passed in the start request; it captures every log record of the process (the Threadline
server runs in it) at DEBUG, as the JSON lines `threadline serve` writes, and greps those, every answer
the other user and an anonymous caller can get (every probe of the isolation matrix, aimed at the real
conversation, sandbox, start task and events), the start-task details of a failed start, and the
database itself (the plaintext of no key is stored anywhere).

The owner legitimately reads the session key (`session_api_key` of a RUNNING conversation or sandbox):
that is the one exception, and only in those fields.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveServer, wait_for
from tests.test_agent_e2e import API, conversation, start_and_wait
from tests.test_isolation import MATRIX, SHARED, _fill, _insert_sandbox
from threadline.conversations.start import REDACTED
from threadline.observability.logging import make_handler
from threadline.schema import metadata


def _database_text(server: LiveServer) -> str:
    """Every row of every table, as text."""

    async def dump() -> str:
        parts = []
        async with server.ctx.db.read() as conn:
            for table in metadata.sorted_tables:
                for row in (await conn.execute(select(table))).all():
                    parts.append(f"{table.name}: {tuple(row)!r}")
        return "\n".join(parts)

    return server.run(dump())


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of this process, at DEBUG, formatted as `threadline serve` writes them."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    # Libraries that set their own level (SQLAlchemy sets WARN; the harness sets uvicorn's) are opened
    # up too: SQL statements with their parameters, HTTP client traces, everything.
    levels = {
        logger: logger.level
        for logger in [root, *logging.root.manager.loggerDict.values()]
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET
    }
    for logger in levels:
        logger.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for logger, level in levels.items():
            logger.setLevel(level)


def _found(secrets: dict[str, str], text: str) -> list[str]:
    return sorted(name for name, value in secrets.items() if value in text)


# -- at rest and in comparisons ---------------------------------------------------------------------


def test_keys_are_hashed_and_encrypted_at_rest_and_compared_in_constant_time(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, key = server.user("carol")
    sandbox_id, session_key = _insert_sandbox(server, user.id, "PAUSED")
    conv = server.conversation(user.id, sandbox_id=sandbox_id)
    llm_key = "sk-user-llm-" + uuid.uuid4().hex
    client = server.client(key)
    assert client.post("/api/v1/settings", json={"llm_api_key": llm_key}).status_code == 200

    stored = _database_text(server)
    assert _found({"api key": key, "session key": session_key, "llm key": llm_key}, stored) == []

    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    # A key the process has not seen (or has forgotten) is read from the database and its hash compared in
    # constant time; a key it knows is found by its SHA-256 digest in memory (auth/cache.py), which tells
    # nothing of the key.
    server.app.state.auth_cache.forget()
    assert client.get("/api/v1/users/me").status_code == 200
    assert compared, "the API key's hash was not compared with hmac.compare_digest"
    compared.clear()
    agent = httpx.Client(base_url=server.base_url, headers={"X-Session-API-Key": session_key})
    with agent:
        r = agent.post(f"/api/v1/webhooks/events/{conv['id']}", json=[])
    assert r.status_code == 200, r.text
    assert compared, "the session key's hash was not compared with hmac.compare_digest"


# -- a full run ---------------------------------------------------------------------------------------


@pytest.mark.agent
def test_no_secret_in_logs_error_details_or_what_others_read(
    agent_server_factory: Callable[..., LiveServer], fake_llm: Any, captured_logs: io.StringIO, tmp_path: Path
) -> None:
    server_llm_key = "sk-server-llm-" + uuid.uuid4().hex
    server: LiveServer = agent_server_factory(llm_api_key=server_llm_key)
    _, owner_key = server.user("owner")
    other_user, other_key = server.user("other")
    _, other_session_key = _insert_sandbox(server, other_user.id, "PAUSED")
    client, other, anonymous = server.client(owner_key), server.client(other_key), server.client()
    user_llm_key = "sk-user-llm-" + uuid.uuid4().hex
    user_secret = "user-secret-" + uuid.uuid4().hex
    r = client.post("/api/v1/settings", json={"llm_api_key": user_llm_key})
    assert r.status_code == 200 and user_llm_key not in r.text
    # A stored secret (POST /api/v1/secrets) that the agent really uses in a command.
    stored_secret = "stored-secret-" + uuid.uuid4().hex
    r = client.post("/api/v1/secrets", json={"name": "STORED_TOKEN", "value": stored_secret})
    assert r.status_code == 201 and stored_secret not in r.text
    fake_llm.enqueue_tool_call("terminal", {"command": 'echo "using $STORED_TOKEN and $MY_TOKEN"'})

    task = start_and_wait(
        client,
        {
            "initial_message": {"content": [{"type": "text", "text": "Say hello"}]},
            "public": True,
            "title": "shared run",
            "secrets": {"MY_TOKEN": user_secret},
        },
    )
    assert task["status"] == "READY", task["detail"]
    conv_id, sandbox_id = task["app_conversation_id"], task["sandbox_id"]
    # The agent got the user's own LLM key (so it is a secret that really travelled).
    wait_for(lambda: conversation(client, conv_id)["execution_status"] == "finished", timeout=90, what="finished")
    events = wait_for(
        lambda: client.get(f"/api/v1/conversation/{conv_id}/events/search").json()["items"], what="events stored"
    )
    assert "using " in json.dumps(events), "the agent's command with the stored secret did not run"
    session_key = conversation(client, conv_id)["session_api_key"]
    assert session_key
    secrets = {
        "owner API key": owner_key,
        "other API key": other_key,
        "other sandbox's session key": other_session_key,
        "session key": session_key,
        "server LLM key": server_llm_key,
        "user LLM key": user_llm_key,
        "user secret": user_secret,
        "stored secret": stored_secret,
    }

    # A start that fails (the repository does not exist) with secrets in the request: the task's detail
    # names the repository, and a secret that happens to equal part of it is redacted there.
    missing_repo = f"ghost-org/ghost-{uuid.uuid4().hex[:12]}"
    failing_secret = missing_repo.split("/")[1]
    failed = start_and_wait(
        client,
        {
            "sandbox_id": sandbox_id,
            "selected_repository": missing_repo,
            "secrets": {"A_TOKEN": failing_secret, "MY_TOKEN": user_secret},
        },
    )
    assert failed["status"] == "ERROR"
    detail = failed["detail"]
    assert "cloning" in detail and REDACTED in detail and failing_secret not in detail, detail
    assert _found(secrets, json.dumps(failed)) == []
    assert failed["request"]["secrets"] == {"A_TOKEN": REDACTED, "MY_TOKEN": REDACTED}

    # What the owner reads: no secret but the session key, and that only where it belongs.
    owner_reads = [
        client.get(f"{API}/{conv_id}"),
        client.get(f"{API}/search"),
        client.get(f"{API}/start-tasks/search"),
        client.get("/api/v1/sandboxes/search"),
        client.get("/api/v1/settings"),
        client.get("/api/v1/secrets"),
        client.get("/api/v1/secrets/STORED_TOKEN"),
        client.get(f"/api/v1/conversation/{conv_id}/events/search", params={"limit": 100}),
    ]
    for r in owner_reads:
        assert r.status_code == 200, r.text
        text = re.sub(r'"session_api_key":\s*"[^"]*"', '"session_api_key": "<owner may read>"', r.text)
        assert _found(secrets, text) == [], f"{r.request.url}: {_found(secrets, text)}"

    # What the other user, the agent of another sandbox and the public can get: every probe of the
    # isolation matrix, aimed at this run's conversation (public), sandbox, start task and events.
    ids = {
        "conv": conv_id,
        "public_conv": conv_id,
        "sandbox": sandbox_id,
        "task": task["id"],
        "event": events[0]["id"],
        "etag": client.get(f"{API}/{conv_id}").headers["ETag"],
        "page": "not-a-token",
    }
    answers: list[httpx.Response] = []
    for (method, _path), probes in MATRIX.items():
        for probe in probes:
            if (method, probe.url) == ("POST", "/api/v1/sandboxes"):
                continue  # would boot another agent server, about nothing of the owner's
            if probe.url.startswith(SHARED) and probe.url.endswith("/events/stream"):
                continue  # the conversation is public here: an open stream never ends (read below instead)
            who = {"bob": other, "anonymous": anonymous}.get(probe.who)
            if who is None:  # "bob_sandbox": the other user's sandbox calling back
                who = httpx.Client(base_url=server.base_url, headers={"X-Session-API-Key": other_session_key})
            answers.append(
                who.request(
                    probe.method,
                    _fill(probe.url, ids),
                    json=_fill(probe.json, ids),
                    params=_fill(probe.params, ids),
                    headers=_fill(probe.headers, ids),
                    timeout=120,
                )
            )
            if who not in (other, anonymous):
                who.close()
    # The public view of the shared conversation and all its events, page by page.
    shared = anonymous.get("/api/v1/shared-conversations", params={"ids": [conv_id]})
    assert shared.status_code == 200 and shared.json()[0] is not None
    answers.append(shared)
    page_id = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"page_id": page_id} if page_id else {})}
        page = anonymous.get(f"/api/v1/shared-conversations/{conv_id}/events/search", params=params)
        assert page.status_code == 200, page.text
        answers.append(page)
        page_id = page.json()["next_page_id"]
        if not page_id:
            break
    assert len(answers) > 60
    # The public event stream, as anyone gets it: its stored events, then it stays open (read up to them).
    stored = client.get(f"/api/v1/conversation/{conv_id}/events/count").json()
    streamed: list[str] = []
    with anonymous.stream("GET", f"{SHARED}/{conv_id}/events/stream", timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            streamed.append(line)
            if sum(1 for seen in streamed if seen.startswith("id:")) >= stored:
                break
    assert _found(secrets, "\n".join(streamed)) == [], _found(secrets, "\n".join(streamed))
    for r in answers:
        text = r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        assert _found(secrets, text) == [], f"{r.request.method} {r.request.url}: {_found(secrets, text)}"

    # Stored: hashes and ciphertexts only.
    assert _found(secrets, _database_text(server)) == []

    # Every log record of the whole run, shutdown (sandboxes stopped) included.
    server.stop()  # type: ignore[attr-defined]
    logs = captured_logs.getvalue()
    lines = logs.splitlines()
    assert len(lines) > 100, "the run logged almost nothing: is logging captured?"
    assert all(json.loads(line)["level"] for line in lines)
    assert any('"logger": "threadline.access"' in line for line in lines)
    leaked = {name: [line for line in lines if value in line][:3] for name, value in secrets.items() if value in logs}
    assert not leaked, f"secrets in the logs: {json.dumps(leaked, indent=1)[:3000]}"
