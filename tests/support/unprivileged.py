"""Running a program as an unprivileged user, started by root, on a host laid out for root.

The interpreter, the project's venv and the agent runtime may live below a directory only root can
traverse (`/root` is 0700 while all below it is world-readable). Nothing of the host is changed: the
program gets a private mount namespace in which each such directory is covered by an empty tmpfs (0755)
into which only the paths it needs are bind-mounted back; then it drops to the user with setpriv.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

TOOLS = ("unshare", "setpriv", "mount")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _traversable(directory: Path, uid: int) -> bool:
    info = directory.stat()
    # The program runs with no supplementary groups: only the owner's or everyone's bits count.
    bit = stat.S_IXUSR if info.st_uid == uid else stat.S_IXOTH
    return bool(info.st_mode & bit)


def blocked_ancestor(path: Path, uid: int) -> Path | None:
    """The topmost ancestor of `path` that `uid` cannot traverse; None when the way is open."""
    for parent in reversed(path.parents):
        if not _traversable(parent, uid):
            return parent
    return None


def reopen_script(paths: Iterable[Path], uid: int) -> str:
    """Shell lines (run as root in a private mount namespace) that make each of `paths` reachable by `uid`."""
    wanted = sorted({Path(os.path.realpath(p)) for p in paths})
    # A path inside another one comes along with it.
    wanted = [p for p in wanted if not any(q != p and q in p.parents for q in wanted)]
    by_blocked: dict[Path, list[Path]] = {}
    for path in wanted:
        blocked = blocked_ancestor(path, uid)
        if blocked is not None:
            by_blocked.setdefault(blocked, []).append(path)
    q = shlex.quote
    lines = ["set -eu", "umask 022"]
    for blocked, inside in by_blocked.items():
        # The original stays reachable at a staging point while the tmpfs covers it.
        lines += ['stage="$(mktemp -d)"', f'mount --rbind {q(str(blocked))} "$stage"']
        lines.append(f"mount -t tmpfs -o mode=0755 threadline-reopen {q(str(blocked))}")
        for path in inside:
            target, relative = q(str(path)), q(str(path.relative_to(blocked)))
            if path.is_dir():
                lines.append(f"mkdir -p {target}")
            else:
                lines.append(f"mkdir -p {q(str(path.parent))} && touch {target}")
            lines.append(f'mount --rbind "$stage"/{relative} {target}')
        lines += ['umount -R "$stage"', 'rmdir "$stage"']
    return "\n".join(lines)


def command_as(uid: int, gid: int, readable: Iterable[Path]) -> list[str]:
    """A prefix for a command: run it as `uid`:`gid` (no other groups), with `readable` reachable."""
    script = reopen_script(readable, uid)
    setpriv = f"exec setpriv --reuid {uid} --regid {gid} --clear-groups -- " + '"$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", f"{script}\n{setpriv}", "sh"]
