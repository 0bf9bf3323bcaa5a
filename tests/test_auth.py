"""API keys over HTTP and the administrative CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Database, LiveServer, refused_within
from tests.support.cli import run_cli
from threadline.auth import service as auth

ME = "/api/v1/users/me"


def test_both_header_forms(server: LiveServer) -> None:
    user, key = server.user("dora")
    with server.client() as client:
        assert client.get(ME, headers={"X-Access-Token": key}).json()["id"] == user.id
        assert client.get(ME, headers={"Authorization": f"Bearer {key}"}).json()["id"] == user.id


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Access-Token": "tl_" + "x" * 43},
        {"X-Access-Token": "not-a-key"},
        {"Authorization": "Bearer tl_nope"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-Access-Token": "tl_" + "y" * 5000},
    ],
)
def test_missing_or_unknown_key_is_401(server: LiveServer, headers: dict[str, str]) -> None:
    with server.client() as client:
        r = client.get(ME, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401


def test_revoked_key_is_401_and_other_keys_still_work(server: LiveServer) -> None:
    user, key1 = server.user("erin")
    info2, key2 = server.run(auth.create_key(server.ctx.db, user.id, "second"))
    keys = server.run(auth.list_keys(server.ctx.db))
    key1_id = next(k.id for k in keys if k.user_id == user.id and k.id != info2.id)
    server.run(auth.revoke_key(server.ctx.db, key1_id))
    with server.client() as client:
        assert client.get(ME, headers={"X-Access-Token": key1}).status_code == 401
        assert client.get(ME, headers={"X-Access-Token": key2}).status_code == 200


def test_a_key_revoked_over_http_is_refused_at_once_and_only_its_owner_may(server: LiveServer) -> None:
    user, key1 = server.user("hana")
    info2, key2 = server.run(auth.create_key(server.ctx.db, user.id, "second"))
    _, other = server.user("ivan")
    with server.client(key1) as client, server.client(key2) as second, server.client(other) as stranger:
        assert client.get(ME).status_code == 200 and second.get(ME).status_code == 200
        # Another user's key id is as missing as none; the key keeps working.
        r = stranger.delete(f"{ME}/api-keys/{info2.id}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
        assert second.get(ME).status_code == 200
        assert client.delete(f"{ME}/api-keys/{info2.id}").status_code == 204
        assert client.delete(f"{ME}/api-keys/{info2.id}").status_code == 204  # again: still revoked
        # The process that revoked it forgets it before it answers.
        r = second.get(ME)
        assert r.status_code == 401 and r.json()["status"] == 401
        assert client.get(ME).status_code == 200


def test_authentication_does_not_read_the_database_per_request(server: LiveServer) -> None:
    """The hot path: a known key is answered from memory; a change to keys or users is seen within 0.75 s."""
    from sqlalchemy import event

    user, key = server.user("jona")
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "api_keys" in statement or "FROM users" in statement:
            statements.append(statement)

    engine = server.ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        with server.client(key) as client:
            assert client.get(ME).status_code == 200  # the first request reads the key
            statements.clear()
            for _ in range(50):
                assert client.get(ME).status_code == 200
            assert statements == []
            # A key created now (another change) works at once: a miss reads the database.
            _, fresh = server.run(auth.create_key(server.ctx.db, user.id, "fresh"))
            assert client.get(ME, headers={"X-Access-Token": fresh}).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_unknown_keys_are_not_cached(server: LiveServer) -> None:
    cache = server.app.state.auth_cache
    with server.client() as client:
        for i in range(200):
            assert client.get(ME, headers={"X-Access-Token": f"tl_unknown{i}"}).status_code == 401
    assert len(cache) == 0


def test_keys_are_stored_only_as_hashes(server: LiveServer) -> None:
    from sqlalchemy import select

    from threadline.auth.tables import api_keys

    _, key = server.user("finn")

    async def stored() -> list[Any]:
        async with server.ctx.db.read() as conn:
            return list((await conn.execute(select(api_keys))).all())

    rows = server.run(stored())
    assert key.startswith("tl_") and len(key) >= 40
    for row in rows:
        assert key not in [str(v) for v in row]
        assert row.key_hash != key


def test_cli_users_and_keys(server_factory: Any, database: Database, tmp_path: Path) -> None:
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path / "home"), THREADLINE_DATABASE_URL=database.url)
    if database.schema:
        pytest.skip("the CLI works on a whole database; PostgreSQL is covered by the server tests")
    created = run_cli(env, "users", "create", "gina")
    assert created.returncode == 0, created.stderr
    assert run_cli(env, "users", "create", "gina").returncode == 1  # duplicate name: clean error
    made = run_cli(env, "keys", "create", "--user", "gina", "--label", "laptop")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("tl_")
    assert run_cli(env, "keys", "create", "--user", "nobody").returncode == 1
    # An 80-column terminal still shows whole key ids (the other columns wrap instead).
    listing = run_cli(dict(env, COLUMNS="80"), "keys", "list")
    assert "gina" in listing.stdout and "laptop" in listing.stdout and key not in listing.stdout

    server = server_factory()
    with server.client(key) as client:
        assert client.get(ME).json()["name"] == "gina"
        key_id = next(k.id for k in server.run(auth.list_keys(server.ctx.db)) if k.label == "laptop")
        assert key_id in listing.stdout
        assert run_cli(env, "keys", "revoke", key_id[:3]).returncode == 1  # too short to be a prefix
        # A unique beginning of the id is enough, even copied with the ellipsis of a cut column.
        revoked = run_cli(env, "keys", "revoke", key_id[:8] + "…")
        assert revoked.returncode == 0, revoked.stderr
        assert key_id in revoked.stderr
        # Served from memory, forgotten within a second of the CLI's commit.
        refused_within(1.0, lambda: client.get(ME).status_code == 401, "the CLI's revocation to bite")
    assert run_cli(env, "keys", "revoke", "0" * 32).returncode == 1


def test_serve_first_start_creates_admin_and_prints_key_once(tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path / "home"))
    env.pop("THREADLINE_DATABASE_URL", None)

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "threadline.cli.main", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            proc.kill()
            raise AssertionError("server did not become ready")
        return proc, ""

    proc, _ = start()
    try:
        assert (tmp_path / "home" / "threadline.db").exists()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    key = out.strip().splitlines()[0]
    assert key.startswith("tl_")
    proc, _ = start()
    try:
        me = httpx.get(f"http://127.0.0.1:{port}{ME}", headers={"X-Access-Token": key}).json()
        assert me["name"] == "admin" and me["is_admin"] is True
    finally:
        proc.terminate()
        out2, _ = proc.communicate(timeout=30)
    assert "tl_" not in out2  # shown once, on the first start only
