"""The egress proxy: the only way out of an isolated sandbox's network.

Each sandbox gets its own Unix socket (so the proxy always knows which sandbox asks). Inside the sandbox
it is the HTTP(S) proxy (`HTTP_PROXY`/`HTTPS_PROXY`). It serves `CONNECT host:port` (HTTPS, git over
HTTPS) and absolute-form HTTP requests, and refuses (403, logged) every destination not allowed:

- the operator's allowlist (`THREADLINE_SANDBOX_EGRESS_ALLOW`), the server-wide LLM base URL and the git
  host of `THREADLINE_GIT_URL_TEMPLATE`: trusted, may be on any address;
- per sandbox, what a user chose (their own LLM base URL, a public git host): public addresses only, so
  a user cannot point their sandbox at the host's loopback services or the private network;
- the agent server's callbacks: the host name `threadline.internal`, only the callback paths, relayed
  to this Threadline process.

A destination is checked by the addresses its name resolves to, and the connection goes to the address
that was checked (no second lookup an attacker could rebind).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from threadline.sandboxes.launcher import pipe

log = logging.getLogger("threadline.sandboxes.egress")

INTERNAL_HOST = "threadline.internal"
# Paths of Threadline a sandbox may call (its callbacks and its secrets lookup); nothing else.
_INTERNAL_PATHS = re.compile(r"^/api/v1/(webhooks/|sandboxes/[^/]+/settings/secrets)")
_MAX_HEAD = 64 * 1024
_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Rule:
    """`host`, `host:port`, `*.example.com` or `*` (every public address)."""

    host: str
    port: int | None
    trusted: bool

    @classmethod
    def parse(cls, text: str, *, trusted: bool) -> Rule | None:
        text = text.strip().lower()
        if not text:
            return None
        if "://" in text:
            parts = urlsplit(text)
            if not parts.hostname:
                return None
            default = 443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None
            return cls(parts.hostname, parts.port or default, trusted)
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit() and not host.endswith(":"):
            return cls(host.strip("[]"), int(port), trusted)
        return cls(text.strip("[]"), None, trusted)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass
class Refusal:
    sandbox_id: str
    destination: str
    reason: str
    at: float = field(default_factory=time.time)


class EgressPolicy:
    """What one sandbox may reach."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = list(rules)

    def add(self, rule: Rule) -> bool:
        """Add a rule; False when it was there already."""
        if rule in self.rules:
            return False
        self.rules.append(rule)
        return True

    def matching(self, host: str, port: int) -> list[Rule]:
        return [r for r in self.rules if r.matches(host, port)]

    @staticmethod
    def decide(matching: list[Rule], addresses: list[str]) -> str | None:
        """For a destination some rules match: None when allowed, else the reason it is not."""
        if any(r.trusted for r in matching):
            return None
        private = [a for a in addresses if not is_public(a)]
        if private:
            return f"resolves to a non-public address ({private[0]}) and is not allowed by the operator"
        return None


class EgressProxy:
    """The host side: one Unix-socket listener per sandbox, sharing one set of operator rules."""

    def __init__(self, base_rules: list[Rule], internal_target: tuple[str, int]) -> None:
        self.base_rules = base_rules
        self.internal_target = internal_target
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._policies: dict[str, EgressPolicy] = {}
        self.refusals: deque[Refusal] = deque(maxlen=1000)

    def policy(self, sandbox_id: str) -> EgressPolicy:
        if sandbox_id not in self._policies:
            self._policies[sandbox_id] = EgressPolicy(self.base_rules)
        return self._policies[sandbox_id]

    async def serve(self, sandbox_id: str, path: Path) -> None:
        await self.close(sandbox_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(sandbox_id, reader, writer)

        server = await asyncio.start_unix_server(handle, path=str(path))
        # The sandbox's own user must connect; nobody else can reach the (0700) directory above.
        os.chmod(path, 0o666)
        self._servers[sandbox_id] = server

    async def close(self, sandbox_id: str) -> None:
        server = self._servers.pop(sandbox_id, None)
        if server is not None:
            server.close()
        self._policies.pop(sandbox_id, None)

    async def close_all(self) -> None:
        for sandbox_id in list(self._servers):
            await self.close(sandbox_id)

    def _refuse(self, sandbox_id: str, destination: str, reason: str) -> bytes:
        self.refusals.append(Refusal(sandbox_id, destination, reason))
        log.warning("egress refused: sandbox %s -> %s: %s", sandbox_id, destination, reason)
        body = f"threadline egress proxy: {destination} refused: {reason}\n".encode()
        return (
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _handle(self, sandbox_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        if len(head) > _MAX_HEAD:
            writer.close()
            return
        try:
            await self._forward(sandbox_id, head, reader, writer)
        except (ConnectionError, OSError) as exc:
            log.info("egress connection of sandbox %s ended: %s", sandbox_id, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(
        self, sandbox_id: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request_line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ")
        except ValueError:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host = host.strip("[]").lower()
            port = int(port_text) if port_text.isdigit() else 443
            path = None
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                writer.write(self._refuse(sandbox_id, target[:200], "only absolute http:// URLs and CONNECT"))
                return
            host = parts.hostname.lower()
            port = parts.port or 80
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        destination = f"{host}:{port}"

        if host == INTERNAL_HOST:
            if path is None or not _INTERNAL_PATHS.match(path):
                writer.write(self._refuse(sandbox_id, f"{destination}{path or ''}", "not a callback path"))
                return
            address, port = self.internal_target
        else:
            matching = self.policy(sandbox_id).matching(host, port)
            if not matching:
                writer.write(self._refuse(sandbox_id, destination, "not in the egress allowlist"))
                return
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                writer.write(self._refuse(sandbox_id, destination, f"cannot resolve ({exc})"))
                return
            reason = EgressPolicy.decide(matching, addresses)
            if reason is not None:
                writer.write(self._refuse(sandbox_id, destination, reason))
                return
            address = addresses[0]
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(address, port), _CONNECT_TIMEOUT)
        try:
            if path is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                up_writer.write(_origin_form(method, path, version, rest))
            # Bytes sent after the head (a request body) are still in `reader`: the pipe carries them on.
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


def _origin_form(method: str, path: str, version: str, header_block: bytes) -> bytes:
    """The request as the origin server expects it: origin-form target, no proxy headers, one request."""
    lines = [f"{method} {path} {version}".encode("latin-1")]
    for line in header_block.split(b"\r\n"):
        if not line:
            continue
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"):
            continue
        lines.append(line)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
