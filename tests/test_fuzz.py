"""Schemathesis against our own /openapi.json, every operation, on a live server (SQLite is enough).

Two passes over every operation in the published document, under fixed Hypothesis settings
(derandomized, no example database, a bounded number of examples), so a run is reproducible and takes
about a minute:

1. random: with a valid API key and without, positive data (what the schema allows) and negative data
   (what it does not); ids in paths are random, so this mostly exercises validation and authentication;
2. known resources: path ids and batch `ids` fixed to records that exist (a conversation with events, a
   sandbox, a start task), with the API key, and with the sandbox's session key for the webhooks, so the
   handlers behind validation get fuzzed bodies and parameters too. DELETEs run last.

Every response must:

- not be a 5xx;
- match the status codes, content types, headers and body schemas the document declares (errors are
  declared as `application/problem+json` `Problem`/`ValidationProblem` on every operation: api/openapi.py);
- be `application/problem+json`, with `status` equal to the status code, whenever it is a 4xx.

Starting things is fuzzed like everything else (POST app-conversations, stream-start, POST sandboxes,
resume): the server runs with a runtime directory that does not exist, so every sandbox start fails at
once and is recorded ERROR, and nothing is left running however many examples are generated.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer
from threadline.conversations.tables import start_tasks
from threadline.core.ids import new_id

# Examples per operation and per (credentials, generation mode) combination; raise it for a deeper
# local run (THREADLINE_FUZZ_EXAMPLES=200), CI keeps the default.
EXAMPLES = int(os.environ.get("THREADLINE_FUZZ_EXAMPLES", "10"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
_FRAMING = {"transfer-encoding", "content-length", "host", "connection", "upgrade", "te", "trailer"}


def _no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    return None


def _problem_json_on_4xx(ctx: Any, response: Any, case: Any) -> bool | None:
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), (
            f"{response.status_code} answered as {content_type!r}, not application/problem+json"
        )
        body = response.json()
        assert body["status"] == response.status_code and body["type"] and body["title"], body
    return None


CHECKS = [
    _no_server_error,
    _problem_json_on_4xx,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    credentials: dict[str, str],
    checks: list[Callable[..., bool | None]] = CHECKS,
    examples: int = EXAMPLES,
    **fixed: dict[str, Any],
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        print_blob=False,
    )
    def run(case: Any) -> None:
        # Generated framing headers (an empty Transfer-Encoding, say) make a request the HTTP server itself
        # refuses with its own text/plain 400 before any application sees it: not the API under test.
        assume(not _FRAMING & {name.lower() for name in (case.headers or {})})
        case.call_and_validate(base_url=base_url, headers=credentials, checks=checks)

    run()


class Seeded:
    """Records of the fuzzing user that exist, so fixed ids reach the handlers."""

    def __init__(self, server: LiveServer) -> None:
        self.user, self.key = server.user("fuzzer")
        self.sandbox_id, self.session_key = server.sandbox(self.user.id, "PAUSED")
        self.task_id = new_id()
        now = dt.datetime.now(dt.UTC)
        conv = server.conversation(
            self.user.id, sandbox_id=self.sandbox_id, title="seed", tags={"team": "core"}, public=True
        )
        self.conversation_id: str = conv["id"]

        async def insert_task() -> None:
            async with server.ctx.db.write() as conn:
                await conn.execute(
                    start_tasks.insert().values(
                        id=self.task_id,
                        user_id=self.user.id,
                        status="READY",
                        app_conversation_id=self.conversation_id,
                        sandbox_id=self.sandbox_id,
                        request={},
                        history=[{"status": "READY", "at": now.isoformat()}],
                        created_at=now,
                        updated_at=now,
                    )
                )

        server.run(insert_task())
        event = {
            "id": str(uuid.uuid4()),
            "timestamp": now.replace(tzinfo=None).isoformat(),
            "source": "agent",
            "kind": "MessageEvent",
            "llm_message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        }
        self.event_id = event["id"]
        with server.client(headers={"X-Session-API-Key": self.session_key}) as agent:
            r = agent.post(f"/api/v1/webhooks/events/{self.conversation_id}", json=[event])
            assert r.status_code == 200, r.text

    def fixed(self, operation: Any) -> dict[str, dict[str, Any]]:
        """The parameters of `operation` to pin to these records."""
        fixed: dict[str, dict[str, Any]] = {}
        path_ids = {"conversation_id": self.conversation_id, "sandbox_id": self.sandbox_id}
        path = {name: path_ids[name] for name in re.findall(r"{(\w+)}", operation.path) if name in path_ids}
        if path:
            fixed["path_parameters"] = path
        query_names = {p.name for p in operation.query}
        if operation.path == "/api/v1/app-conversations/start-tasks":
            fixed["query"] = {"ids": [self.task_id]}
        elif "ids" in query_names:
            fixed["query"] = {"ids": [self.conversation_id]}
        elif operation.path.startswith("/api/v1/sandboxes") and "id" in query_names:
            fixed["query"] = {"id": [self.sandbox_id]}
        elif operation.path.endswith("/events") and "id" in query_names:
            fixed["query"] = {"id": [self.event_id]}
        if operation.path.startswith("/api/v1/webhooks") or "/settings/secrets" in operation.path:
            fixed["headers"] = {"X-Session-API-Key": self.session_key}
        return fixed


@pytest.mark.timeout(900)  # about a minute here; generous for a loaded CI machine
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_fuzz_every_operation(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(runtime_dir=tmp_path / "no-runtime", llm_model="openai/fuzz-model")
    seeded = Seeded(server)
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # DELETEs last: the known-resources pass deletes the seeded records.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    assert len(operations) >= 30, [op.label for op in operations]
    with_key = {"X-Access-Token": seeded.key}
    failures: list[str] = []
    started = time.monotonic()

    def attempt(label: str, operation: Any, mode: GenerationMode, credentials: dict[str, str], **fixed: Any) -> None:
        try:
            _fuzz(operation, mode, server.base_url, credentials, **fixed)
        except Unsatisfiable:
            # An operation without parameters or body has no negative data: nothing to fuzz.
            assert mode is GenerationMode.NEGATIVE, label
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup is the latter
            failures.append(f"{label}: {exc}"[:4000])

    for operation in operations:
        for credentials, who in ((with_key, "key"), ({}, "anonymous")):
            for mode in MODES:
                attempt(f"{operation.label} [random, {mode.value}, {who}]", operation, mode, credentials)
    for operation in operations:
        if operation.path.endswith("/stream"):
            # An event stream of a real record never ends by itself: its validation and authentication are
            # fuzzed in the random pass; what it sends is tested in tests/test_event_stream.py.
            continue
        fixed = seeded.fixed(operation)
        if fixed:
            for mode in MODES:
                attempt(f"{operation.label} [known ids, {mode.value}]", operation, mode, with_key, **fixed)
    elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} failing runs ({elapsed:.0f} s):\n\n" + "\n\n".join(failures)

    # The server's own request metrics: no 5xx at all, and every operation got past authentication
    # and validation at least once (the fuzzing reached every handler).
    answered: dict[str, set[int]] = {}
    for line in server.client().get("/metrics").text.splitlines():
        found = re.match(r'threadline_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"}', line)
        if found:
            answered.setdefault(f"{found[1]} {found[2]}", set()).add(int(found[3]))
    assert not {k: v for k, v in answered.items() if max(v) >= 500}
    unreached = [op.label for op in operations if not answered.get(op.label, set()) - {401, 422}]
    assert not unreached, f"never answered other than 401/422: {unreached}"


# -- the document states what the server enforces (issue 15 C4) ------------------------------------------

# 4xx answers to requests of the right shape that depend on state, not on shape: a page token of the right
# form this server did not issue (as an unknown id is a 404), an Idempotency-Key already used for another
# request (the generator reuses keys across examples). And text that is not Unicode (unpaired surrogates,
# which pydantic refuses as `string_unicode`) or that PostgreSQL cannot store (NUL): no schema can rule
# those out of every string, free-form objects included.
_NOT_ABOUT_SHAPE = ("/bad-page-token", "/idempotency-key-reused", "/unstorable-text")


def _not_about_shape(problem: dict[str, Any]) -> bool:
    if str(problem.get("type", "")).endswith(_NOT_ABOUT_SHAPE):
        return True
    errors = problem.get("errors") or []
    return bool(errors) and all(e.get("type") == "string_unicode" for e in errors)


def _no_refusal_of_valid_shapes(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code in (400, 422):
        problem = response.json()
        assert _not_about_shape(problem), (
            f"the document allows what the server refuses: {case.method} {case.formatted_path} -> "
            f"{response.status_code} {response.text[:600]}; query={case.query!r} headers={case.headers!r} "
            f"body={case.body!r}"
        )
    return None


@pytest.mark.timeout(600)  # about 25 s per database here
def test_requests_the_document_allows_are_not_refused_for_their_shape(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """Positive data only (what /openapi.json admits), every operation, random and known ids: no 422, and
    no 400 but for a page token this server did not issue. A constraint the server enforces and the
    document does not state (empty `ids=`, `selected_branch: ""`, `llm_base_url: "0"`...) fails here."""
    server = server_factory(runtime_dir=tmp_path / "no-runtime", llm_model="openai/fuzz-model")
    seeded = Seeded(server)
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    with_key = {"X-Access-Token": seeded.key}
    checks = [_no_server_error, _no_refusal_of_valid_shapes]
    failures: list[str] = []
    for operation in operations:
        # An event stream of a real record never ends by itself (see test_fuzz_every_operation).
        known = [] if operation.path.endswith("/stream") else [seeded.fixed(operation)]
        for fixed in ({}, *known):
            try:
                _fuzz(operation, GenerationMode.POSITIVE, server.base_url, with_key, checks, 15, **fixed)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} {'known ids' if fixed else 'random'}: {exc}"[:3000])
    assert not failures, f"{len(failures)} failing runs:\n\n" + "\n\n".join(failures)


# -- what fuzzing found: regressions ---------------------------------------------------------------------

_JSON = {"content-type": "application/json"}
# Text a database cannot hold: NUL (PostgreSQL refuses it in text and jsonb) and unpaired surrogates
# (valid JSON escapes no driver encodes as UTF-8). Each was a 500 on at least one backend.
_UNSTORABLE_BODIES = [
    ("PATCH", "{conv}", b'{"title": "a\\u0000b"}'),
    ("PATCH", "{conv}", b'{"tags": {"k\\u0000": "v"}}'),
    ("PATCH", "{conv}", b'{"tags": {"k": "\\ud83d"}}'),
    ("PATCH", "{conv}", b'{"tags": {"\\udfff": "v"}}'),
    ("PATCH", "{conv}", b'{"title": "\\ud800"}'),
    ("POST", "", b'{"title": "x\\u0000", "tags": {"a": "\\u0000"}}'),
    ("POST", "", b'{"tags": {"a": "\\ud800"}}'),
    ("POST", "", b'{"suggested_task": {"a": "\\ud800"}}'),
    ("POST", "", b'{"suggested_task": {"a": "\\u0000"}}'),
]


@pytest.mark.parametrize(("method", "path", "body"), _UNSTORABLE_BODIES)
def test_text_a_database_cannot_store_is_a_client_error(
    server: LiveServer, alice: tuple[Any, Any], method: str, path: str, body: bytes
) -> None:
    user, client = alice
    conv = server.conversation(user.id, title="before", tags={"k": "v"})
    url = "/api/v1/app-conversations" + (f"/{conv['id']}" if path else "")
    r = client.request(method, url, content=body, headers=_JSON)
    # 422 where the text cannot be stored: always on PostgreSQL; SQLite stores NUL, and JSON columns
    # keep a surrogate escaped, but its text columns (title, tag index) cannot take a surrogate either.
    assert r.status_code in (200, 422), r.text
    assert r.status_code == 422 or server.settings.is_sqlite, r.text
    if r.status_code == 422:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert _not_about_shape(r.json()), r.text
        assert client.get(f"/api/v1/app-conversations/{conv['id']}").json()["tags"] == {"k": "v"}


@pytest.mark.parametrize(
    "params",
    [
        {"title__contains": "a\x00"},
        {"tag": "k\x00:v"},
        {"tag_key": "\x00"},
        {"selected_repository__eq": "\x00"},
        {"llm_model__eq": "\x00"},
        {"sandbox_id__eq": "\x00"},
    ],
)
def test_nul_in_a_filter_is_never_a_server_error(alice: tuple[Any, Any], params: dict[str, str]) -> None:
    _, client = alice
    r = client.get("/api/v1/app-conversations/search", params=params)
    assert r.status_code in (200, 422), r.text


def test_naive_times_in_start_task_filters_mean_utc(alice: tuple[Any, Any]) -> None:
    """`created_at__gte` without an offset was a 500 (a naive datetime reached a UTC column)."""
    _, client = alice
    for suffix in ("search", "count"):
        for value in ("2020-01-01T00:00:00", "2020-01-01T00:00:00Z", "2020-01-01T01:00:00+01:00"):
            r = client.get(f"/api/v1/app-conversations/start-tasks/{suffix}", params={"created_at__gte": value})
            assert r.status_code == 200, r.text
