"""A tiny OpenAI-compatible fake LLM server for tests (standard library only).

It answers ``POST /v1/chat/completions`` (plain JSON or an SSE stream) and ``GET /v1/models``.

Behaviour, per request:

* The request carries a tool named ``finish`` (an agent step): unless a scripted reply was queued with
  :meth:`FakeLLM.enqueue_tool_call` / :meth:`FakeLLM.enqueue_text`, the answer is a single tool call to
  ``finish`` whose arguments are built from that tool's JSON schema (``{"message": "done"}`` for the
  OpenHands SDK's finish tool).
* Any other request (no tools, e.g. the automatic title generation): a short plain text answer
  (``FakeLLM.title``, "Fake title" by default).

Every answer carries ``usage`` with non-zero ``prompt_tokens``/``completion_tokens``/``total_tokens``.

Programmatic use::

    llm = FakeLLM().start()
    ...  # point the agent at llm.base_url with model "openai/fake-model"
    llm.fail_next(2, status=500)   # the next two completions answer HTTP 500
    llm.delay_seconds = 1.5        # every completion waits this long first
    llm.requests                   # bodies of the chat-completion requests received so far
    llm.stop()

Command line: ``python -m tests.support.fake_llm --port 8765`` (binds 127.0.0.1 only). A server run
that way (in another process) can be steered over HTTP:

* ``POST /_fake/control`` with any of ``{"delay_seconds": 2.0, "fail_next": {"n": 1, "status": 500},
  "enqueue": [{"text": "hi"}, {"tool": "terminal", "arguments": {"command": "ls"}}], "clear": true}``
* ``GET /_fake/requests`` -> the list of chat-completion request bodies received so far.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FINISH_TOOL_NAME = "finish"
DEFAULT_MODEL = "fake-model"


@dataclass
class ScriptedReply:
    """One queued answer for an agent step: plain text and/or tool calls ``(name, arguments)``."""

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class _Failure:
    status: int
    message: str


def _estimate_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return max(1, len(text) // 4)


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    function = tool.get("function")
    if isinstance(function, dict):
        name = function.get("name")
        return name if isinstance(name, str) else None
    name = tool.get("name")  # Responses-API style tool definitions
    return name if isinstance(name, str) else None


def _tool_parameters(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    params = function.get("parameters") if isinstance(function, dict) else tool.get("parameters")
    return params if isinstance(params, dict) else {}


def _placeholder(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "done"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return {
        "boolean": True,
        "integer": 0,
        "number": 0,
        "array": [],
        "object": {},
        "null": None,
    }.get(str(kind), "done")


def finish_arguments(tool: dict[str, Any], message: str) -> dict[str, Any]:
    """Arguments for a call to ``tool`` that satisfy its schema, with ``message`` as the message."""
    params = _tool_parameters(tool)
    properties = params.get("properties") or {}
    required = params.get("required") or []
    args: dict[str, Any] = {}
    for name in required:
        args[name] = message if name == "message" else _placeholder(properties.get(name))
    if "message" in properties:
        args["message"] = message
    if not properties and not required:
        args["message"] = message
    return args


class FakeLLM:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, run in a background thread."""

    def __init__(
        self,
        *,
        port: int = 0,
        model: str = DEFAULT_MODEL,
        title: str = "Fake title",
        finish_message: str = "done",
        delay_seconds: float = 0.0,
    ) -> None:
        self.model = model
        self.title = title
        self.finish_message = finish_message
        self.delay_seconds = delay_seconds
        self._requested_port = port
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._failures: deque[_Failure] = deque()
        self._script: deque[ScriptedReply] = deque()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition(self._lock)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeLLM:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeLLM is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:8765/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- inspection and control ------------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of the bodies of all chat-completion requests received (including failed ones)."""
        with self._lock:
            return list(self._requests)

    @property
    def agent_requests(self) -> list[dict[str, Any]]:
        """Requests that carried a ``finish`` tool (agent steps)."""
        return [r for r in self.requests if _find_finish_tool(r) is not None]

    @property
    def untooled_requests(self) -> list[dict[str, Any]]:
        """Requests without tools (e.g. title generation)."""
        return [r for r in self.requests if not r.get("tools")]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._script.clear()

    def fail_next(self, n: int = 1, status: int = 500, message: str = "fake LLM failure") -> None:
        """Make the next ``n`` chat-completion requests answer HTTP ``status`` with an OpenAI error body."""
        with self._lock:
            self._failures.extend(_Failure(status, message) for _ in range(n))

    def enqueue_text(self, text: str) -> None:
        """Queue a plain-text answer for the next agent step (request with a ``finish`` tool)."""
        with self._lock:
            self._script.append(ScriptedReply(text=text))

    def enqueue_tool_call(self, name: str, arguments: dict[str, Any]) -> None:
        """Queue a tool-call answer for the next agent step, e.g. ``("terminal", {"command": "ls"})``."""
        with self._lock:
            self._script.append(ScriptedReply(tool_calls=[(name, arguments)]))

    def apply_control(self, control: dict[str, Any]) -> None:
        """Apply a control document (see the module docstring); used by ``POST /_fake/control``."""
        if control.get("clear"):
            self.clear()
        if "delay_seconds" in control:
            self.delay_seconds = float(control["delay_seconds"])
        failure = control.get("fail_next")
        if failure:
            self.fail_next(int(failure.get("n", 1)), int(failure.get("status", 500)))
        for item in control.get("enqueue") or []:
            if "tool" in item:
                self.enqueue_tool_call(str(item["tool"]), dict(item.get("arguments") or {}))
            else:
                self.enqueue_text(str(item["text"]))

    def wait_for_requests(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until at least ``n`` requests were received; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"fake LLM got {len(self._requests)} requests, wanted {n}")
                self._changed.wait(remaining)
            return list(self._requests)

    # -- request handling (called from handler threads) -----------------------------------------

    def _record(self, body: dict[str, Any]) -> _Failure | None:
        with self._changed:
            self._requests.append(body)
            self._changed.notify_all()
            return self._failures.popleft() if self._failures else None

    def _sleep(self) -> None:
        if self.delay_seconds > 0:
            self._stopping.wait(self.delay_seconds)

    def _reply_for(self, body: dict[str, Any]) -> ScriptedReply:
        finish_tool = _find_finish_tool(body)
        if finish_tool is None:
            return ScriptedReply(text=self.title)
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            return scripted
        return ScriptedReply(tool_calls=[(FINISH_TOOL_NAME, finish_arguments(finish_tool, self.finish_message))])


def _find_finish_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    for tool in body.get("tools") or []:
        if _tool_name(tool) == FINISH_TOOL_NAME:
            return tool  # type: ignore[no-any-return]
    return None


def _usage(body: dict[str, Any], reply: ScriptedReply) -> dict[str, int]:
    prompt = _estimate_tokens(body.get("messages") or body.get("input") or "")
    completion = _estimate_tokens(reply.text or "") + sum(
        _estimate_tokens(name) + _estimate_tokens(args) for name, args in reply.tool_calls
    )
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_call_objects(reply: ScriptedReply) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for name, args in reply.tool_calls
    ]


def _completion(model: str, body: dict[str, Any], reply: ScriptedReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    finish_reason = "stop"
    if reply.tool_calls:
        message["tool_calls"] = _tool_call_objects(reply)
        finish_reason = "tool_calls"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": _usage(body, reply),
    }


def _stream_chunks(model: str, body: dict[str, Any], reply: ScriptedReply) -> Iterator[dict[str, Any]]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    yield chunk({"role": "assistant", "content": ""})
    if reply.text:
        half = max(1, len(reply.text) // 2)
        yield chunk({"content": reply.text[:half]})
        if reply.text[half:]:
            yield chunk({"content": reply.text[half:]})
    for index, call in enumerate(_tool_call_objects(reply)):
        head = {"index": index, "id": call["id"], "type": "function"}
        yield chunk({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]})
    usage = _usage(body, reply)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    final = chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        yield final
        yield {**base, "choices": [], "usage": usage}
    else:
        yield {**final, "usage": usage}


def _make_handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeLLM/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send_json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _path(self) -> str:
            path = self.path.split("?", 1)[0].rstrip("/")
            return path[3:] if path.startswith("/v1/") else path

        def do_GET(self) -> None:
            path = self._path()
            if path == "/models":
                self._send_json(
                    200,
                    {"object": "list", "data": [{"id": fake.model, "object": "model", "owned_by": "fake"}]},
                )
            elif path.startswith("/models/"):
                self._send_json(200, {"id": path[len("/models/") :], "object": "model", "owned_by": "fake"})
            elif path == "/_fake/requests":
                self._send_json(200, fake.requests)
            elif path in ("", "/health"):
                self._send_json(200, {"status": "ok"})
            else:
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self._path() == "/_fake/control":
                self._control(raw)
                return
            if self._path() != "/chat/completions":
                self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body is not an object")
            except ValueError as exc:
                self._send_json(400, {"error": {"message": f"bad JSON: {exc}", "type": "invalid_request"}})
                return
            failure = fake._record(body)
            fake._sleep()
            if failure is not None:
                self._send_json(
                    failure.status,
                    {"error": {"message": failure.message, "type": "server_error", "code": failure.status}},
                )
                return
            reply = fake._reply_for(body)
            model = str(body.get("model") or fake.model)
            if body.get("stream"):
                self._stream(model, body, reply)
            else:
                self._send_json(200, _completion(model, body, reply))

        def _control(self, raw: bytes) -> None:
            try:
                fake.apply_control(json.loads(raw or b"{}"))
            except (ValueError, TypeError, KeyError) as exc:
                self._send_json(400, {"error": {"message": str(exc), "type": "invalid_request"}})
                return
            self._send_json(200, {"ok": True, "requests": len(fake.requests)})

        def _stream(self, model: str, body: dict[str, Any], reply: ScriptedReply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            write: Callable[[bytes], None] = self._write_chunk
            for item in _stream_chunks(model, body, reply):
                write(f"data: {json.dumps(item)}\n\n".encode())
            write(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. the agent was interrupted mid-call)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible LLM on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--title", default="Fake title", help="answer for requests without tools")
    args = parser.parse_args(argv)
    llm = FakeLLM(port=args.port, delay_seconds=args.delay, title=args.title).start()
    print(f"fake LLM listening on {llm.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        llm.stop()


if __name__ == "__main__":
    main()
