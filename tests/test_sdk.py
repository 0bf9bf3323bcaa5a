"""The Python client (`threadline.client`) against a live Threadline over real HTTP, plus upstream-style
answers (FastAPI `{"detail": ...}`, plain text) from a mock transport."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, wait_for
from threadline.client import (
    UNSET,
    AgentUnavailable,
    AppConversationStartTask,
    AsyncThreadline,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Gone,
    NotFound,
    PreconditionFailed,
    RateLimited,
    SandboxLimitReached,
    ServerError,
    StartFailed,
    Threadline,
    ThreadlineError,
    Unauthorized,
    UnprocessableEntity,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Recorder:
    """Counts and keeps the requests a client sends (an httpx event hook)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def paths(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(suffix)]


def client_for(server: LiveServer, key: str, **kwargs: Any) -> Threadline:
    return Threadline(server.base_url, key, **kwargs)


# -- paging ------------------------------------------------------------------------------------------


def test_paging_over_250_conversations(server: LiveServer) -> None:
    user, key = server.user("ada")
    created = []
    for i in range(250):
        tags = {"team": "core" if i % 5 == 0 else "web"}
        created.append(
            server.conversation(user.id, title=f"conversation {i}", tags=tags, created_at=T0 + dt.timedelta(minutes=i))
        )
    recorder = Recorder()
    http = httpx.Client(event_hooks={"request": [recorder]}, timeout=30)
    with Threadline(server.base_url, key, http_client=http) as client:
        got = list(client.conversations.search())
        assert [c.id for c in got] == [c["id"] for c in reversed(created)]  # newest first, none twice
        assert len(recorder.paths("/search")) == 3  # pages of 100, 100, 50

        pages = list(client.conversations.search(sort_order="CREATED_AT", page_size=40).pages())
        assert [len(p) for p in pages] == [40] * 6 + [10]
        assert [c.id for p in pages for c in p] == [c["id"] for c in created]

        recorder.requests.clear()
        first = list(client.conversations.search(limit=30))
        assert len(first) == 30 and first[0].id == created[-1]["id"]
        assert len(recorder.requests) == 1  # a limit below the page size asks for no more than needed

        core = list(client.conversations.search(tags={"team": "core"}, page_size=7))
        assert len(core) == 50 and all(c.tags == {"team": "core"} for c in core)
        assert client.conversations.count() == 250
        assert client.conversations.count(tags={"team": "core"}) == 50
        assert client.conversations.count(tag_keys=["team"], title_contains="conversation 1") == 111
        later = client.conversations.search(created_at_gte=T0 + dt.timedelta(minutes=200))
        assert len(list(later)) == 50

        # A page token the server gave can start a search again.
        token = server.client(key).get("/api/v1/app-conversations/search").json()["next_page_id"]
        rest = list(client.conversations.search(page_id=token))
        assert [c.id for c in rest] == [c["id"] for c in reversed(created)][100:]
        with pytest.raises(TypeError, match="unknown conversation filter"):
            client.conversations.search(colour="red")  # type: ignore[call-arg]

    async def collect() -> list[str]:
        async with AsyncThreadline(server.base_url, key) as aclient:
            ids = [c.id async for c in aclient.conversations.search(page_size=100)]
            assert await aclient.conversations.count(tags={"team": "web"}) == 200
            return ids

    assert asyncio.run(collect()) == [c["id"] for c in reversed(created)]


# -- update semantics --------------------------------------------------------------------------------


def test_update_none_clears_and_unspecified_keeps(server: LiveServer) -> None:
    user, key = server.user("ada")
    conv = server.conversation(
        user.id,
        title="Original",
        selected_repository="octo/app",
        selected_branch="main",
        git_provider="github",
        public=True,
        tags={"team": "core", "env": "prod"},
    )
    with client_for(server, key) as client:
        c = client.conversations.update(conv["id"], title="Renamed")
        assert c.title == "Renamed"
        assert (c.selected_repository, c.selected_branch, c.git_provider) == ("octo/app", "main", "github")
        assert c.public is True and c.tags == {"team": "core", "env": "prod"}

        c = client.conversations.update(conv["id"], selected_branch=None, tags={"env": None, "stage": "beta"})
        assert c.selected_branch is None and c.selected_repository == "octo/app" and c.git_provider == "github"
        assert c.tags == {"team": "core", "stage": "beta"} and c.title == "Renamed"

        unchanged = client.conversations.update(conv["id"], title=UNSET)
        assert unchanged.model_dump(exclude={"etag"}) == c.model_dump(exclude={"etag"})
        assert client.conversations.update(conv["id"]).updated_at == c.updated_at

        c = client.conversations.update(conv["id"], public=False, title=None, tags=None)
        assert c.public is False and c.title is None and c.tags == {}
        assert c.selected_repository == "octo/app"

        # Clearing the repository clears branch and provider too, unless the same request sets them.
        c = client.conversations.update(conv["id"], selected_branch="dev")
        c = client.conversations.update(conv["id"], selected_repository=None)
        assert (c.selected_repository, c.selected_branch, c.git_provider) == (None, None, None)

        # If-Match: a stale etag is refused with the current one.
        stale = c.etag
        fresh = client.conversations.update(conv["id"], title="Again", if_match=stale)
        with pytest.raises(PreconditionFailed) as info:
            client.conversations.update(conv["id"], title="Lost update", if_match=stale)
        assert info.value.status == 412 and info.value.etag == fresh.etag
        assert client.conversations.get(conv["id"]).title == "Again"
        with pytest.raises(PreconditionFailed):
            client.conversations.delete(conv["id"], if_match=stale)
        client.conversations.delete(conv["id"], if_match=fresh.etag)
        with pytest.raises(NotFound):
            client.conversations.get(conv["id"])


def test_async_update_and_get_many(server: LiveServer) -> None:
    user, key = server.user("ada")
    a = server.conversation(user.id, title="A", tags={"k": "v"})
    b = server.conversation(user.id, title="B")

    async def main() -> None:
        async with AsyncThreadline(server.base_url, key) as client:
            c = await client.conversations.update(a["id"], tags={"k2": "v2"})
            assert c.title == "A" and c.tags == {"k": "v", "k2": "v2"}
            c = await client.conversations.update(a["id"], title=None)
            assert c.title is None and c.tags == {"k": "v", "k2": "v2"}
            missing = uuid.uuid4().hex
            many = await client.conversations.get_many([b["id"], missing, a["id"]])
            assert [x.id if x else None for x in many] == [b["id"], None, a["id"]]
            with pytest.raises(NotFound):
                await client.conversations.get(missing)
            assert (await client.me()).name == "ada"
            await client.conversations.delete(b["id"])
            assert await client.conversations.count() == 1

    asyncio.run(main())


def test_get_many_over_the_batch_limit(server: LiveServer) -> None:
    user, key = server.user("ada")
    ids = [server.conversation(user.id)["id"] for _ in range(3)]
    asked = [uuid.uuid4().hex for _ in range(120)] + ids
    with client_for(server, key) as client:
        found = client.conversations.get_many(asked)
    assert len(found) == 123 and found[:120] == [None] * 120
    assert [c.id for c in found[120:] if c] == ids


# -- errors ------------------------------------------------------------------------------------------


def test_errors_are_exceptions_with_the_problem_fields(server: LiveServer) -> None:
    user, key = server.user("ada")
    conv = server.conversation(user.id, title="x")  # its sandbox does not exist
    with client_for(server, key, max_retries=0) as client:
        missing = uuid.uuid4().hex
        with pytest.raises(NotFound) as not_found:
            client.conversations.update(missing, title="y")
        err = not_found.value
        assert err.status == 404 and err.type.endswith("/not-found") and err.title == "Not Found"
        assert missing in err.detail and isinstance(err, ThreadlineError)
        with pytest.raises(NotFound):
            client.conversations.delete(missing)
        with pytest.raises(NotFound):
            client.conversations.update("not-an-id", title="y")

        with pytest.raises(UnprocessableEntity) as invalid:
            client.conversations.update(conv["id"], selected_repository="no slash here")
        assert invalid.value.status == 422
        assert any(e["loc"][-1] == "selected_repository" for e in invalid.value.errors)
        assert "selected_repository" in invalid.value.detail

        with pytest.raises(BadRequest) as bad:
            list(client.conversations.search(page_id="garbled"))
        assert bad.value.status == 400

        with pytest.raises(Gone) as gone:
            client.conversations.send_message(conv["id"], "hello")
        assert gone.value.extra["sandbox_status"] == "MISSING"

        # The same Idempotency-Key for another request: 422 from the idempotency layer.
        with pytest.raises(Gone):
            client.conversations.send_message(conv["id"], "one", idempotency_key="k-1")
        with pytest.raises(UnprocessableEntity) as reused:
            client.conversations.send_message(conv["id"], "two", idempotency_key="k-1")
        assert reused.value.type.endswith("/idempotency-key-reused")
        with pytest.raises(Gone):  # the same request again: the stored answer
            client.conversations.send_message(conv["id"], "one", idempotency_key="k-1")

        with pytest.raises(NotFound):
            client.sandboxes.get(uuid.uuid4().hex)
        assert str(err).startswith("404 Not Found: ")

    with client_for(server, "tl_not-a-key", max_retries=0) as intruder:
        with pytest.raises(Unauthorized) as unauthorized:
            intruder.me()
        assert unauthorized.value.status == 401 and unauthorized.value.headers["WWW-Authenticate"] == "Bearer"

    with pytest.raises(ConnectionFailed):
        Threadline("http://127.0.0.1:9", key, max_retries=1, backoff=0.01).me()
    with pytest.raises(ValueError, match="THREADLINE_URL"):
        Threadline(api_key=key)


def test_rate_limited_calls_wait_for_retry_after(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(rate_limit_per_second=2.0, rate_limit_burst=2)
    _, key = server.user("ada")
    with client_for(server, key, max_retries=0) as impatient:
        impatient.me()
        impatient.me()
        with pytest.raises(RateLimited) as limited:
            impatient.me()
        assert limited.value.status == 429 and limited.value.retry_after == 1
        assert limited.value.type.endswith("/rate-limited")

        def allowed() -> bool:
            try:
                impatient.me()
            except RateLimited:
                return False
            return True

        # Polled until the bucket (2 tokens/s) gives a token again; the allowed call leaves it empty.
        wait_for(allowed, timeout=limited.value.retry_after + 5, interval=0.05, what="a refilled token")
    with client_for(server, key) as patient:
        started = time.monotonic()
        names = [patient.me().name for _ in range(4)]
        assert names == ["ada"] * 4
        assert time.monotonic() - started >= 0.9  # waited for the bucket at least once


# -- retries -----------------------------------------------------------------------------------------


def test_calls_made_while_the_server_restarts_succeed(
    server_factory: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory()
    user, key = server.user("ada")
    conv = server.conversation(user.id, title="survives")
    client = client_for(server, key, max_retries=8, backoff=0.25, max_backoff=2.0)
    assert client.conversations.get(conv["id"]).title == "survives"

    server.stop()  # type: ignore[attr-defined]
    results: dict[str, Any] = {}

    def read() -> None:
        try:
            results["get"] = client.conversations.get(conv["id"])
        except Exception as exc:
            results["get"] = exc

    def write() -> None:
        # Connection refused: the PATCH never reached the server, so even it may be sent again.
        try:
            results["update"] = client.conversations.update(conv["id"], tags={"after": "restart"})
        except Exception as exc:
            results["update"] = exc

    caplog.set_level(logging.WARNING, logger="threadline.client")
    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for t in threads:
        t.start()

    def retried(method: str) -> bool:
        # Logged before each back-off: "GET /api/...: ConnectError; retry 2 of 8 in 0.50 s".
        return any(
            r.getMessage().startswith(f"{method} ") and "ConnectError; retry 2 of" in r.getMessage()
            for r in list(caplog.records)
        )

    # Both calls fail and back off (twice each) while nothing listens.
    wait_for(lambda: retried("GET") and retried("PATCH"), timeout=30, interval=0.02, what="two failed attempts")
    assert all(t.is_alive() for t in threads)
    server_factory(port=server.settings.port)
    for t in threads:
        t.join(60)
    assert not isinstance(results["get"], Exception), results["get"]
    assert not isinstance(results["update"], Exception), results["update"]
    assert results["get"].title == "survives"
    assert results["update"].tags == {"after": "restart"}
    assert any("ConnectError" in r.getMessage() for r in caplog.records)
    client.close()


class DropFirstAnswer(httpx.BaseTransport):
    """Forwards every request to the real server, but loses the answer to the first POST (a broken
    connection after the server did the work)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.posts: list[httpx.Request] = []
        self.answers: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "POST":
            return response
        response.read()
        self.posts.append(request)
        self.answers.append(response)
        if len(self.posts) == 1:
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_idempotency_key_is_generated_and_reused_on_retry(starter: Callable[..., LiveServer]) -> None:
    server = starter()
    _, key = server.user("ada")
    transport = DropFirstAnswer()
    with Threadline(server.base_url, key, transport=transport, backoff=0.05) as client:
        task = client.conversations.start(title="only once", tags={"team": "core"})
        assert isinstance(task, AppConversationStartTask) and task.request["title"] == "only once"
        keys = [r.headers.get("Idempotency-Key") for r in transport.posts]
        assert len(keys) == 2 and keys[0] and keys[0] == keys[1]
        assert transport.answers[1].headers.get("Idempotent-Replayed") == "true"
        assert json.loads(transport.answers[0].content)["id"] == task.id  # the first answer, replayed

        wait_for(lambda: client.conversations.get_start_task(task.id).status in ("READY", "ERROR"), timeout=30)
        assert server.client(key).get("/api/v1/app-conversations/start-tasks/count").json() == 1

        # Each call gets its own key; a key the caller gives is used as it is.
        client.conversations.start(title="second")
        client.conversations.start(title="third", idempotency_key="my-key")
        keys = [r.headers.get("Idempotency-Key") for r in transport.posts]
        assert len(set(keys)) == 3 and keys[-1] == "my-key"
        # A PATCH carries no key and is not sent again after a lost answer.
        assert all("Idempotency-Key" not in r.headers for r in transport.posts if r.method != "POST")


def test_stream_start_yields_each_status(starter: Callable[..., LiveServer]) -> None:
    server = starter()
    _, key = server.user("ada")
    with client_for(server, key) as client:
        tasks = list(client.conversations.stream_start("hello", title="streamed"))
        assert tasks[0].status == "WORKING" and tasks[-1].status == "ERROR"
        assert len({t.id for t in tasks}) == 1
        with pytest.raises(StartFailed) as failed:
            client.conversations.start_and_wait("hello", poll_interval=0.2, timeout=60)
        assert failed.value.task.status == "ERROR" and failed.value.task.detail

    async def main() -> list[str]:
        async with AsyncThreadline(server.base_url, key) as aclient:
            return [t.status async for t in aclient.conversations.stream_start(title="async")]

    statuses = asyncio.run(main())
    assert statuses[0] == "WORKING" and statuses[-1] == "ERROR"


def test_sandboxes_settings_and_me(starter: Callable[..., LiveServer]) -> None:
    server = starter()
    _, key = server.user("ada")
    with client_for(server, key) as client:
        me = client.me()
        assert me.name == "ada" and me.is_admin is False

        settings = client.settings.update(llm_model="openai/mine", llm_api_key="sk-secret")
        assert settings.llm_model == "openai/mine" and settings.llm_model_source == "user"
        assert settings.llm_api_key_set and "sk-secret" not in settings.model_dump_json()
        settings = client.settings.update(llm_base_url="https://llm.example.com/v1")
        assert settings.llm_model == "openai/mine"  # unspecified: kept
        settings = client.settings.update(llm_model=None)
        assert settings.llm_model == "openai/x" and settings.llm_model_source == "server"
        assert client.settings.get() == settings

        assert list(client.sandboxes.search()) == []
        sandbox = client.sandboxes.start()
        assert [s.id for s in client.sandboxes.search()] == [sandbox.id]
        assert client.sandboxes.get_many([sandbox.id, uuid.uuid4().hex])[1] is None
        assert client.sandboxes.get(sandbox.id).id == sandbox.id
        client.sandboxes.pause(sandbox.id)
        client.sandboxes.delete(sandbox.id)
        with pytest.raises(NotFound):
            client.sandboxes.get(sandbox.id)
        with pytest.raises(NotFound):
            client.sandboxes.resume(sandbox.id)


# -- answers of upstream-style servers (mock transport) ----------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> Threadline:
    kwargs.setdefault("backoff", 0.001)
    return Threadline("http://upstream.test", "key", transport=httpx.MockTransport(handler), **kwargs)


def scripted(*answers: httpx.Response) -> tuple[Callable[[httpx.Request], httpx.Response], list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler, seen


def test_upstream_style_errors() -> None:
    handler, _ = scripted(httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(NotFound) as nf:
        mock_client(handler).conversations.delete("abc")
    assert (nf.value.detail, nf.value.type, nf.value.title) == ("Not Found", "about:blank", "Not Found")

    fastapi_422 = {"detail": [{"loc": ["body", "title"], "msg": "too long", "type": "string_too_long"}]}
    handler, _ = scripted(httpx.Response(422, json=fastapi_422))
    with pytest.raises(UnprocessableEntity) as invalid:
        mock_client(handler).conversations.update("abc", title="x" * 5000)
    assert invalid.value.errors == fastapi_422["detail"] and invalid.value.detail == "title: too long"

    handler, seen = scripted(httpx.Response(500, text="Internal Server Error"))
    with pytest.raises(ServerError) as boom:
        mock_client(handler, max_retries=3).conversations.get("abc")
    assert boom.value.detail == "Internal Server Error" and len(seen) == 1  # 500 is not retried

    handler, _ = scripted(httpx.Response(409, json={"detail": "sandbox paused"}))
    with pytest.raises(Conflict):
        mock_client(handler).conversations.send_message("abc", "hi")

    agent = {"type": "https://threadline.dev/problems/agent-unavailable", "title": "x", "status": 503, "detail": "d"}
    handler, seen = scripted(httpx.Response(503, json=agent))
    with pytest.raises(AgentUnavailable):
        mock_client(handler, max_retries=2).conversations.send_message("abc", "hi")
    assert len(seen) == 3  # a POST with an Idempotency-Key is retried
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1

    problem = {"type": "https://x.test/problems/db", "title": "Oops", "status": 500, "detail": "d", "request_id": "r1"}
    handler, _ = scripted(httpx.Response(500, json=problem, headers={"content-type": "application/problem+json"}))
    with pytest.raises(ServerError) as failed:
        mock_client(handler).conversations.delete("abc")
    assert (failed.value.title, failed.value.request_id, failed.value.extra) == ("Oops", "r1", {"request_id": "r1"})

    cap = {"type": "https://threadline.dev/problems/sandbox-limit-reached", "status": 429, "limit": 2, "current": 2}
    handler, seen = scripted(httpx.Response(429, json=cap))
    with pytest.raises(SandboxLimitReached) as capped:
        mock_client(handler).sandboxes.start()
    assert len(seen) == 1 and capped.value.limit == 2 and isinstance(capped.value, RateLimited)


def test_retry_rules() -> None:
    ok = httpx.Response(200, json={"success": True, "sandbox_status": "RUNNING"})
    # 502/503/504 are retried for GET and for keyed POSTs ...
    handler, seen = scripted(httpx.Response(502), httpx.Response(504), httpx.Response(200, json=5))
    assert mock_client(handler).conversations.count() == 5 and len(seen) == 3
    # ... but not for a PATCH, which might have been applied.
    handler, seen = scripted(httpx.Response(503, json={"detail": "busy"}))
    with pytest.raises(ServerError):
        mock_client(handler).conversations.update("abc", title="t")
    assert len(seen) == 1
    # 429 with Retry-After is waited for, for any call; a long Retry-After is not.
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(200, json=1))
    assert mock_client(handler).conversations.count() == 1 and len(seen) == 2
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as limited:
        mock_client(handler).conversations.count()
    assert limited.value.retry_after == 3600 and len(seen) == 1
    # The first request with a key still running: ask again for its answer.
    in_flight = {"type": "https://threadline.dev/problems/idempotency-key-in-flight", "status": 409}
    handler, seen = scripted(httpx.Response(409, json=in_flight, headers={"Retry-After": "0"}), ok)
    assert mock_client(handler).conversations.send_message("abc", "hi").success and len(seen) == 2
    # A read error after the request went out: retried for GET, not for a PATCH.
    calls: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(200, json=7)

    assert mock_client(flaky).conversations.count() == 7 and calls == ["GET", "GET"]
    calls.clear()
    with pytest.raises(ConnectionFailed):
        mock_client(flaky).conversations.update("abc", title="t")
    assert calls == ["PATCH"]
    # Retries stop after max_retries.
    handler, seen = scripted(httpx.Response(503))
    with pytest.raises(ServerError):
        mock_client(handler, max_retries=4).conversations.count()
    assert len(seen) == 5


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=0)

    monkeypatch.setenv("THREADLINE_URL", "http://env.test/prefix/")
    monkeypatch.setenv("THREADLINE_API_KEY", "tl_env")
    client = Threadline(transport=httpx.MockTransport(handler))
    assert client.conversations.count(public=False, git_provider="github") == 0
    request = seen[0]
    assert str(request.url) == (
        "http://env.test/prefix/api/v1/app-conversations/count?git_provider__eq=github&public__eq=false"
    )
    assert request.headers["Authorization"] == "Bearer tl_env"
    Threadline("http://arg.test", "tl_arg", transport=httpx.MockTransport(handler)).conversations.count()
    assert seen[1].url.host == "arg.test" and seen[1].headers["Authorization"] == "Bearer tl_arg"


# -- the agent path ----------------------------------------------------------------------------------


@pytest.mark.agent
def test_start_and_wait_then_send_message(agent_server_factory: Any) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user("ada")
    statuses: list[str] = []
    with client_for(server, key) as client:
        conversation = client.conversations.start_and_wait(
            "Say hello",
            tags={"team": "sdk"},
            timeout=180,
            poll_interval=0.5,
            on_status=lambda t: statuses.append(t.status),
        )
        assert statuses[0] == "WORKING" and statuses[-1] == "READY"
        assert conversation.tags == {"team": "sdk"} and conversation.sandbox_status == "RUNNING"

        def finished() -> bool:
            return client.conversations.get(conversation.id).execution_status == "finished"

        wait_for(finished, timeout=120, what="the agent to finish")
        answer = client.conversations.send_message(conversation.id, "And now say goodbye")
        assert answer.success and answer.sandbox_status == "RUNNING"

        def said_goodbye() -> bool:
            texts = [
                part.get("text", "")
                for event in client.conversations.events(conversation.id, kind="MessageEvent")
                for part in event.get("llm_message", {}).get("content", [])
            ]
            return "And now say goodbye" in texts

        wait_for(said_goodbye, timeout=60, what="the message among the events")
        assert client.conversations.count_events(conversation.id) >= 4
