"""The agent runtime: a separate virtual environment holding a pinned openhands-agent-server.

The agent server needs Python >= 3.12 while Threadline itself runs on >= 3.11, so it lives in its own
venv. An interpreter is found the way a user's machine offers one: `--python`, THREADLINE_RUNTIME_PYTHON,
python3.13/python3.12 on PATH, then the usual version-manager locations.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

AGENT_SERVER_PACKAGE = "openhands-agent-server"
AGENT_SERVER_VERSION = "1.58.2"
MIN_PYTHON = (3, 12)
MARKER = ".threadline-runtime.json"


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
    explicit = explicit or os.environ.get("THREADLINE_RUNTIME_PYTHON")
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


def is_installed(runtime_dir: Path) -> bool:
    return installed_version(runtime_dir) == AGENT_SERVER_VERSION


def install(runtime_dir: Path, python: str | None = None, *, quiet: bool = False) -> Path:
    """Create (or repair) the runtime venv; the marker is written last, so a broken install is redone."""
    interpreter = find_python(python)
    runtime_dir.parent.mkdir(parents=True, exist_ok=True)
    marker = runtime_dir / MARKER
    marker.unlink(missing_ok=True)
    if not python_of(runtime_dir).exists():
        subprocess.run([interpreter, "-m", "venv", "--clear", str(runtime_dir)], check=True)
    pip = [str(python_of(runtime_dir)), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    # pip's progress goes to stderr: stdout stays for what a caller may parse (the first start's admin key).
    result = subprocess.run([*pip, f"{AGENT_SERVER_PACKAGE}=={AGENT_SERVER_VERSION}"], check=False, stdout=sys.stderr)
    if result.returncode != 0:
        raise RuntimeInstallError(
            f"installing {AGENT_SERVER_PACKAGE}=={AGENT_SERVER_VERSION} failed (pip exit {result.returncode})"
        )
    marker.write_text(
        json.dumps(
            {
                "package": AGENT_SERVER_PACKAGE,
                "version": AGENT_SERVER_VERSION,
                "python": interpreter,
                "installed_by": sys.executable,
            }
        )
    )
    return runtime_dir
