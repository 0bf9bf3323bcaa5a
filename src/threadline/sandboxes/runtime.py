"""Agent runtimes: separate virtual environments, each holding one openhands-agent-server version.

The agent server needs Python >= 3.12 while Threadline itself runs on >= 3.11, so it lives in its own
venv. An interpreter is found the way a user's machine offers one: `--python`, THREADLINE_RUNTIME_PYTHON,
python3.13/python3.12 on PATH, then the usual version-manager locations.

The pinned version (`AGENT_SERVER_VERSION`, the one Threadline is built and tested against) lives in the
runtime directory itself (THREADLINE_RUNTIME_DIR). An operator may install other versions beside it, for
clients whose SDK speaks an older agent-server protocol: version V lives in `<runtime dir>-V` (e.g.
`~/.threadline/agent-runtime-1.21.0`). Each installed version is a sandbox spec (see `SandboxService.specs`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

AGENT_SERVER_PACKAGE = "openhands-agent-server"
AGENT_SERVER_VERSION = "1.58.2"
# The pinned version runs with its dependencies as they were when it was last tested here: a dependency's
# new release can break it (cryptography 51 refuses the standard-base64 Fernet keys the SDK derives, so
# no conversation could be created). Moving this date on is a change that is tested like any other.
TESTED_DEPENDENCIES_BEFORE = datetime(2026, 12, 1, tzinfo=UTC)
MIN_PYTHON = (3, 12)
MARKER = ".threadline-runtime.json"
# The SDK monorepo releases these together under one version number; the agent server's own requirement on
# the other two is unpinned in older releases, so all three are pinned to V (or pip mixes versions).
_FAMILY = ("openhands-agent-server", "openhands-sdk", "openhands-tools")
# A release number only: it becomes part of a directory name and of sandbox spec ids.
_VERSION = re.compile(r"^[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}$")


class RuntimeInstallError(Exception):
    """A runtime problem worth a clear message (no interpreter, failed install)."""


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def _candidates() -> list[str]:
    names = [shutil.which(n) for n in ("python3.13", "python3.12", "python3")]
    home = Path.home()
    patterns = [
        str(home / ".pyenv/versions/3.1[2-9]*/bin/python3"),
        str(home / ".local/share/uv/python/cpython-3.1[2-9]*/bin/python3"),
        str(home / ".asdf/installs/python/3.1[2-9]*/bin/python3"),
        str(home / ".local/share/mise/installs/python/3.1[2-9]*/bin/python3"),
        "/opt/homebrew/bin/python3.1[2-9]",
        "/usr/local/bin/python3.1[2-9]",
        "/usr/bin/python3.1[2-9]",
    ]
    found = [p for pattern in patterns for p in sorted(glob.glob(pattern), reverse=True)]
    return [c for c in [*names, *found] if c]


def find_python(explicit: str | None = None) -> str:
    """`explicit` (`--python`, else the THREADLINE_RUNTIME_PYTHON setting), else the first Python >= 3.12
    found the way a user's machine offers one."""
    if explicit:
        version = _version_of(explicit)
        if version is None:
            raise RuntimeInstallError(f"{explicit} is not a Python interpreter that runs")
        if version < MIN_PYTHON:
            raise RuntimeInstallError(f"{explicit} is Python {version[0]}.{version[1]}; the agent server needs >= 3.12")
        return explicit
    for candidate in _candidates():
        version = _version_of(candidate)
        if version is not None and version >= MIN_PYTHON:
            return candidate
    raise RuntimeInstallError(
        "the agent server needs Python >= 3.12 and none was found (looked on PATH for python3.13/python3.12 "
        "and in pyenv, uv, asdf, mise and Homebrew locations). Install one, then run "
        "`threadline runtime install --python /path/to/python3.12`."
    )


def python_of(runtime_dir: Path) -> Path:
    return runtime_dir / "bin" / "python"


def installed_version(runtime_dir: Path) -> str | None:
    marker = runtime_dir / MARKER
    if not marker.exists() or not python_of(runtime_dir).exists():
        return None
    try:
        version = json.loads(marker.read_text()).get("version")
    except ValueError:
        return None
    return str(version) if version else None


def is_installed(runtime_dir: Path, version: str = AGENT_SERVER_VERSION) -> bool:
    """Whether `version` is installed there; for the pinned version, with the dependencies it is tested with
    (an install from before they were pinned is redone)."""
    if installed_version(runtime_dir) != version:
        return False
    if version != AGENT_SERVER_VERSION:
        return True
    try:
        before = json.loads((runtime_dir / MARKER).read_text()).get("dependencies_uploaded_before")
    except ValueError:
        return False
    return before == TESTED_DEPENDENCIES_BEFORE.isoformat()


def check_version(version: str) -> str:
    """The version if it is a plain release number (X.Y.Z), else RuntimeInstallError."""
    if not _VERSION.match(version):
        raise RuntimeInstallError(f"{version!r} is not a release number like {AGENT_SERVER_VERSION}")
    return version


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def dir_for(runtime_dir: Path, version: str) -> Path:
    """Where version `version` lives: the pinned one in the runtime directory, others beside it."""
    if version == AGENT_SERVER_VERSION:
        return runtime_dir
    return runtime_dir.with_name(f"{runtime_dir.name}-{check_version(version)}")


def installed(runtime_dir: Path) -> dict[str, Path]:
    """Every complete install, version -> directory, newest first. A directory counts only when its
    marker names the version its place is for (a half-done or moved install is not offered)."""
    found: dict[str, Path] = {}
    if is_installed(runtime_dir):
        found[AGENT_SERVER_VERSION] = runtime_dir
    prefix = f"{runtime_dir.name}-"
    with contextlib.suppress(OSError):
        for entry in runtime_dir.parent.iterdir():
            version = entry.name.removeprefix(prefix)
            if not entry.name.startswith(prefix) or not _VERSION.match(version) or version == AGENT_SERVER_VERSION:
                continue
            if installed_version(entry) == version:
                found[version] = entry
    return dict(sorted(found.items(), key=lambda item: version_key(item[0]), reverse=True))


def installed_at(runtime_dir: Path) -> float | None:
    """When the install finished (the marker's time), for a spec's stable `created_at`."""
    try:
        return (runtime_dir / MARKER).stat().st_mtime
    except OSError:
        return None


def release_time(python: Path, version: str) -> datetime | None:
    """When `version` of the agent server was built, read from its wheel (the registry's simple index tells
    pip upload times but pip reports none): the time stamp of the wheel's METADATA. None when the wheel
    carries a fixed reproducible-build stamp instead."""
    with tempfile.TemporaryDirectory(prefix="threadline-runtime-") as tmp:
        download = [str(python), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps"]
        download += ["--only-binary=:all:", "-d", tmp, f"{AGENT_SERVER_PACKAGE}=={version}"]
        result = subprocess.run(download, check=False, stdout=sys.stderr)
        if result.returncode != 0:
            raise RuntimeInstallError(
                f"{AGENT_SERVER_PACKAGE}=={version} could not be downloaded (pip exit {result.returncode})"
            )
        wheel = next(Path(tmp).glob("*.whl"), None)
        if wheel is None:
            return None
        with zipfile.ZipFile(wheel) as archive:
            stamps = [i.date_time for i in archive.infolist() if i.filename.endswith(".dist-info/METADATA")]
    if not stamps or stamps[0][0] < 2024:  # the SDK's first release is from 2025; earlier is a fixed stamp
        return None
    return datetime(*stamps[0], tzinfo=UTC)


def install(
    runtime_dir: Path,
    python: str | None = None,
    *,
    quiet: bool = False,
    version: str = AGENT_SERVER_VERSION,
    deps_before: datetime | None = None,
) -> Path:
    """Create (or repair) a runtime venv of `version` in `runtime_dir` (see `dir_for`); the marker is written
    last, so a broken install is redone.

    Dependencies are taken as they were at a point in time, as releases of them break the agent server:
    the pinned version's as when it was last tested here (TESTED_DEPENDENCIES_BEFORE); an older release's
    as when it came out (default: two days after its own build; 1.21.0 does not start with today's
    FastAPI). Only releases uploaded before `deps_before` are considered."""
    check_version(version)
    interpreter = find_python(python)
    runtime_dir.parent.mkdir(parents=True, exist_ok=True)
    marker = runtime_dir / MARKER
    marker.unlink(missing_ok=True)
    # Every install starts from an empty venv: pip keeps whatever installed package satisfies a requirement,
    # so a repaired one could keep dependencies newer than the cut-off below.
    subprocess.run([interpreter, "-m", "venv", "--clear", str(runtime_dir)], check=True)
    pip = [str(python_of(runtime_dir)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    # --uploaded-prior-to is pip >= 26's; the venv's own pip is the interpreter's bundled one.
    # pip's progress goes to stderr: stdout stays for what a caller may parse (the first start's admin key).
    upgrade = subprocess.run([*pip, "--upgrade", "pip>=26"], check=False, stdout=sys.stderr)
    if upgrade.returncode != 0:
        raise RuntimeInstallError(f"upgrading pip in {runtime_dir} failed (pip exit {upgrade.returncode})")
    if deps_before is None and version == AGENT_SERVER_VERSION:
        deps_before = TESTED_DEPENDENCIES_BEFORE
    elif deps_before is None:
        built = release_time(python_of(runtime_dir), version)
        deps_before = built + timedelta(days=2) if built is not None else None
    if deps_before is not None:
        pip += ["--uploaded-prior-to", deps_before.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    result = subprocess.run([*pip, *(f"{name}=={version}" for name in _FAMILY)], check=False, stdout=sys.stderr)
    if result.returncode != 0:
        raise RuntimeInstallError(f"installing {AGENT_SERVER_PACKAGE}=={version} failed (pip exit {result.returncode})")
    marker.write_text(
        json.dumps(
            {
                "package": AGENT_SERVER_PACKAGE,
                "version": version,
                "python": interpreter,
                "installed_by": sys.executable,
                "dependencies_uploaded_before": deps_before.isoformat() if deps_before else None,
            }
        )
    )
    return runtime_dir
