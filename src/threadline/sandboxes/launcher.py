"""The first process inside an isolated sandbox (standard library only: it runs on the agent runtime's Python).

Started by bubblewrap in the sandbox's own mount, pid and network namespaces, already under the sandbox's
seccomp filter (`seccomp.py`: no user namespaces, for it and everything it starts). It
1. drops to the sandbox's own user when started as root (`--uid/--gid`), sets no-new-privileges and the
   sandbox's resource limits, so nothing it starts can gain privileges;
2. starts the agent server on 127.0.0.1 of the sandbox's private network;
3. relays the host's requests to it: Threadline created and listens on a Unix socket outside the sandbox
   and handed the listening descriptor in (`--agent-fd`), so no path inside the sandbox can be swapped;
4. relays the sandbox's outbound HTTP(S) proxy port to the egress socket Threadline serves
   (`--proxy-port`, `--egress-socket`): the only way out of the sandbox's network;
5. forwards SIGTERM to the agent server and exits with it (bubblewrap then ends the whole sandbox).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
_LIMITS = {
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
}


def drop_privileges(uid: int | None, gid: int | None) -> None:
    if uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setresgid(gid if gid is not None else uid, gid if gid is not None else uid, gid if gid is not None else uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("launcher: could not drop privileges")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit("launcher: could not set no-new-privileges")


def clear_stale_leases(conversations: str | None) -> None:
    """Drop the agent server's conversation leases left by this sandbox's previous run. Each run of a
    sandbox has its own pid namespace, so the new agent server gets the pid the old one had and would
    take the old lease for its own, live one, and not load the conversation until the lease expired.
    Nothing else runs in the sandbox yet, so every lease here is stale."""
    if not conversations or not os.path.isdir(conversations):
        return
    for entry in os.scandir(conversations):
        if entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(entry.path, "owner_lease.json"))


def apply_limits(specs: list[str]) -> None:
    for spec in specs:
        name, _, value = spec.partition("=")
        limit = int(value)
        resource.setrlimit(_LIMITS[name], (limit, limit))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close the other side (also used by the host's egress proxy)."""
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _join(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def relay(
    agent_fd: int, agent_port: int, proxy_port: int, egress_socket: str, child: subprocess.Popen[bytes]
) -> int:
    async def to_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The agent server may still be booting: retry for a moment, then give up on this connection.
        for _ in range(100):
            try:
                upstream = await asyncio.open_connection("127.0.0.1", agent_port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            writer.close()
            return
        await _join((reader, writer), upstream)

    async def to_egress(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_unix_connection(egress_socket)
        except OSError:
            writer.close()
            return
        await _join((reader, writer), upstream)

    listener = socket.socket(fileno=agent_fd)
    listener.setblocking(False)
    agent_server = await asyncio.start_server(to_agent, sock=listener)
    proxy_server = await asyncio.start_server(to_egress, "127.0.0.1", proxy_port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    waiter: asyncio.Future[object] = loop.run_in_executor(None, child.wait)
    stop_task: asyncio.Future[object] = asyncio.ensure_future(stopping.wait())
    await asyncio.wait([waiter, stop_task], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        child.terminate()
        await waiter
    agent_server.close()
    proxy_server.close()
    return child.returncode if child.returncode is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threadline-sandbox-launcher")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--agent-fd", type=int, required=True)
    parser.add_argument("--agent-port", type=int, default=8000)
    parser.add_argument("--proxy-port", type=int, default=3128)
    parser.add_argument("--egress-socket", required=True)
    parser.add_argument("--conversations", help="the agent server's conversations directory")
    parser.add_argument("--limit", action="append", default=[], help="NAME=VALUE rlimit (nproc, nofile, ...)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    drop_privileges(args.uid, args.gid)
    apply_limits(args.limit)
    clear_stale_leases(args.conversations)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    return asyncio.run(relay(args.agent_fd, args.agent_port, args.proxy_port, args.egress_socket, child))


if __name__ == "__main__":
    sys.exit(main())
