"""Observability: request ids, /metrics in Prometheus text format, structured JSON logs."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer
from tests.test_isolation import _insert_sandbox
from threadline.observability.logging import REQUEST_FIELDS, make_handler

API = "/api/v1/app-conversations"


def _samples(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{server.base_url}/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The process's log records at INFO and above, as `threadline serve` writes them (JSON lines)."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- request ids --------------------------------------------------------------------------------------


def test_every_answer_carries_a_request_id(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    user, client = alice
    conv = server.conversation(user.id)
    anonymous = server.client()
    answers = [
        client.get(f"{API}/{conv['id']}"),  # 200
        client.get(f"{API}/{uuid.uuid4().hex}"),  # 404 problem
        anonymous.get(f"{API}/search"),  # 401 problem
        client.get(f"{API}/search", params={"limit": 0}),  # 422 problem
        client.post(API, content=b"x" * (server.settings.max_body_bytes + 1)),  # 413 from the body limit
        anonymous.get("/nowhere"),  # 404 of no route
        anonymous.get("/alive"),
    ]
    ids = set()
    for r in answers:
        request_id = r.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id), r.headers
        if r.status_code >= 400:
            assert r.json()["request_id"] == request_id, r.text
        ids.add(request_id)
    assert len(ids) == len(answers)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_X.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ('quote"d', False),
        ("semi;colon", False),
        ("", False),
    ],
)
def test_a_sane_client_request_id_is_kept(server: LiveServer, sent: str, kept: bool) -> None:
    r = server.client().get(f"{API}/search", headers={"X-Request-ID": sent})
    assert r.status_code == 401
    echoed = r.headers["X-Request-ID"]
    assert (echoed == sent) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    assert r.json()["request_id"] == echoed


def test_an_unhandled_error_is_a_logged_500_problem_with_its_request_id(
    server: LiveServer, alice: tuple[Any, httpx.Client], logs: io.StringIO
) -> None:
    user, client = alice
    conv = server.conversation(user.id)

    class Broken:
        async def __call__(self, *_args: Any) -> None:
            raise RuntimeError("boom in a live-status call")

        async def resolve(self, *_args: Any) -> None:
            raise RuntimeError("boom in a live-status call")

    server.app.state.live_fields = Broken()
    r = client.get(f"{API}/{conv['id']}", headers={"X-Request-ID": "trace-500"})
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.headers["X-Request-ID"] == "trace-500" and r.json()["request_id"] == "trace-500"
    assert "boom" not in r.text
    records = [rec for rec in _records(logs) if rec.get("request_id") == "trace-500"]
    errors = [rec for rec in records if rec["logger"] == "threadline.errors"]
    assert errors and "RuntimeError: boom" in errors[0]["exc"]
    [access] = [rec for rec in records if rec["logger"] == "threadline.access"]
    assert access["status"] == 500 and access["level"] == "error"
    samples = _samples(server)
    assert (
        _value(
            samples, "threadline_http_requests_total", method="GET", route=f"{API}/{{conversation_id}}", status="500"
        )
        == 1
    )


# -- /metrics -----------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_and_status(
    server: LiveServer, alice: tuple[Any, httpx.Client]
) -> None:
    user, client = alice
    conv = server.conversation(user.id)
    for _ in range(3):
        assert client.get(f"{API}/{conv['id']}").status_code == 200
    assert client.get(f"{API}/{uuid.uuid4()}").status_code == 404
    assert server.client().get("/no/such/route").status_code == 404
    # A method the HTTP parser knows and the API does not serve (one it does not know is refused before any
    # route: test_errors_and_ops.py).
    assert client.request("PURGE", f"{API}/search").status_code == 405
    samples = _samples(server)
    template = f"{API}/{{conversation_id}}"
    assert _value(samples, "threadline_http_requests_total", method="GET", route=template, status="200") == 3
    assert _value(samples, "threadline_http_requests_total", method="GET", route=template, status="404") == 1
    assert _value(samples, "threadline_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    # An unknown method is "OTHER" (no label per made-up method); the path matched a route, so its template.
    assert _value(samples, "threadline_http_requests_total", method="OTHER", route=f"{API}/search", status="405") == 1
    assert _value(samples, "threadline_http_request_duration_seconds_count", method="GET", route=template) == 4
    assert (
        _value(samples, "threadline_http_request_duration_seconds_bucket", method="GET", route=template, le="+Inf") == 4
    )
    assert _value(samples, "threadline_http_request_duration_seconds_sum", method="GET", route=template) > 0
    # No raw path, so no id, ever becomes a label.
    text = httpx.get(f"{server.base_url}/metrics").text
    assert conv["id"] not in text and "/no/such/route" not in text


def test_metrics_need_no_credentials_and_can_be_turned_off(server_factory: Callable[..., LiveServer]) -> None:
    on = server_factory()
    assert httpx.get(f"{on.base_url}/metrics").status_code == 200
    off = server_factory(metrics_enabled=False)
    r = httpx.get(f"{off.base_url}/metrics")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    # Everything else works as before, request ids included.
    assert httpx.get(f"{off.base_url}/alive").headers["X-Request-ID"]


def test_sandboxes_by_status_are_counted_at_scrape_time(server: LiveServer) -> None:
    user, _ = server.user("gauge")
    for status in ("PAUSED", "PAUSED", "MISSING", "ERROR"):
        _insert_sandbox(server, user.id, status)
    samples = _samples(server)
    assert _value(samples, "threadline_sandboxes", status="PAUSED") == 2
    assert _value(samples, "threadline_sandboxes", status="MISSING") == 1
    assert _value(samples, "threadline_sandboxes", status="ERROR") == 1
    assert ("threadline_sandboxes", (("status", "RUNNING"),)) in samples  # every status has a series
    _insert_sandbox(server, user.id, "PAUSED")
    assert _value(_samples(server), "threadline_sandboxes", status="PAUSED") == 3


def test_start_task_durations_are_observed_when_tasks_end(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    # No agent runtime: the start fails at once, and its task ends ERROR.
    server = server_factory(runtime_dir=tmp_path / "no-runtime", llm_model="openai/m")
    _, key = server.user("starter")
    r = server.client(key).post(f"{API}/stream-start", json={"title": "t"}, timeout=60)
    assert r.status_code == 200 and r.json()[-1]["status"] == "ERROR", r.text
    samples = _samples(server)
    assert _value(samples, "threadline_start_task_duration_seconds_count", status="ERROR") == 1
    assert _value(samples, "threadline_start_task_duration_seconds_bucket", status="ERROR", le="+Inf") == 1
    assert _value(samples, "threadline_start_task_duration_seconds_count", status="READY") == 0


def test_callback_lag_is_observed_per_event_batch(server: LiveServer) -> None:
    user, _ = server.user("agent-owner")
    sandbox_id, session_key = _insert_sandbox(server, user.id, "RUNNING")
    conv = server.conversation(user.id, sandbox_id=sandbox_id)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # agents write naive UTC times

    def event(age: float) -> dict[str, Any]:
        at = now - dt.timedelta(seconds=age)
        return {"id": str(uuid.uuid4()), "kind": "MessageEvent", "timestamp": at.isoformat(), "source": "agent"}

    with httpx.Client(base_url=server.base_url, headers={"X-Session-API-Key": session_key}) as agent:
        # The newest event of the batch counts: 30 s old, whatever the older ones say.
        assert agent.post(f"/api/v1/webhooks/events/{conv['id']}", json=[event(300), event(30)]).status_code == 200
        # A batch without a readable timestamp is not observed.
        assert agent.post(f"/api/v1/webhooks/events/{conv['id']}", json=[{"kind": "x"}]).status_code == 200
    samples = _samples(server)
    assert _value(samples, "threadline_callback_lag_seconds_count") == 1
    assert 30 <= _value(samples, "threadline_callback_lag_seconds_sum") < 60
    assert _value(samples, "threadline_callback_lag_seconds_bucket", le="10.0") == 0
    assert _value(samples, "threadline_callback_lag_seconds_bucket", le="60.0") == 1


# -- logs ---------------------------------------------------------------------------------------------


def test_access_log_lines_are_json_with_the_request_fields(
    server_factory: Callable[..., LiveServer], tmp_path: Path, logs: io.StringIO
) -> None:
    server = server_factory(runtime_dir=tmp_path / "no-runtime")
    user, key = server.user("logged")
    conv = server.conversation(user.id)
    client = server.client(key)
    client.get(f"{API}/{conv['id']}", headers={"X-Request-ID": "read-1"})
    # A sandbox that cannot launch logs a warning while the request that started it is handled.
    client.post("/api/v1/sandboxes", headers={"X-Request-ID": "create-1"})
    records = _records(logs)
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        dt.datetime.fromisoformat(record["time"])
    [read] = [r for r in records if r["logger"] == "threadline.access" and r.get("request_id") == "read-1"]
    assert set(REQUEST_FIELDS) <= set(read)
    assert read["method"] == "GET" and read["route"] == f"{API}/{{conversation_id}}" and read["status"] == 200
    assert read["path"] == f"{API}/{conv['id']}" and read["level"] == "info" and read["duration_ms"] > 0
    launched = [r for r in records if r["logger"] == "threadline.sandboxes" and r.get("request_id") == "create-1"]
    assert launched and "failed to launch" in launched[0]["message"]


def _serve(tmp_path: Path, log_format: str) -> list[str]:
    """Run `threadline serve` with the given log format, make one request, stop it; its stderr lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, THREADLINE_HOME=str(tmp_path / f"home-{log_format}"), THREADLINE_LOG_FORMAT=log_format)
    env.pop("THREADLINE_DATABASE_URL", None)
    proc = subprocess.Popen(
        # Two workers: their logging is set up after uvicorn's, the case that once doubled the access lines.
        [sys.executable, "-m", "threadline.cli.main", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/ready", headers={"X-Request-ID": "serve-probe"}, timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "threadline serve did not start"
                time.sleep(0.1)
        assert r.status_code == 200 and r.headers["X-Request-ID"] == "serve-probe"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return err.splitlines()


def test_serve_writes_json_lines_by_default_and_text_on_request(tmp_path: Path) -> None:
    lines = _serve(tmp_path, "json")
    records = [json.loads(line) for line in lines]  # every line of stderr is one JSON object
    loggers = {r["logger"] for r in records}
    assert {"threadline", "uvicorn.error", "threadline.access"} <= loggers
    # One access line per request, Threadline's (uvicorn's own would repeat it without the request id).
    assert "uvicorn.access" not in loggers
    [access] = [r for r in records if r["logger"] == "threadline.access"]
    assert access["request_id"] == "serve-probe" and access["route"] == "/ready" and access["status"] == 200

    text = _serve(tmp_path, "text")
    assert text and not any(line.startswith("{") for line in text)
    assert any("threadline.access [serve-probe] GET /ready 200" in line for line in text)


def test_sqlite_writer_lock_time_is_counted_per_process(server: LiveServer, alice: tuple[Any, httpx.Client]) -> None:
    """SQLite admits one writer at a time: /metrics shows how many write transactions this process ran and how
    long they waited for and held the writer lock. PostgreSQL has no such lock and no such series."""
    user, client = alice
    conv = server.conversation(user.id)
    names = (
        "threadline_sqlite_write_transactions_total",
        "threadline_sqlite_writer_lock_wait_seconds_total",
        "threadline_sqlite_writer_lock_held_seconds_total",
    )
    before = _samples(server)
    if not server.ctx.db.is_sqlite:
        assert not any(name in key for key in before for name in names)
        return
    for i in range(5):
        r = client.patch(f"{API}/{conv['id']}", json={"title": f"title {i}", "tags": {"n": str(i)}})
        assert r.status_code == 200, r.text
    after = _samples(server)
    assert _value(after, names[0]) - _value(before, names[0]) >= 5
    assert _value(after, names[1]) >= _value(before, names[1]) >= 0
    assert _value(after, names[2]) > _value(before, names[2]) >= 0
