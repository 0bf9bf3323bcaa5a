"""Per-sandbox cgroups: memory, CPU and process-count limits enforced by the kernel.

At start `detect()` finds which cgroup hierarchy this process may use (nothing is written):

- **cgroup v2**: the server's own cgroup (the `0::` line of /proc/self/cgroup) with `memory`, `cpu` and
  `pids` in its `cgroup.controllers`, writable, and able to give them to children: they are already in its
  `cgroup.subtree_control`, or it has no processes of its own (v2's "no internal processes" rule). When the
  server's cgroup has processes, its parent is used instead if the server's cgroup is that parent's only
  child and the parent has no processes (systemd's `Delegate=yes` with `DelegateSubgroup=`). Nothing of the
  server is ever moved.
- **cgroup v1**: writable `memory`, `cpu` (CFS bandwidth) and `pids` hierarchies, each at this process's own
  cgroup in that hierarchy.
- **none**: the backend keeps its rlimits and memory watchdog.

`SandboxCgroups.prepare()` then makes the parent `threadline-<hash of the sandboxes root>` (so two
Threadline homes on one machine never share one) and, per sandbox, `create()` makes `<parent>/<sandbox id>`
with its limits. The sandbox's first process joins it before it executes anything (`enter_command`: a
shell writes its own pid to `cgroup.procs`, then execs bubblewrap), so no process of the sandbox ever
runs outside it. `remove()` kills what is left in it and removes it.

A Threadline restarted in another cgroup (a systemd unit moved, a start from another shell) derives other
parents than the run that launched its sandboxes. So a re-attached sandbox's cgroup is taken from where its
process actually is (`adopt()`: `/proc/<pid>/cgroup`, only a `threadline-<this hash>/<its id>` leaf), and
the parents every run used are remembered in `<sandboxes root>/.cgroup-parents.json`, so that stale cgroups
under an old parent are removed too (`remove_stale()`), and the old parent with them once it is empty.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger("threadline.sandboxes.cgroups")

CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
# The kernel refuses a CFS quota below 1 ms per period.
_MIN_QUOTA_US = 1000
# In the sandboxes root: the parent cgroups this home's runs have used (why a file: SandboxCgroups,
# "the parents of earlier runs").
PARENTS_FILE = ".cgroup-parents.json"


@dataclass(frozen=True)
class Hierarchy:
    """Where this process's own cgroup is, in one mounted hierarchy (v2: the only one)."""

    controllers: tuple[str, ...]
    base: Path
    # The mount the hierarchy is seen through: where a path of /proc/<pid>/cgroup is on disk.
    mount_root: str
    mount_point: Path


@dataclass(frozen=True)
class Detection:
    """Which cgroup hierarchy sandboxes can use here: version 2, 1, or None with the reason."""

    version: int | None
    hierarchies: tuple[Hierarchy, ...] = ()
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.version is not None

    def describe(self) -> str:
        if self.version is None:
            return f"not used: {self.reason}"
        where = ", ".join(str(h.base) for h in self.hierarchies)
        return f"cgroup v{self.version} ({where})"


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


@dataclass(frozen=True)
class _Mount:
    root: str
    point: Path
    fstype: str
    read_only: bool
    super_options: tuple[str, ...]


def _mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or len(fields) < 6:
            continue
        options = fields[5].split(",")
        mounts.append(
            _Mount(
                root=_unescape(fields[3]),
                point=Path(_unescape(fields[4])),
                fstype=fields[dash + 1],
                read_only="ro" in options,
                super_options=tuple(fields[dash + 3].split(",")),
            )
        )
    return mounts


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """Controller (v1) or "" (v2) -> this process's cgroup path in that hierarchy."""
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            own[""] = path
        for controller in controllers.split(","):
            if controller:
                own[controller] = path
    return own


def _under(mount: _Mount, path: str) -> Path | None:
    """The directory of cgroup `path` in `mount` (None when the mount does not show it)."""
    return _directory(mount.root, mount.point, path)


def _directory(mount_root: str, mount_point: Path, path: str) -> Path | None:
    root = mount_root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return mount_point / path[len(root) :].lstrip("/")


def _writable(directory: Path, *files: str) -> bool:
    return directory.is_dir() and all(os.access(directory / name, os.W_OK) for name in ("", *files))


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def _has_processes(directory: Path) -> bool:
    try:
        return bool((directory / "cgroup.procs").read_text().strip())
    except OSError:
        return True  # unreadable: assume the worst


def _v2_base(own: Path, mount_point: Path) -> tuple[Path | None, str]:
    """The v2 cgroup whose children sandboxes become: `own`, or its parent (see the module docstring)."""
    missing = [c for c in CONTROLLERS if c not in _words(own / "cgroup.controllers")]
    if missing:
        return None, f"cgroup v2 at {own} lacks the controllers {', '.join(missing)} (not delegated)"
    if not _writable(own, "cgroup.procs", "cgroup.subtree_control"):
        return None, f"cgroup v2 at {own} is not writable by this user (not delegated)"
    if set(CONTROLLERS) <= _words(own / "cgroup.subtree_control") or not _has_processes(own):
        return own, ""
    parent = own.parent
    if own != mount_point and parent != mount_point:
        siblings = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("threadline-")]
        parent_ok = (
            siblings == [own]
            and not _has_processes(parent)
            and set(CONTROLLERS) <= _words(parent / "cgroup.subtree_control")
            and _writable(parent, "cgroup.procs", "cgroup.subtree_control")
        )
        if parent_ok:
            return parent, ""
    return None, (
        f"cgroup v2 at {own} holds this server's processes, so it cannot enable controllers for children "
        "(run Threadline in a cgroup of its own, e.g. systemd Delegate=yes with DelegateSubgroup=)"
    )


def detect(proc_cgroup: str | None = None, mountinfo: str | None = None) -> Detection:
    """Which cgroup hierarchy this process can put sandboxes in (reads only; arguments: for tests)."""
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text() if proc_cgroup is None else proc_cgroup
        mountinfo = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    except OSError as exc:
        return Detection(None, reason=f"cannot read this process's cgroups: {exc}")
    own = _own_cgroups(proc_cgroup)
    mounts = _mounts(mountinfo)
    reasons = []
    v2_mounts = [m for m in mounts if m.fstype == "cgroup2"]
    if "" in own and v2_mounts:
        for mount in v2_mounts:
            directory = _under(mount, own[""])
            if directory is None or not directory.is_dir():
                continue
            if mount.read_only:
                reasons.append(f"cgroup v2 at {mount.point} is mounted read-only")
                break
            base, why = _v2_base(directory, mount.point)
            if base is not None:
                return Detection(2, (Hierarchy(CONTROLLERS, base, mount.root, mount.point),))
            reasons.append(why)
            break
    hierarchies = []
    for controller in CONTROLLERS:
        v1 = next((m for m in mounts if m.fstype == "cgroup" and controller in m.super_options), None)
        path = own.get(controller)
        directory = _under(v1, path) if v1 is not None and path is not None else None
        if v1 is None or directory is None or not directory.is_dir():
            reasons.append(f"no cgroup v1 {controller} hierarchy for this process")
            break
        if v1.read_only or not _writable(directory, "cgroup.procs"):
            reasons.append(f"cgroup v1 {controller} hierarchy at {directory} is not writable")
            break
        if controller == "cpu" and not (directory / "cpu.cfs_quota_us").exists():
            reasons.append(f"cgroup v1 cpu hierarchy at {directory} has no CFS bandwidth control")
            break
        hierarchies.append(Hierarchy((controller,), directory, v1.root, v1.point))
    if len(hierarchies) == len(CONTROLLERS):
        return Detection(1, tuple(hierarchies))
    return Detection(None, reason="; ".join(reasons) or "no cgroup hierarchy mounted")


def parent_name(sandboxes_root: Path) -> str:
    """The per-home parent cgroup: two Threadline homes on one machine never share one."""
    return "threadline-" + hashlib.sha256(str(sandboxes_root.resolve()).encode()).hexdigest()[:12]


def _write(path: Path, value: str) -> None:
    # cgroup files take one value per write(2): no buffering. (O_CREAT only matters outside a cgroup
    # file system: cgroupfs makes no files.)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _pids_in(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _check_id(sandbox_id: str) -> None:
    if not sandbox_id or "/" in sandbox_id or sandbox_id.startswith("."):
        raise ValueError(f"not a sandbox id: {sandbox_id!r}")


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 0
    cpus: float | None = None
    pids: int = 0


class SandboxCgroups:
    """The cgroups of one Threadline home's sandboxes, in the hierarchy `detection` found."""

    def __init__(self, detection: Detection, sandboxes_root: Path, limits: Limits) -> None:
        if not detection.usable:
            raise ValueError("no usable cgroup hierarchy")
        self.detection = detection
        self.version = detection.version
        self.limits = limits
        self.name = parent_name(sandboxes_root)
        self.parents = [h.base / self.name for h in detection.hierarchies]
        self.record = sandboxes_root / PARENTS_FILE
        # Re-attached sandboxes whose cgroups are under another parent than `parents` (the Threadline that
        # launched them ran in another cgroup): sandbox id -> their directories, one per hierarchy.
        self._adopted: dict[str, list[Path]] = {}

    # -- set up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the per-home parent(s); on v2, let children have the controllers. Raises OSError."""
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        for hierarchy, parent in zip(self.detection.hierarchies, self.parents, strict=True):
            if self.version == 2 and not set(CONTROLLERS) <= _words(hierarchy.base / "cgroup.subtree_control"):
                _write(hierarchy.base / "cgroup.subtree_control", enable)
            parent.mkdir(exist_ok=True)
            if self.version == 2 and not set(CONTROLLERS) <= _words(parent / "cgroup.subtree_control"):
                _write(parent / "cgroup.subtree_control", enable)
        # Every time, not once: another process of this home may have forgotten them while they were gone.
        self._remember(self.parents)

    def _default_dirs(self, sandbox_id: str) -> list[Path]:
        return [parent / sandbox_id for parent in self.parents]

    def dirs(self, sandbox_id: str) -> list[Path]:
        """The sandbox's cgroup directories, one per hierarchy: where `adopt()` found them, else under
        this run's parents."""
        _check_id(sandbox_id)
        adopted = self._adopted.get(sandbox_id)
        return list(adopted) if adopted is not None else self._default_dirs(sandbox_id)

    def exists(self, sandbox_id: str) -> bool:
        return all(d.is_dir() for d in self.dirs(sandbox_id))

    def procs_files(self, sandbox_id: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs(sandbox_id)]

    def create(self, sandbox_id: str) -> None:
        """A fresh cgroup for a sandbox about to start (what an earlier run left is removed first, so its
        counters start at zero), with the limits written before any process joins it."""
        self.remove(sandbox_id)
        self.prepare()  # again: another process of this home may have removed an empty parent
        for directory in self.dirs(sandbox_id):
            directory.mkdir()
        try:
            self._write_limits(sandbox_id)
        except BaseException:
            self.remove(sandbox_id)
            raise

    def _write_limits(self, sandbox_id: str) -> None:
        limits = self.limits
        memory = limits.memory_mb * 1024 * 1024
        quota = max(_MIN_QUOTA_US, math.ceil(limits.cpus * CPU_PERIOD_US)) if limits.cpus else None
        if self.version == 2:
            (directory,) = self.dirs(sandbox_id)
            if memory:
                _write(directory / "memory.max", str(memory))
                if (directory / "memory.swap.max").exists():
                    _write(directory / "memory.swap.max", "0")  # over the limit means killed, not swapped
            if quota is not None:
                _write(directory / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if limits.pids:
                _write(directory / "pids.max", str(limits.pids))
            return
        memory_dir, cpu_dir, pids_dir = self.dirs(sandbox_id)
        if memory:
            _write(memory_dir / "memory.limit_in_bytes", str(memory))
            if (memory_dir / "memory.memsw.limit_in_bytes").exists():
                _write(memory_dir / "memory.memsw.limit_in_bytes", str(memory))
        if quota is not None:
            _write(cpu_dir / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu_dir / "cpu.cfs_quota_us", str(quota))
        if limits.pids:
            _write(pids_dir / "pids.max", str(limits.pids))

    # -- re-attached sandboxes ---------------------------------------------------------------------

    def adopt(self, sandbox_id: str, pid: int, proc_cgroup: str | None = None) -> bool:
        """After a restart: use the cgroups the re-attached sandbox's process `pid` is actually in from now
        on (limits, OOM kills, peak, pids, removal), wherever the Threadline that launched it ran. Only a
        `threadline-<this home's hash>/<sandbox_id>` leaf in every hierarchy is taken, never a cgroup of
        another home or one Threadline did not make. False: it is in none (`proc_cgroup`: for tests)."""
        _check_id(sandbox_id)
        self._adopted.pop(sandbox_id, None)
        default = self._default_dirs(sandbox_id)
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text() if proc_cgroup is None else proc_cgroup
        except OSError:
            return False
        found = self._locate(sandbox_id, _own_cgroups(text))
        if found is None:
            return False
        if found != default:
            self._remember([d.parent for d in found])  # so that it is removed even if this run misses it
            self._adopted[sandbox_id] = found
            log.info("sandbox %s keeps its cgroups of an earlier run: %s", sandbox_id, [str(d) for d in found])
        return True

    def _locate(self, sandbox_id: str, own: dict[str, str]) -> list[Path] | None:
        found = []
        for hierarchy in self.detection.hierarchies:
            # v1: the process's line of this hierarchy's controller; v2: its one `0::` line.
            path = own.get(hierarchy.controllers[0] if self.version == 1 else "")
            if path is None or PurePosixPath(path).parts[-2:] != (self.name, sandbox_id):
                return None
            directory = _directory(hierarchy.mount_root, hierarchy.mount_point, path)
            if directory is None or not directory.is_dir():
                return None
            found.append(directory)
        return found

    # -- the parents of earlier runs ----------------------------------------------------------------
    #
    # Remembered in a small file next to the sandboxes, not found by searching the cgroup tree: the file
    # names only parents this home made, so a tree search can never take the `threadline-<hash>` of another
    # deployment whose sandboxes root has the same path (containers sharing a v1 hierarchy), and the
    # heartbeat reads one small file instead of walking every cgroup of the machine. Not in the database:
    # cgroup paths are facts of this host, as the sandboxes root is (a replica elsewhere shares the database).

    def _entry(self, value: object) -> list[Path] | None:
        """One remembered set of parents (one per hierarchy), if it can be one of this home's here."""
        if not isinstance(value, list) or len(value) != len(self.detection.hierarchies):
            return None
        parents = []
        for hierarchy, text in zip(self.detection.hierarchies, value, strict=True):
            path = Path(text) if isinstance(text, str) else None
            if (
                path is None
                or not path.is_absolute()
                or ".." in path.parts
                or path.name != self.name
                or not path.is_relative_to(hierarchy.mount_point)
            ):
                return None
            parents.append(path)
        return parents

    def _parse(self, text: str) -> list[list[Path]]:
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError:
            log.warning("%s is not valid JSON: the parent cgroups of earlier runs are not known", self.record)
            return []
        values = data.get("parents", []) if isinstance(data, dict) else []
        return [e for e in map(self._entry, values if isinstance(values, list) else []) if e is not None]

    def _old_parents(self) -> list[list[Path]]:
        """The parents earlier runs of this home used, other than this run's."""
        try:
            with self.record.open() as file:
                fcntl.flock(file, fcntl.LOCK_SH)  # no half-written file from another process of this home
                entries = self._parse(file.read())
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read %s: %s", self.record, exc)
            return []
        return [e for e in entries if e != self.parents]

    def _update(self, change: Callable[[list[list[Path]]], list[list[Path]]]) -> None:
        """Rewrite the remembered parents under an exclusive lock (the workers of one home share it);
        parents none of whose directories exist any more are dropped."""
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.record, os.O_RDWR | os.O_CREAT, 0o600)
            with os.fdopen(fd, "r+") as file:
                fcntl.flock(file, fcntl.LOCK_EX)
                before = self._parse(file.read())
                after = [e for e in change(before) if any(p.is_dir() for p in e)]
                if after != before:
                    file.seek(0)
                    file.truncate()
                    file.write(json.dumps({"parents": [[str(p) for p in e] for e in after]}, indent=1) + "\n")
        except OSError as exc:
            # Only what a later run in another cgroup could clean up is lost: not a reason to stop.
            log.warning("cannot record the sandbox cgroup parents in %s: %s", self.record, exc)

    def _remember(self, parents: list[Path]) -> None:
        self._update(lambda entries: entries if parents in entries else [*entries, parents])

    def _tidy(self, old: list[list[Path]]) -> None:
        """Remove the old parents left empty and forget those that are gone."""
        for parents in old:
            for parent in parents:
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty: a re-attached sandbox's cgroup keeps it
        if any(not any(p.is_dir() for p in parents) for parents in old):
            self._update(lambda entries: entries)

    # -- reading --------------------------------------------------------------------------------

    def dir_of(self, sandbox_id: str, controller: str) -> Path:
        """The sandbox's cgroup directory that has `controller`'s files (memory, cpu or pids)."""
        for hierarchy, directory in zip(self.detection.hierarchies, self.dirs(sandbox_id), strict=True):
            if controller in hierarchy.controllers:
                return directory
        raise ValueError(f"no {controller} controller")

    def _memory_dir(self, sandbox_id: str) -> Path:
        return self.dir_of(sandbox_id, "memory")

    def oom_kills(self, sandbox_id: str) -> int:
        """Processes of the sandbox the kernel killed for its memory limit."""
        directory = self._memory_dir(sandbox_id)
        if self.version == 2:
            return _counter(directory / "memory.events", "oom_kill")
        return _counter(directory / "memory.oom_control", "oom_kill")

    def memory_peak(self, sandbox_id: str) -> int | None:
        """The most memory the sandbox's processes used together, in bytes (None: not known)."""
        directory = self._memory_dir(sandbox_id)
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((directory / name).read_text())
        except (OSError, ValueError):
            return None

    def pids(self, sandbox_id: str) -> list[int]:
        return sorted({pid for d in self.dirs(sandbox_id) for pid in _pids_in(d)})

    # -- removal --------------------------------------------------------------------------------

    def remove(self, sandbox_id: str, timeout: float = 10.0) -> bool:
        """Kill every process left in the sandbox's cgroup(s) and remove them. True when none is left."""
        removed = self._remove_dirs(self.dirs(sandbox_id), timeout)
        # Its next cgroup (a resume) is made under this run's parents.
        self._adopted.pop(sandbox_id, None)
        return removed

    def _remove_dirs(self, directories: list[Path], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        left = [d for d in directories if d.is_dir()]
        for directory in left:
            if (directory / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(directory / "cgroup.kill", "1")
        while left:
            for directory in left:
                for pid in _pids_in(directory):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(FileNotFoundError, OSError):
                    directory.rmdir()  # EBUSY until its last process has exited
            left = [d for d in left if d.is_dir()]
            if not left:
                return True
            if time.monotonic() > deadline:
                log.warning("could not remove the cgroups %s: processes still in them", left)
                return False
            # SIGKILL is asynchronous: poll (briefly) until the kernel has let the processes go.
            time.sleep(0.02)
        return True

    def remove_parents(self) -> None:
        """Remove the per-home parents if no sandbox's cgroup is left in them (on shutdown)."""
        for parent in self.parents:
            with contextlib.suppress(OSError):
                parent.rmdir()

    def remove_stale(self, keep: set[str]) -> list[str]:
        """Remove the cgroups of this home's sandboxes not in `keep` (killing what runs in them), under this
        run's parents and those of earlier runs (then removed too when left empty); returns their sandbox
        ids. Each heartbeat: one small file read, and one directory listing per parent."""
        old = self._old_parents()
        stale: set[str] = set()
        for parents in (self.parents, *old):
            names: set[str] = set()
            for parent in parents:
                with contextlib.suppress(OSError):
                    names.update(p.name for p in parent.iterdir() if p.is_dir())
            for name in sorted(names - keep):
                directories = [parent / name for parent in parents]
                self._remove_dirs(directories, timeout=10.0)
                if self._adopted.get(name) == directories:
                    self._adopted.pop(name, None)
                stale.add(name)
        if old:
            self._tidy(old)
        return sorted(stale)


def enforced_by(detection: Detection) -> dict[str, str]:
    """What enforces each limit with this hierarchy ({} when none is usable): memory, cpus, pids."""
    if detection.version == 2:
        return {
            "memory": "cgroup v2 (memory.max; memory.swap.max=0)",
            "cpus": "cgroup v2 (cpu.max)",
            "pids": "cgroup v2 (pids.max) and rlimit (RLIMIT_NPROC)",
        }
    if detection.version == 1:
        memsw = (detection.hierarchies[0].base / "memory.memsw.limit_in_bytes").exists()
        return {
            "memory": "cgroup v1 (memory.limit_in_bytes" + (", memory.memsw.limit_in_bytes)" if memsw else ")"),
            "cpus": "cgroup v1 (cpu.cfs_quota_us)",
            "pids": "cgroup v1 (pids.max) and rlimit (RLIMIT_NPROC)",
        }
    return {}


def enter_command(procs_files: list[Path], command: list[str]) -> list[str]:
    """`command`, run by a shell that first moves itself into the sandbox's cgroup(s) (writing 0 to
    `cgroup.procs` moves the writer) and then execs it: every process of the sandbox starts inside. A
    failed write ends it before `command` runs (exit 125): no sandbox ever runs outside its cgroup."""
    script = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "threadline-cgroup", *map(str, procs_files), "--", *command]
