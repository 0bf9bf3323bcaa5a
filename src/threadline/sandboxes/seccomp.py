"""The seccomp filter every isolated sandbox runs under: creating a user namespace fails.

Unprivileged user namespaces are the usual door to kernel privilege escalations (they give a process
"root" over namespaces of its own, and with it kernel code paths otherwise reserved for real root), and
they would let a sandbox make mount and network namespaces of its own. When Threadline is not root,
bubblewrap's `--disable-userns` already refuses them; when it is root, each sandbox has a uid of its own
but no user namespace, and this filter is the only guard. It is applied in both modes (defence in depth).

The filter (classic BPF, handed to bubblewrap with `--seccomp FD`; bubblewrap loads it just before it
starts the sandbox's first process, so every process of the sandbox inherits it):

- `unshare` and `clone` with CLONE_NEWUSER in their flags -> EPERM;
- `clone3` -> ENOSYS: its flags are behind a pointer, which seccomp cannot read; C libraries then fall
  back to `clone` (glibc >= 2.34, as under Flatpak and Docker), which is checked;
- everything else is allowed (ordinary fork, vfork, threads, posix_spawn).

Architectures: x86_64 (x32 numbers, `nr | 0x40000000`, are folded onto the 64-bit ones so they cannot
bypass), i386 (what `int 0x80` reaches from a 64-bit process), aarch64 and 32-bit arm. A call of an
architecture not listed is allowed rather than killed: its numbers are unknown here, and killing would
break programs. On an x86_64 or aarch64 host that leaves no way around the filter (those are every ABI
such a kernel runs); on a host of another architecture the filter refuses nothing, and the status says so
(`enforcement`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# Classic BPF instructions (linux/filter.h, linux/bpf_common.h), only those this program uses.
BPF_LD_W_ABS = 0x20  # A = 32-bit word of seccomp_data at offset k
BPF_ALU_AND_K = 0x54  # A &= k
BPF_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
BPF_JSET_K = 0x45  # pc += (A & k) ? jt : jf
BPF_RET_K = 0x06  # return k

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

CLONE_NEWUSER = 0x10000000
X32_SYSCALL_BIT = 0x40000000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]. The flags of unshare and
# clone are args[0] on every architecture below; CLONE_NEWUSER is in its low word, first on little-endian.
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0_LOW = 16

# struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (native byte order: the kernel reads it as it is).
_INSTRUCTION = struct.Struct("=HBBI")


@dataclass(frozen=True)
class Architecture:
    name: str
    audit_arch: int
    unshare: int
    clone: int
    clone3: int
    # Bits cleared from the syscall number before it is compared (x86_64: the x32 bit).
    number_mask: int = 0xFFFFFFFF


ARCHITECTURES = (
    Architecture("x86_64", 0xC000003E, unshare=272, clone=56, clone3=435, number_mask=0xFFFFFFFF & ~X32_SYSCALL_BIT),
    Architecture("i386", 0x40000003, unshare=310, clone=120, clone3=435),
    Architecture("aarch64", 0xC00000B7, unshare=97, clone=220, clone3=435),
    Architecture("arm", 0x40000028, unshare=337, clone=120, clone3=435),
)

# Hosts whose every system-call ABI is in ARCHITECTURES (os.uname().machine).
COVERED_MACHINES = ("x86_64", "aarch64")


def enforcement() -> str:
    """What the filter does on this host, for `threadline runtime status` and /server_info."""
    machine = os.uname().machine
    if machine not in COVERED_MACHINES:
        return f"not refused by seccomp: the filter has no system-call numbers for {machine}"
    return (
        "refused (seccomp: unshare/clone with CLONE_NEWUSER fail with EPERM, "
        "clone3 with ENOSYS so C libraries use clone)"
    )


@dataclass(frozen=True)
class Instruction:
    code: int
    k: int = 0
    # Where a conditional jump goes: a label, or None for the next instruction.
    if_true: str | None = None
    if_false: str | None = None


def _assemble(items: list[Instruction | str]) -> list[tuple[int, int, int, int]]:
    """Strings are labels (of the instruction after them); jumps to them become forward offsets."""
    labels: dict[str, int] = {}
    instructions: list[Instruction] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)

    def offset(at: int, label: str | None) -> int:
        if label is None:
            return 0
        distance = labels[label] - (at + 1)
        if not 0 <= distance <= 255:
            raise ValueError(f"jump to {label} out of range for classic BPF: {distance}")
        return distance

    return [
        (insn.code, offset(at, insn.if_true), offset(at, insn.if_false), insn.k) for at, insn in enumerate(instructions)
    ]


def program() -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions."""
    allow = Instruction(BPF_RET_K, SECCOMP_RET_ALLOW)
    items: list[Instruction | str] = [Instruction(BPF_LD_W_ABS, OFFSET_ARCH)]
    items += [Instruction(BPF_JEQ_K, arch.audit_arch, if_true=arch.name) for arch in ARCHITECTURES]
    items.append(allow)  # an architecture not listed
    for arch in ARCHITECTURES:
        items += [arch.name, Instruction(BPF_LD_W_ABS, OFFSET_NR)]
        if arch.number_mask != 0xFFFFFFFF:
            items.append(Instruction(BPF_ALU_AND_K, arch.number_mask))
        items += [
            Instruction(BPF_JEQ_K, arch.clone3, if_true="no clone3"),
            Instruction(BPF_JEQ_K, arch.unshare, if_true="check flags"),
            Instruction(BPF_JEQ_K, arch.clone, if_true="check flags"),
            allow,
        ]
    items += [
        "check flags",
        Instruction(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
        Instruction(BPF_JSET_K, CLONE_NEWUSER, if_true="refuse"),
        allow,
        "refuse",
        Instruction(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM),
        "no clone3",
        Instruction(BPF_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS),
    ]
    return _assemble(items)


@functools.cache
def compiled() -> bytes:
    """The filter as the kernel takes it (what bubblewrap reads from `--seccomp FD`)."""
    return b"".join(_INSTRUCTION.pack(*instruction) for instruction in program())


@contextlib.contextmanager
def filter_fd() -> Iterator[int]:
    """A descriptor bubblewrap reads the compiled filter from (`--seccomp FD`, handed over with
    `pass_fds`): the read end of a pipe already holding all of it, its write end closed. Closed on exit
    (the started bubblewrap keeps its own copy)."""
    data = compiled()
    read_end, write_end = os.pipe()
    try:
        try:
            # Some hundred bytes: far below a pipe's buffer, so this neither blocks nor writes short.
            written = os.write(write_end, data)
        finally:
            os.close(write_end)  # bubblewrap reads up to the end of the pipe
        if written != len(data):
            raise OSError(f"the seccomp filter did not fit in a pipe ({written} of {len(data)} bytes)")
        yield read_end
    finally:
        os.close(read_end)
