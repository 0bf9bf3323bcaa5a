"""Liveness of a sandbox's process that this Threadline did not start (re-attached after a restart): shown to
be the sandbox's by its environment once, then watched through a pidfd (`backend.VerifiedProcesses`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from threadline.sandboxes.backend import SANDBOX_ENV, ProcessBackend

SANDBOX = "a" * 32


@pytest.fixture
def backend(tmp_path: Path) -> ProcessBackend:
    # A backend that launched nothing: every process it is asked about is "re-attached".
    return ProcessBackend(tmp_path / "runtime", tmp_path / "sandboxes")


@pytest.fixture
def tagged() -> Iterator[subprocess.Popen[bytes]]:
    """A process tagged as the sandbox's, as an agent server launched by an earlier Threadline is."""
    proc = subprocess.Popen(["sleep", "120"], env={**os.environ, SANDBOX_ENV: SANDBOX})
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_tagged_process_is_alive_until_it_exits_even_unreaped(
    backend: ProcessBackend, tagged: subprocess.Popen[bytes]
) -> None:
    assert backend.is_alive(SANDBOX, tagged.pid)
    assert backend._verified.alive(SANDBOX, tagged.pid) is True  # watched: later checks read no /proc file
    assert backend.is_alive(SANDBOX, tagged.pid)
    tagged.kill()
    # Not reaped yet (a zombie still has its pid and /proc entry): it has exited all the same.
    wait_for(lambda: not backend.is_alive(SANDBOX, tagged.pid), timeout=10, what="the exit seen")
    assert backend._verified.alive(SANDBOX, tagged.pid) is None  # forgotten, its pidfd closed
    tagged.wait(10)
    assert not backend.is_alive(SANDBOX, tagged.pid)


def test_a_process_of_another_sandbox_or_untagged_is_not_the_sandboxs(
    backend: ProcessBackend, tagged: subprocess.Popen[bytes]
) -> None:
    assert not backend.is_alive("b" * 32, tagged.pid)
    assert not backend.is_alive(SANDBOX, os.getpid())  # alive, but not tagged
    assert backend._verified.alive("b" * 32, tagged.pid) is None
    assert backend._verified.alive(SANDBOX, os.getpid()) is None


def test_another_pid_for_the_same_sandbox_is_checked_again(
    backend: ProcessBackend, tagged: subprocess.Popen[bytes]
) -> None:
    """A record's pid changes on resume: the new pid is verified, not taken from the old one's watch."""
    assert backend.is_alive(SANDBOX, tagged.pid)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert not backend.is_alive(SANDBOX, other.pid)  # untagged: not the sandbox's, whatever was watched
    finally:
        other.kill()
        other.wait(10)


def test_closing_the_backend_closes_the_pidfds(backend: ProcessBackend, tagged: subprocess.Popen[bytes]) -> None:
    assert backend.is_alive(SANDBOX, tagged.pid)
    fd = backend._verified._watched[SANDBOX][1]
    os.fstat(fd)  # open
    asyncio.run(backend.close())
    assert not backend._verified._watched
    with pytest.raises(OSError):
        os.fstat(fd)
