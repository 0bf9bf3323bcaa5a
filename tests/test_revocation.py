"""Keys are served from each process's memory, and a change made anywhere bites everywhere within 1 s.

Two `threadline serve` processes on one database (SQLite file and PostgreSQL), each with the keys in its
cache: a key revoked over HTTP through one, a key revoked by the CLI, a deleted user: the other process
refuses them within a second. Every check polls with a deadline that starts after the change committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sqlalchemy import delete

from tests.conftest import Database, refused_within
from tests.support.cli import run_cli
from tests.support.process_server import ProcessServer, with_database
from threadline.auth import service as auth
from threadline.auth.tables import users
from threadline.db.engine import Database as Engine

ME = "/api/v1/users/me"


def _user_with_keys(database: Database, name: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """A user made by a third party (this test's own engine), and `count` keys: (key id, key)."""

    async def make(db: Engine) -> tuple[str, list[tuple[str, str]]]:
        user = await auth.create_user(db, name)
        keys = [await auth.create_key(db, user.id, f"key {i}") for i in range(count)]
        return user.id, [(info.id, key) for info, key in keys]

    return with_database(database.url, database.schema, make)


def _status(server: ProcessServer, key: str) -> int:
    # A fresh connection each time: nothing of a previous answer is reused.
    with server.client(key) as client:
        return client.get(ME).status_code


def _served_by_both(servers: list[ProcessServer], key: str) -> None:
    for server in servers:
        for _ in range(3):  # cached now, and answered from the cache
            assert _status(server, key) == 200


def test_a_change_in_one_process_bites_in_the_other_within_a_second(
    process_server_factory: Callable[..., ProcessServer], database: Database
) -> None:
    a = process_server_factory()
    b = process_server_factory()
    user_id, keys = _user_with_keys(database, "revokee", 3)
    (http_id, http_key), (cli_id, cli_key), (_, last_key) = keys
    for key in (http_key, cli_key, last_key):
        _served_by_both([a, b], key)

    # 1. Revoked over HTTP through a: a refuses it before it answers, b within a second.
    with a.client(http_key) as client:
        assert client.delete(f"{ME}/api-keys/{http_id}").status_code == 204
    assert _status(a, http_key) == 401
    took = refused_within(1.0, lambda: _status(b, http_key) == 401, "b to refuse a key revoked through a")
    print(f"HTTP revocation seen by the other process after {took:.3f} s")
    assert _status(b, cli_key) == 200 and _status(a, cli_key) == 200  # the others still work

    # 2. Revoked by the CLI (a process of its own): both refuse it within a second.
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update({k: v for k, v in a.env.items() if k in ("THREADLINE_HOME", "THREADLINE_DATABASE_URL")})
    if database.schema:
        env["THREADLINE_DATABASE_SCHEMA"] = database.schema
    revoked = run_cli(env, "keys", "revoke", cli_id)
    assert revoked.returncode == 0, revoked.stderr
    refused_within(1.0, lambda: _status(a, cli_key) == 401 == _status(b, cli_key), "the CLI's revocation to bite")
    assert _status(a, last_key) == 200 and _status(b, last_key) == 200

    # 3. The user deleted (by hand, in SQL): its last key is refused everywhere within a second.
    async def delete_user(db: Engine) -> None:
        async with db.write() as conn:
            await conn.execute(delete(users).where(users.c.id == user_id))

    with_database(database.url, database.schema, delete_user)
    refused_within(1.0, lambda: _status(a, last_key) == 401 == _status(b, last_key), "a deleted user's key to go")

    # 4. A key made now works at once on both (a miss reads the database).
    _, ((_, new_key),) = _user_with_keys(database, "newcomer", 1)
    assert _status(a, new_key) == 200 and _status(b, new_key) == 200
