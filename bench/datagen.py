"""Bulk-load realistic benchmark data straight into Threadline's real schema (SQLAlchemy Core).

Migrations are applied first (threadline.db.migrate.upgrade_to_head), so the data lands in exactly the
tables and indexes the server uses. Users are made with threadline.auth.service.create_user and API keys
with create_key; conversations, their tag rows, events and sandboxes are inserted in large batches.

Who owns what:
  bench-w1  `w1` conversations (PATCHed at random by W1); one of them has `w3` events (W3)
  bench-w2  `w2` conversations, listed by W2 (first page and the page after `deep` items)
  bench-w5  `w5_sandboxes` * 5 conversations, spread over that many RUNNING sandboxes (W5 lists them,
            W1-live PATCHes them at random: `Dataset.w5_ids`)
  bench-w4  no data: W4 runs on a database of its own with only this user (`user_only`)
Every conversation's tags also have their rows in conversation_tags (with user_id), as the server keeps them.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, text

from threadline.auth import service as auth
from threadline.conversations.tables import conversation_tags, conversations
from threadline.db.engine import Database
from threadline.db.migrate import upgrade_to_head
from threadline.events.tables import events as events_table
from threadline.sandboxes.tables import sandboxes

CHUNK = 5_000
EVENT_CHUNK = 1_000

ORGS = ["acme", "globex", "initech", "umbrella", "hooli", "stark-industries", "wayne-enterprises", "openhands"]
REPOS = [
    "api-gateway",
    "billing-service",
    "web-frontend",
    "mobile-app",
    "data-pipeline",
    "infra",
    "auth-service",
    "search",
    "notifications",
    "design-system",
    "cli",
    "docs",
    "ml-platform",
    "payments",
    "monorepo",
]
BRANCH_PREFIXES = ["feature", "fix", "chore", "refactor", "hotfix", "deps"]
BRANCH_WORDS = ["login", "cache", "retry", "timeout", "pagination", "oauth", "flaky-test", "logging", "metrics", "i18n"]
VERBS = ["Fix", "Add", "Refactor", "Investigate", "Update", "Remove", "Speed up", "Document", "Migrate", "Test"]
OBJECTS = [
    "the flaky integration test",
    "retry logic in the HTTP client",
    "pagination on the search endpoint",
    "OAuth token refresh",
    "the CI pipeline cache",
    "N+1 queries in the dashboard",
    "dark mode in settings",
    "the billing webhook handler",
    "structured logging",
    "the Dockerfile",
    "a memory leak in the worker",
    "rate limiting for the public API",
    "type hints in utils",
    "the README quick start",
    "error messages",
]
PROVIDERS = [("github", 70), ("gitlab", 20), ("bitbucket", 7), ("forgejo", 3)]
TRIGGERS = [("gui", 55), ("openhands_api", 20), ("resolver", 10), ("slack", 8), ("suggested_task", 4), ("jira", 3)]
MODELS = ["anthropic/claude-sonnet-4-5", "openai/gpt-5", "anthropic/claude-opus-4", "litellm_proxy/devstral", None]
STATUSES = [("finished", 50), ("idle", 20), ("error", 8), ("stuck", 2), ("paused", 5), (None, 15)]
TAG_VALUES = {
    "team": ["core", "infra", "web", "mobile", "data", "security", "growth"],
    "env": ["prod", "staging", "dev"],
    "priority": ["p0", "p1", "p2", "p3"],
    "source": ["slack", "jira", "cli", "github"],
}
EVENT_KINDS = [
    ("ActionEvent", 35),
    ("ObservationEvent", 35),
    ("MessageEvent", 12),
    ("ConversationStateUpdateEvent", 14),
    ("AgentErrorEvent", 2),
    ("PauseEvent", 2),
]
COMMANDS = ["ls -la", "pytest -x tests/", "git status", "cat README.md", "grep -rn TODO src/", "npm test", "make lint"]


@dataclass
class Sizes:
    w1: int = 10_000
    w2: int = 100_000
    deep: int = 10_000
    w3: int = 10_000
    w5_sandboxes: int = 20
    w5_per_sandbox: int = 5
    background_events: int = 5_000


@dataclass
class Dataset:
    keys: dict[str, str] = field(default_factory=dict)  # workload -> API key
    users: dict[str, str] = field(default_factory=dict)  # workload -> user id
    w1_ids: list[str] = field(default_factory=list)
    w3_conversation_id: str = ""
    w5_sandbox_ids: list[str] = field(default_factory=list)
    w5_ids: list[str] = field(default_factory=list)  # conversations on the RUNNING sandboxes (W5, W1-live)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _weighted(rng: random.Random, choices: Sequence[tuple[Any, int]]) -> Any:
    values, weights = zip(*choices, strict=True)
    return rng.choices(values, weights)[0]


def _filter(table: Table, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop keys the table no longer has, so a column removed upstream does not break the harness."""
    names = set(table.c.keys())
    if rows and not set(rows[0]) <= names:
        return [{k: v for k, v in r.items() if k in names} for r in rows]
    return rows


def _tags(rng: random.Random) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key in rng.sample(list(TAG_VALUES), rng.choice([0, 1, 1, 2, 2, 3, 4])):
        tags[key] = rng.choice(TAG_VALUES[key])
    if rng.random() < 0.3:
        tags["ticket"] = f"ENG-{rng.randint(100, 9999)}"
    return tags


def conversation_row(
    rng: random.Random, user_id: str, created_at: datetime, now: datetime, *, sandbox_id: str | None = None
) -> dict[str, Any]:
    repo = f"{rng.choice(ORGS)}/{rng.choice(REPOS)}" if rng.random() < 0.9 else None
    has_metrics = rng.random() < 0.7
    prompt = rng.randint(2_000, 400_000) if has_metrics else 0
    completion = rng.randint(200, 40_000) if has_metrics else 0
    model = rng.choice(MODELS)
    status = _weighted(rng, STATUSES)
    updated_at = min(created_at + timedelta(seconds=rng.randint(5, 3 * 86_400)), now)
    return {
        "id": uuid.UUID(int=rng.getrandbits(128), version=4).hex,
        "user_id": user_id,
        "sandbox_id": sandbox_id or uuid.UUID(int=rng.getrandbits(128), version=4).hex,
        "selected_repository": repo,
        "selected_branch": (
            rng.choice(["main", "main", "develop", f"{rng.choice(BRANCH_PREFIXES)}/{rng.choice(BRANCH_WORDS)}"])
            if repo
            else None
        ),
        "git_provider": _weighted(rng, PROVIDERS) if repo else None,
        "title": f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}" if rng.random() < 0.95 else None,
        "title_set_by_user": rng.random() < 0.2,
        "trigger": _weighted(rng, TRIGGERS),
        "pr_number": [rng.randint(1, 20_000)] if repo and rng.random() < 0.25 else [],
        "llm_model": model,
        "agent_kind": "openhands",
        "parent_conversation_id": None,
        "public": rng.choice([None, None, False, True]),
        "tags": _tags(rng),
        "execution_status": status,
        "execution_status_at": updated_at if status else None,
        "metrics_model_name": model if has_metrics and model else "default",
        "accumulated_cost": round(prompt * 3e-6 + completion * 15e-6, 6),
        "max_budget_per_task": rng.choice([None, None, 5.0, 10.0]),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cache_read_tokens": prompt // 2 if has_metrics else 0,
        "cache_write_tokens": prompt // 10 if has_metrics else 0,
        "reasoning_tokens": completion // 4 if has_metrics else 0,
        "context_window": 200_000 if has_metrics else 0,
        "per_turn_token": rng.randint(1_000, 30_000) if has_metrics else 0,
        "response_id": f"resp_{rng.getrandbits(64):016x}" if has_metrics else "",
        "has_metrics": has_metrics,
        "version": rng.randint(1, 12),
        "created_at": created_at,
        "updated_at": updated_at,
    }


def tag_rows(conv: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"conversation_id": conv["id"], "key": k, "value": v, "user_id": conv["user_id"]}
        for k, v in conv["tags"].items()
    ]


def conversation_rows(
    rng: random.Random, user_id: str, n: int, now: datetime, *, sub_share: float = 0.03
) -> Iterator[list[dict[str, Any]]]:
    """n conversations created over the past year (oldest first), in chunks; a few are sub-conversations."""
    span = timedelta(days=365).total_seconds()
    start = now - timedelta(days=365)
    recent: list[str] = []
    chunk: list[dict[str, Any]] = []
    for i in range(n):
        created = start + timedelta(seconds=span * i / max(n, 1) + rng.random() * span / max(n, 1) * 0.5)
        row = conversation_row(rng, user_id, created, now)
        if recent and rng.random() < sub_share:
            row["parent_conversation_id"] = rng.choice(recent)
            row["trigger"] = "openhands_api"
        else:
            recent.append(row["id"])
            if len(recent) > 200:
                recent.pop(0)
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def event_payload(rng: random.Random, kind: str, event_id: str, ts: datetime) -> dict[str, Any]:
    base: dict[str, Any] = {"id": event_id, "kind": kind, "timestamp": ts.replace(tzinfo=None).isoformat()}
    if kind == "ActionEvent":
        command = rng.choice(COMMANDS)
        base.update(
            source="agent",
            thought=[{"type": "text", "text": f"I should run `{command}` to see what is going on."}],
            action={"kind": "ExecuteBashAction", "command": command, "is_input": False, "timeout": None},
            tool_name="execute_bash",
            tool_call_id=f"toolu_{rng.getrandbits(64):016x}",
            llm_response_id=f"resp_{rng.getrandbits(64):016x}",
            security_risk="LOW",
        )
    elif kind == "ObservationEvent":
        lines = "\n".join(f"line {j}: {'x' * rng.randint(10, 90)}" for j in range(rng.randint(1, 25)))
        base.update(
            source="environment",
            tool_name="execute_bash",
            tool_call_id=f"toolu_{rng.getrandbits(64):016x}",
            observation={
                "kind": "ExecuteBashObservation",
                "content": [{"type": "text", "text": lines}],
                "exit_code": 0,
            },
            action_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
    elif kind == "MessageEvent":
        base.update(
            source=rng.choice(["user", "agent"]),
            llm_message={"role": "assistant", "content": [{"type": "text", "text": "Done: " + rng.choice(OBJECTS)}]},
            activated_skills=[],
        )
    elif kind == "ConversationStateUpdateEvent":
        base.update(source="environment", key="execution_status", value=rng.choice(["running", "idle", "finished"]))
    else:
        base.update(source="agent", error="tool call failed" if kind == "AgentErrorEvent" else None)
    return base


def event_rows(rng: random.Random, conversation_id: str, n: int, start: datetime) -> Iterator[list[dict[str, Any]]]:
    ts = start
    chunk: list[dict[str, Any]] = []
    for _ in range(n):
        ts += timedelta(milliseconds=rng.randint(50, 5_000))
        kind = _weighted(rng, EVENT_KINDS)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        chunk.append(
            {
                "conversation_id": conversation_id,
                "event_id": event_id,
                "kind": kind,
                "timestamp": ts,
                "payload": event_payload(rng, kind, event_id, ts),
            }
        )
        if len(chunk) >= EVENT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _insert(db: Database, table: Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        async with db.write() as conn:
            await conn.execute(table.insert(), _filter(table, rows))


async def _insert_conversations(db: Database, chunks: Iterator[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Insert conversations and their tag rows; returns a light copy (id, created_at, tags) of each."""
    kept: list[dict[str, Any]] = []
    for chunk in chunks:
        async with db.write() as conn:
            await conn.execute(conversations.insert(), _filter(conversations, chunk))
            tags = [t for c in chunk for t in tag_rows(c)]
            if tags:
                await conn.execute(conversation_tags.insert(), _filter(conversation_tags, tags))
        kept.extend({"id": c["id"], "created_at": c["created_at"], "sandbox_id": c["sandbox_id"]} for c in chunk)
    return kept


_BULK_TABLES = ("conversations", "conversation_tags", "events")


async def _secondary_indexes(db: Database) -> list[tuple[str, str]]:
    """(name, exact DDL) of the indexes on the bulk-loaded tables that no constraint (primary key,
    unique) owns, as the migrations created them."""
    names = ", ".join(f"'{t}'" for t in _BULK_TABLES)
    if db.is_sqlite:
        query = (
            f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN ({names})"
        )
    else:
        query = (
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
            f"AND i.tablename IN ({names}) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.connamespace = "
            "(SELECT oid FROM pg_namespace WHERE nspname = current_schema()))"
        )
    async with db.read() as conn:
        return [(r[0], r[1]) for r in (await conn.execute(text(query))).all()]


async def _drop_indexes(db: Database, indexes: list[tuple[str, str]]) -> None:
    async with db.write() as conn:
        for name, _ in indexes:
            await conn.execute(text(f'DROP INDEX "{name}"'))


async def _create_indexes(db: Database, indexes: list[tuple[str, str]]) -> None:
    async with db.write() as conn:
        for _, ddl in indexes:
            await conn.execute(text(ddl))


async def _user_with_key(db: Database, name: str) -> tuple[str, str]:
    user = await auth.create_user(db, name)
    _, key = await auth.create_key(db, user.id, label="bench")
    return user.id, key


async def user_only(url: str, name: str) -> tuple[str, str]:
    """Migrate the (empty) database at `url` and make one user with an API key: W4 needs nothing else
    (a start reads the user, counts their sandboxes and writes its own rows). Returns (user id, key)."""
    db = Database(url)
    try:
        await upgrade_to_head(db)
        return await _user_with_key(db, name)
    finally:
        await db.dispose()


async def load(
    url: str,
    sizes: Sizes,
    *,
    seed: int = 6,
    w5_agents: Sequence[dict[str, Any]] = (),
    session_box: Any = None,
    work_root: str = "/tmp",
    log: Any = print,
) -> Dataset:
    """Migrate the (empty) database at `url` and fill it. `w5_agents`: running fake agent servers
    ({"sandbox_id", "pid", "port", "session_key"}) that get RUNNING sandbox records; `session_box` is the
    server's SecretBox, to store their session keys the way the server does."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    data = Dataset()
    db = Database(url)
    try:
        t0 = time.monotonic()
        await upgrade_to_head(db)
        data.seconds["migrate"] = time.monotonic() - t0

        for name in ("w1", "w2", "w5"):
            data.users[name], data.keys[name] = await _user_with_key(db, f"bench-{name}")

        # Bulk load without the secondary indexes, then build them once with the migrations' own DDL:
        # several times faster than maintaining a dozen indexes row by row, and the result is the same.
        indexes = await _secondary_indexes(db)
        await _drop_indexes(db, indexes)

        t0 = time.monotonic()
        w1 = await _insert_conversations(db, conversation_rows(rng, data.users["w1"], sizes.w1, now, sub_share=0))
        data.w1_ids = [c["id"] for c in w1]
        data.seconds["w1_conversations"] = time.monotonic() - t0
        log(f"  {len(w1)} W1 conversations in {data.seconds['w1_conversations']:.1f}s")

        t0 = time.monotonic()
        w2 = await _insert_conversations(db, conversation_rows(rng, data.users["w2"], sizes.w2, now))
        data.seconds["w2_conversations"] = time.monotonic() - t0
        log(f"  {len(w2)} W2 conversations in {data.seconds['w2_conversations']:.1f}s")

        # W3: one conversation of the W1 user with `w3` events; a few others with some events as background.
        t0 = time.monotonic()
        target = w1[len(w1) // 2]
        data.w3_conversation_id = target["id"]
        events = 0
        for chunk in event_rows(rng, target["id"], sizes.w3, target["created_at"]):
            await _insert(db, events_table, chunk)
            events += len(chunk)
        others = [c for c in rng.sample(w1, min(50, len(w1))) if c["id"] != target["id"]]
        per_other = sizes.background_events // max(len(others), 1)
        for conv in others:
            for chunk in event_rows(rng, conv["id"], per_other, conv["created_at"]):
                await _insert(db, events_table, chunk)
                events += len(chunk)
        data.seconds["events"] = time.monotonic() - t0
        log(f"  {events} events ({sizes.w3} in the W3 conversation) in {data.seconds['events']:.1f}s")

        # W5: RUNNING sandboxes (fake agent servers) and conversations spread over them.
        if w5_agents:
            sandbox_rows, convs = [], []
            for agent in w5_agents:
                sandbox_rows.append(
                    {
                        "id": agent["sandbox_id"],
                        "user_id": data.users["w5"],
                        "spec_id": "process",
                        "backend": "process",
                        "status": "RUNNING",
                        "detail": None,
                        "pid": agent["pid"],
                        "port": agent["port"],
                        "url": f"http://127.0.0.1:{agent['port']}",
                        "work_dir": f"{work_root}/{agent['sandbox_id']}",
                        "session_key_hash": auth.hash_key(agent["session_key"]),
                        "session_key_enc": session_box.encrypt(agent["session_key"]),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for _ in range(sizes.w5_per_sandbox):
                    created = now - timedelta(seconds=rng.randint(60, 86_400))
                    convs.append(conversation_row(rng, data.users["w5"], created, now, sandbox_id=agent["sandbox_id"]))
            await _insert(db, sandboxes, sandbox_rows)
            convs.sort(key=lambda r: r["created_at"])
            w5 = await _insert_conversations(db, iter([convs]))
            data.w5_ids = [c["id"] for c in w5]
            data.w5_sandbox_ids = [a["sandbox_id"] for a in w5_agents]

        t0 = time.monotonic()
        await _create_indexes(db, indexes)
        data.seconds["indexes"] = time.monotonic() - t0
        log(f"  {len(indexes)} secondary indexes rebuilt in {data.seconds['indexes']:.1f}s")

        t0 = time.monotonic()
        async with db.write() as conn:
            # PostgreSQL's autovacuum would do this within a minute of a bulk load; do it now so the
            # plans are the ones a settled server uses. SQLite never analyses by itself: left as users get it.
            if not db.is_sqlite:
                await conn.execute(text("ANALYZE"))
        async with db.read() as conn:
            for name in ("conversations", "conversation_tags", "events", "sandboxes"):
                data.counts[name] = int((await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one())
        data.seconds["analyze_count"] = time.monotonic() - t0
    finally:
        await db.dispose()
    return data
