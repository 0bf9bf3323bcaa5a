"""The sandbox's seccomp filter (`sandboxes/seccomp.py`), checked two ways without an agent server:

- its program, run by a small classic-BPF interpreter written here from linux/filter.h, on every
  architecture it knows and one it does not (the only way to see aarch64 and arm decisions on this host);
- the compiled filter loaded by bubblewrap (`--seccomp FD`, as the isolated backend does) under a small
  Python probe: creating a user namespace fails in every way the host's kernel offers (unshare, clone, x32
  numbers, the i386 entry `int 0x80`), clone3 answers ENOSYS, ordinary processes and threads still work.

tests/test_sandbox_escape.py tries the same from inside a real agent server's sandbox."""

from __future__ import annotations

import os
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from threadline.sandboxes import seccomp
from threadline.sandboxes.isolated import check_bwrap

# Written from the kernel headers, not taken from the module under test.
LD_W_ABS, ALU_AND_K, JEQ_K, JSET_K, RET_K = 0x20, 0x54, 0x15, 0x45, 0x06
ALLOW = 0x7FFF0000
EPERM = 0x00050000 | 1
ENOSYS = 0x00050000 | 38
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17
X86_64, I386, AARCH64, ARM, PPC64LE = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028, 0xC0000015
X32 = 0x40000000
# (unshare, clone, clone3, a call that makes no namespace) per architecture.
NUMBERS = {
    X86_64: (272, 56, 435, 39),
    I386: (310, 120, 435, 20),
    AARCH64: (97, 220, 435, 172),
    ARM: (337, 120, 435, 20),
}


def run_filter(arch: int, nr: int, arg0: int = 0) -> int:
    """What the filter answers for one system call (struct seccomp_data: nr, arch, ip, args[6])."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    program = list(struct.iter_unpack("=HBBI", seccomp.compiled()))
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]  # running off the end (IndexError) is a broken program
        if code == LD_W_ABS:
            accumulator, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif code == ALU_AND_K:
            accumulator, pc = accumulator & k, pc + 1
        elif code == JEQ_K:
            pc += 1 + (jt if accumulator == k else jf)
        elif code == JSET_K:
            pc += 1 + (jt if accumulator & k else jf)
        elif code == RET_K:
            return int(k)
        else:
            raise AssertionError(f"instruction {code:#x} at {pc} is not one this filter should use")


def test_the_program_is_one_the_kernel_accepts() -> None:
    program = list(struct.iter_unpack("=HBBI", seccomp.compiled()))
    assert 0 < len(program) <= 4096 and len(seccomp.compiled()) == 8 * len(program)
    assert program[0] == (LD_W_ABS, 0, 0, 4), "the architecture must be checked first"
    assert program[-1][0] == RET_K
    for at, (code, jt, jf, _) in enumerate(program):
        if code in (JEQ_K, JSET_K):
            assert at + 1 + max(jt, jf) < len(program), f"jump out of the program at {at}"
        else:
            assert jt == jf == 0


@pytest.mark.parametrize("arch", list(NUMBERS), ids=["x86_64", "i386", "aarch64", "arm"])
def test_user_namespaces_are_refused_and_nothing_else(arch: int) -> None:
    unshare, clone, clone3, harmless = NUMBERS[arch]
    assert run_filter(arch, unshare, CLONE_NEWUSER) == EPERM
    assert run_filter(arch, unshare, CLONE_NEWUSER | CLONE_NEWNS) == EPERM
    assert run_filter(arch, clone, CLONE_NEWUSER | SIGCHLD) == EPERM
    assert run_filter(arch, clone3) == ENOSYS
    assert run_filter(arch, unshare, CLONE_NEWNS) == ALLOW  # other namespaces: the missing capabilities refuse
    assert run_filter(arch, clone, SIGCHLD) == ALLOW  # fork
    assert run_filter(arch, clone, 0x003D0F00) == ALLOW  # a thread (glibc's flags)
    assert run_filter(arch, harmless, CLONE_NEWUSER) == ALLOW  # the flag matters only to unshare and clone


def test_x32_numbers_cannot_bypass_and_numbers_are_per_architecture() -> None:
    assert run_filter(X86_64, X32 | 272, CLONE_NEWUSER) == EPERM
    assert run_filter(X86_64, X32 | 56, CLONE_NEWUSER | SIGCHLD) == EPERM
    assert run_filter(X86_64, X32 | 435) == ENOSYS
    # 310 is unshare on i386 only; on x86_64 it is process_vm_readv.
    assert run_filter(X86_64, 310, CLONE_NEWUSER) == ALLOW
    assert run_filter(I386, 272, CLONE_NEWUSER) == ALLOW


def test_an_unknown_architecture_is_let_through_not_killed() -> None:
    assert run_filter(PPC64LE, 1105, CLONE_NEWUSER) == ALLOW
    assert run_filter(PPC64LE, 435) == ALLOW


# -- the compiled filter under bubblewrap -----------------------------------------------------------

# Each probe prints what one system call answered: "ok" or the errno's name. Python 3.11's os has no
# unshare, hence ctypes. A clone that succeeds (no filter) leaves its child to exit at once.
PROBE = r"""
import ctypes, errno, mmap, os, subprocess, sys, threading

libc = ctypes.CDLL(None, use_errno=True)
which = sys.argv[1]
UNSHARE, CLONE, CLONE3 = {"x86_64": (272, 56, 435), "aarch64": (97, 220, 435)}[os.uname().machine]
CLONE_NEWUSER, SIGCHLD, X32 = 0x10000000, 17, 0x40000000


def syscall(*numbers):
    result = libc.syscall(*[ctypes.c_long(n) for n in numbers])
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]


def i386_call(number, ebx):
    # push rbx; mov eax, number; mov ebx, arg; int 0x80; pop rbx; ret  (the i386 entry, from 64-bit code)
    code = b"\x53\xb8" + number.to_bytes(4, "little") + b"\xbb" + ebx.to_bytes(4, "little") + b"\xcd\x80\x5b\xc3"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    result = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
    return "ok" if result >= 0 else errno.errorcode[-result]


if which == "unshare":
    print(syscall(UNSHARE, CLONE_NEWUSER))
elif which == "clone":
    pid = libc.syscall(*[ctypes.c_long(n) for n in (CLONE, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)])
    if pid == 0:  # the child, in a user namespace of its own: the filter failed
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
    print("ok" if pid > 0 else errno.errorcode[ctypes.get_errno()])
elif which == "clone3":
    print(syscall(CLONE3, 0, 0))
elif which == "x32-unshare":
    print(syscall(X32 | UNSHARE, CLONE_NEWUSER))
elif which == "i386-unshare":
    print(i386_call(310, CLONE_NEWUSER))
elif which == "i386-getpid":
    print(i386_call(20, 0))
elif which == "processes":
    ran = []
    thread = threading.Thread(target=ran.append, args=("thread",))
    thread.start()
    thread.join()
    child = subprocess.run(["echo", "child"], capture_output=True, text=True, check=True).stdout.strip()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print("ok" if ran == ["thread"] and child == "child" and forked == 7 else f"broken: {ran} {child} {forked}")
"""


def _probe(which: str, *, filtered: bool = True, as_nobody: bool = False) -> str:
    """Run one probe in a bubblewrap sandbox (with the filter, as the isolated backend loads it). `as_nobody`:
    bubblewrap started by an unprivileged user (root's tests switch to `nobody` with setpriv), as Threadline
    runs it when it is not root: in a user namespace of the sandbox's own."""
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    prefix: list[str] = []
    python = sys.executable
    if as_nobody and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        python_for_all = _interpreter_anyone_can_run()
        if setpriv is None or python_for_all is None:
            pytest.skip("needs setpriv and a python3 that an unprivileged user can run")
        prefix, python = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"], python_for_all
    command = [*prefix, bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid"]
    if os.geteuid() != 0 or prefix:
        command.append("--unshare-user")
    with seccomp.filter_fd() as seccomp_fd:
        if filtered:
            command += ["--seccomp", str(seccomp_fd)]
        result = subprocess.run(
            [*command, "--", python, "-I", "-c", PROBE, which],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            pass_fds=(seccomp_fd,),
            cwd="/",
        )
    if prefix and result.returncode != 0 and "namespace" in result.stderr.lower():
        pytest.skip(f"unprivileged users cannot make user namespaces here: {result.stderr.strip()}")
    assert result.returncode == 0, f"probe {which}: exit {result.returncode}: {result.stderr}"
    return result.stdout.strip()


def _interpreter_anyone_can_run() -> str | None:
    """A python3 on PATH (this one first) that any user may run: the file and every directory above it
    executable by others (root's own interpreter often sits under a private home)."""
    for candidate in (sys.executable, shutil.which("python3"), shutil.which("python3", path=os.defpath)):
        if candidate is None:
            continue
        real = os.path.realpath(candidate)
        parts = [real, *(str(p) for p in Path(real).parents)]
        if all(os.stat(part).st_mode & 0o001 for part in parts):
            return real
    return None


needs_bwrap = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64") or shutil.which("bwrap") is None or check_bwrap() is not None,
    reason="needs bubblewrap that can make a sandbox here, on x86_64 or aarch64",
)


@needs_bwrap
@pytest.mark.parametrize(("which", "expected"), [("unshare", "EPERM"), ("clone", "EPERM"), ("clone3", "ENOSYS")])
def test_under_bubblewrap_a_user_namespace_cannot_be_created(which: str, expected: str) -> None:
    assert _probe(which) == expected


@needs_bwrap
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 and i386 entries exist on x86_64 only")
def test_under_bubblewrap_the_x32_and_i386_entries_are_refused_too() -> None:
    assert _probe("x32-unshare") == "EPERM"
    if _probe("i386-getpid", filtered=False) != "ok":
        pytest.skip("this kernel has no i386 entry (IA32 emulation off)")
    assert _probe("i386-unshare") == "EPERM"


@needs_bwrap
def test_under_bubblewrap_threads_fork_and_subprocesses_still_work() -> None:
    assert _probe("processes") == "ok"


@needs_bwrap
def test_for_an_unprivileged_server_the_filter_refuses_user_namespaces_too() -> None:
    """Threadline not run as root: bubblewrap makes the sandbox's user namespace, and inside it the filter
    still refuses another (a nested one would hand the agent a root of its own there). Without the filter the
    same probe makes one."""
    assert _probe("unshare", as_nobody=True) == "EPERM"
    assert _probe("clone", as_nobody=True) == "EPERM"
    assert _probe("clone3", as_nobody=True) == "ENOSYS"
    assert _probe("processes", as_nobody=True) == "ok"
    assert _probe("unshare", as_nobody=True, filtered=False) == "ok"
