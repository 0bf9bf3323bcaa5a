"""Crash safety (issue 7, point 2): SIGKILL a real `threadline serve` in the middle of a mixed write load
(PATCHes, starts of real agent servers, agent callbacks), restart it, and check that

- every write the client saw acknowledged is there (an unanswered one may or may not be),
- the database passes its integrity check (SQLite `PRAGMA integrity_check` and `foreign_key_check`;
  PostgreSQL `amcheck` over every index of the schema, heap included) and the tag index agrees,
- no sandbox process is left without a live record, and none is lost: the agent servers that were
  running (or booting) are re-attached and their conversations answer again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_URL, Database, wait_for
from tests.support.process_server import ProcessServer, agent_settings, insert_conversations, sandbox_processes
from tests.support.records import message_event, stats_event

API = "/api/v1/app-conversations"
HOOKS = "/api/v1/webhooks"
PATCHED_CONVERSATIONS = 24
PATCH_WORKERS = 3
STARTS = 2

pytestmark = pytest.mark.agent


@dataclass
class Load:
    """The client side of the load: what it sent, and what the server acknowledged."""

    server: ProcessServer
    api_key: str
    session_key: str
    callback_conversation: str
    patched: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    acked_titles: dict[str, str] = field(default_factory=dict)
    unanswered_titles: dict[str, str] = field(default_factory=dict)
    acked_events: set[str] = field(default_factory=set)
    acked_cost: float = 0.0
    acked_starts: list[str] = field(default_factory=list)
    patch_count: int = 0
    failures: list[str] = field(default_factory=list)
    transport_errors: list[float] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        share = len(self.patched) // PATCH_WORKERS
        for i in range(PATCH_WORKERS):
            self._spawn(self._patches, self.patched[i * share : (i + 1) * share])
        self._spawn(self._callbacks)
        self._spawn(self._starts)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=self._guard, args=(target, *args), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except httpx.TransportError:
            # The server is gone: this worker's last request stays unanswered.
            self.transport_errors.append(time.monotonic())

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a load worker hung"

    def _patches(self, mine: list[str]) -> None:
        n = 0
        with self.server.client(self.api_key) as client:
            while not self.stop.is_set():
                n += 1
                for cid in mine:
                    title = f"{cid[:8]} #{n}"
                    self.unanswered_titles[cid] = title
                    r = client.patch(f"{API}/{cid}", json={"title": title, "tags": {"seq": str(n), "w": "x" * 20}})
                    if r.status_code != 200:
                        self.failures.append(f"PATCH {r.status_code} {r.text}")
                        return
                    del self.unanswered_titles[cid]
                    self.acked_titles[cid] = title
                    with self.lock:
                        self.patch_count += 1

    def _callbacks(self) -> None:
        headers = {"X-Session-API-Key": self.session_key}
        url = f"{HOOKS}/events/{self.callback_conversation}"
        with httpx.Client(base_url=self.server.base_url, headers=headers, timeout=30) as agent:
            i = 0
            while not self.stop.is_set():
                i += 1
                at = dt.datetime(2026, 11, 29, 9, 0, 0) + dt.timedelta(milliseconds=i)
                cost = i / 64  # exact binary fractions: comparisons are exact
                batch = [message_event(f"crash test message {i}", at), stats_event(cost, at)]
                r = agent.post(url, json=batch)
                if r.status_code != 200:
                    self.failures.append(f"callback {r.status_code} {r.text}")
                    return
                self.acked_events.update(e["id"] for e in batch)
                self.acked_cost = cost

    def _starts(self) -> None:
        with self.server.client(self.api_key, timeout=60) as client:
            for _ in range(STARTS):
                if self.stop.is_set():
                    return
                r = client.post(API, json={})
                if r.status_code != 200:
                    self.failures.append(f"start {r.status_code} {r.text}")
                    return
                self.acked_starts.append(r.json()["id"])


def _start(client: httpx.Client) -> dict[str, Any]:
    r = client.post(API, json={})
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]

    def ready() -> Any:
        task = client.get(f"{API}/start-tasks", params={"ids": task_id}).json()[0]
        assert task["status"] != "ERROR", task
        return task if task["status"] == "READY" else None

    task: dict[str, Any] = wait_for(ready, timeout=180, what="the first conversation to be READY")
    return task


def _check_integrity(database: Database) -> None:
    if database.backend == "sqlite":
        path = make_url(database.url).database
        assert path
        with sqlite3.connect(path) as conn:  # replays the WAL the dead process left, as the next start will
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        return
    import asyncio

    import asyncpg

    async def check() -> int:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            except asyncpg.UniqueViolationError:  # another test created it at the same moment
                pass
            # Raises on any corruption; heapallindexed: every table row is found in the index too.
            checked: int = await conn.fetchval(
                """SELECT count(bt_index_check(c.oid, true)) FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_am a ON a.oid = c.relam WHERE n.nspname = $1 AND a.amname = 'btree'""",
                database.schema,
            )
            return checked
        finally:
            await conn.close()

    assert asyncio.run(check()) >= 10


def test_sigkill_mid_load_loses_no_acknowledged_write_and_no_sandbox(
    process_server_factory: Callable[..., ProcessServer],
    database: Database,
    agent_runtime: Path,
    fake_llm: Any,
) -> None:
    settings = agent_settings(
        agent_runtime,
        fake_llm.base_url,
        # A crashed process's sandboxes are adopted once its lease is stale: quickly, for the test.
        instance_heartbeat_seconds=0.5,
        instance_lease_ttl_seconds=3,
    )
    first = process_server_factory(**settings)
    key = first.admin_key
    assert key
    home = first.env["THREADLINE_HOME"]
    with first.client(key, timeout=60) as client:
        running = _start(client)
        user_id = client.get("/api/v1/users/me").json()["id"]
        sandbox = client.get("/api/v1/sandboxes", params={"id": running["sandbox_id"]}).json()[0]
    running_pids = set(sandbox_processes(home))
    patched = insert_conversations(database.url, database.schema, user_id, PATCHED_CONVERSATIONS, title="seed")
    load = Load(first, key, sandbox["session_api_key"], running["app_conversation_id"], patched)
    load.run()

    def mid_load() -> bool:
        assert not load.failures, load.failures
        booting = set(sandbox_processes(home)) - running_pids
        # Kill while a started agent server boots and every kind of write is flowing.
        return load.patch_count >= 150 and len(load.acked_events) >= 40 and bool(load.acked_starts) and bool(booting)

    wait_for(mid_load, timeout=120, interval=0.05, what="the load to be under way")
    killed_at = time.monotonic()
    first.kill()
    load.join()
    assert not load.failures, load.failures
    assert all(t >= killed_at for t in load.transport_errors), "the server failed requests before it was killed"
    survivors = sandbox_processes(home)
    assert set(survivors) >= running_pids, "the crash took agent servers with it"

    _check_integrity(database)

    # Agent servers call back to the same address: the restarted Threadline takes the same port.
    second = process_server_factory(port=first.port, **settings)
    with second.client(key, timeout=60) as client:
        # Every acknowledged PATCH is there; an unanswered one either landed whole or not at all.
        for cid in patched:
            conv = client.get(f"{API}/{cid}").json()
            allowed = {load.acked_titles.get(cid, "seed"), load.unanswered_titles.get(cid)}
            assert conv["title"] in allowed, (cid, conv["title"], allowed)
            if conv["title"] != "seed":
                seq = conv["title"].rsplit("#", 1)[1]
                assert conv["tags"] == {"seq": seq, "w": "x" * 20}, conv
                found = client.get(f"{API}/search", params={"tag": f"seq:{seq}", "limit": 100}).json()
                assert cid in {c["id"] for c in found["items"]}, "the tag index disagrees with the row"
        everything = client.get(f"{API}/search", params={"limit": 100}).json()["items"]
        assert set(patched) <= {c["id"] for c in everything}
        assert client.get(f"{API}/count").json() == len(everything)

        # Every acknowledged callback: its events are stored, its cost counted.
        cid0 = running["app_conversation_id"]
        stored = _event_ids(client, cid0)
        assert load.acked_events <= stored, f"{len(load.acked_events - stored)} acknowledged events lost"
        assert client.get(f"{API}/{cid0}").json()["metrics"]["accumulated_cost"] >= load.acked_cost

        # Every acknowledged start has its task; each ends (READY, or ERROR: interrupted) and none hangs.
        def ended() -> Any:
            tasks = client.get(f"{API}/start-tasks", params={"ids": load.acked_starts}).json()
            assert None not in tasks, "an acknowledged start task is lost"
            return all(t["status"] in ("READY", "ERROR") for t in tasks)

        wait_for(ended, timeout=120, what="the start tasks of the killed process to end")
        # An interrupted start's own sandbox is released, not left running for nobody.
        tasks = client.get(f"{API}/start-tasks", params={"ids": load.acked_starts}).json()
        abandoned = [t["sandbox_id"] for t in tasks if t["status"] == "ERROR" and t["sandbox_id"]]
        for sandbox_id in abandoned:
            wait_for(
                lambda sid=sandbox_id: (
                    client.get("/api/v1/sandboxes", params={"id": sid}).json() == [None]
                    and sid not in sandbox_processes(home).values()
                ),
                timeout=60,
                what=f"the sandbox {sandbox_id} of an interrupted start to be released",
            )

        # Sandboxes: every live record has its process, every process has a live record.
        def consistent() -> Any:
            processes = sandbox_processes(home)
            page = client.get("/api/v1/sandboxes/search", params={"limit": 100}).json()["items"]
            live = {s["id"] for s in page if s["status"] in ("STARTING", "RUNNING")}
            return live == set(processes.values()) and not any(s["status"] == "STARTING" for s in page)

        wait_for(consistent, timeout=180, what="sandbox records and processes to agree")
        # The agent server that ran before the crash is the same process, re-attached and answering.
        assert set(sandbox_processes(home)) >= running_pids
        conv0 = client.get(f"{API}/{cid0}").json()
        assert conv0["sandbox_status"] == "RUNNING", conv0
        assert conv0["execution_status"] is not None, conv0

        # And the server takes writes again.
        r = client.patch(f"{API}/{patched[0]}", json={"title": "after the crash"})
        assert r.status_code == 200, r.text
    # Nothing new was started after the crash: every process now running survived it.
    assert set(sandbox_processes(home)) <= set(survivors)


def _event_ids(client: httpx.Client, conversation_id: str) -> set[str]:
    ids: set[str] = set()
    page_id = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if page_id:
            params["page_id"] = page_id
        r = client.get(f"/api/v1/conversation/{conversation_id}/events/search", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        ids.update(e["id"] for e in body["items"])
        page_id = body["next_page_id"]
        if not page_id:
            return ids


def test_after_a_crash_a_dead_agent_server_reads_missing_and_filters_agree(
    process_server_factory: Callable[..., ProcessServer], agent_runtime: Path, fake_llm: Any
) -> None:
    """Issue 15 C5: Threadline and the agent server both die. From the first read after the restart (the dead
    process's lease still fresh: nothing depends on its expiry) the sandbox is MISSING everywhere, its
    conversation shows `execution_status: null`, and search, count and their filters say the same."""
    # A lease that outlives the test: the restarted process never adopts the dead one's sandboxes.
    settings = agent_settings(agent_runtime, fake_llm.base_url, instance_lease_ttl_seconds=3600)
    first = process_server_factory(**settings)
    key = first.admin_key
    assert key
    home = first.env["THREADLINE_HOME"]
    with first.client(key, timeout=60) as client:
        r = client.post(API, json={"initial_message": {"content": [{"type": "text", "text": "hi"}]}})
        assert r.status_code == 200, r.text
        task_id = r.json()["id"]
        task = wait_for(
            lambda: (
                (t := client.get(f"{API}/start-tasks", params={"ids": task_id}).json()[0])["status"]
                in ("READY", "ERROR")
                and t
            ),
            timeout=180,
            what="the conversation to be READY",
        )
        assert task["status"] == "READY", task
        cid, sid = task["app_conversation_id"], task["sandbox_id"]

        def finished() -> bool:
            shown = client.get(f"{API}/{cid}").json()["execution_status"]
            counted = client.get(f"{API}/count", params={"execution_status__eq": "finished"}).json()
            return shown == "finished" and counted == 1

        wait_for(finished, timeout=120, what="the agent to finish, and its status to be stored")

    first.kill()
    for pid in sandbox_processes(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not sandbox_processes(home), timeout=30, what="the agent server to be gone")

    second = process_server_factory(port=first.port, **settings)
    with second.client(key, timeout=60) as client:
        for _ in range(2):  # the first read and any later one agree
            assert client.get("/api/v1/sandboxes", params={"id": sid}).json()[0]["status"] == "MISSING"
            items = client.get(f"{API}/search").json()["items"]
            assert [(c["id"], c["sandbox_status"], c["execution_status"]) for c in items] == [(cid, "MISSING", None)]
            assert client.get(f"{API}/{cid}").json()["execution_status"] is None
            assert client.get(f"{API}/count").json() == 1
            for status in ("finished", "idle", "running"):
                filtered = {"execution_status__eq": status}
                assert client.get(f"{API}/count", params=filtered).json() == 0, status
                assert client.get(f"{API}/search", params=filtered).json()["items"] == [], status
        # Sending to it is refused as gone; resuming starts a new agent server on the same directory.
        r = client.post(f"{API}/{cid}/send-message", json={"content": [{"type": "text", "text": "x"}]})
        assert r.status_code == 410 and r.json()["sandbox_status"] == "MISSING", r.text
        assert client.post(f"/api/v1/sandboxes/{sid}/resume").status_code == 200
        wait_for(
            lambda: client.get("/api/v1/sandboxes", params={"id": sid}).json()[0]["status"] == "RUNNING",
            timeout=120,
            what="the resumed sandbox to run",
        )
