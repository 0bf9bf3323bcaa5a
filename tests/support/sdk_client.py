"""The OpenHands SDK a real user has, in a venv of its own: the client side of tests/test_sdk_client.py.

The OpenHands CLI (PyPI `openhands` 1.16.0, the newest) pins openhands-sdk and openhands-tools 1.21.0 and
openhands-workspace 1.11.1; its agent conversations need an agent server of the same SDK release (1.21.0),
which Threadline offers as an extra runtime (`threadline runtime install --version 1.21.0`).

Both are installed once into caches beside the default runtime (scripts/test does it before the run; the
fixture does it too when they are missing). Run as a module to install them:
`python -m tests.support.sdk_client`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from threadline.sandboxes import runtime

# The versions the newest OpenHands CLI ships with (read from its wheel's METADATA).
SDK_VERSION = "1.21.0"
WORKSPACE_VERSION = "1.11.1"
# openhands-workspace requires openhands-agent-server without a version, and the agent server requires the
# SDK without one: every member of the family is pinned, or pip would pull the newest agent server.
CLIENT_PACKAGES = (
    f"openhands-sdk=={SDK_VERSION}",
    f"openhands-tools=={SDK_VERSION}",
    f"openhands-agent-server=={SDK_VERSION}",
    f"openhands-workspace=={WORKSPACE_VERSION}",
)
MARKER = ".threadline-sdk-client.json"


def default_runtime_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("THREADLINE_TEST_RUNTIME_DIR") or cache / "threadline" / "agent-runtime")


def old_runtime_dir() -> Path:
    """The agent runtime of the SDK's release, where `threadline runtime install --version` puts it."""
    return runtime.dir_for(default_runtime_dir(), SDK_VERSION)


def client_dir() -> Path:
    return default_runtime_dir().with_name(f"openhands-sdk-client-{SDK_VERSION}")


def client_python() -> Path:
    return client_dir() / "bin" / "python"


def client_installed() -> bool:
    try:
        data = json.loads((client_dir() / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return data.get("packages") == list(CLIENT_PACKAGES) and client_python().exists()


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Test workers (and a parallel scripts/test) install one at a time; the second finds it done."""
    lock_path = default_runtime_dir().with_name(".sdk-client-install.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _configured_python() -> str | None:
    from threadline.config import Settings

    return Settings().runtime_python


def ensure_installed() -> None:
    """Install what is missing: the agent runtime of the SDK's release, then the client venv (marker last)."""
    with _install_lock():
        if not runtime.is_installed(old_runtime_dir(), SDK_VERSION):
            runtime.install(old_runtime_dir(), _configured_python(), version=SDK_VERSION, quiet=True)
        if client_installed():
            return
        target = client_dir()
        (target / MARKER).unlink(missing_ok=True)
        if not client_python().exists():
            subprocess.run(
                [runtime.find_python(_configured_python()), "-m", "venv", "--clear", str(target)], check=True
            )
        pip = [str(client_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *CLIENT_PACKAGES], check=True, stdout=sys.stderr)
        (target / MARKER).write_text(json.dumps({"packages": list(CLIENT_PACKAGES)}))


if __name__ == "__main__":
    ensure_installed()
    print(f"agent runtime {SDK_VERSION}: {old_runtime_dir()}\nSDK client: {client_dir()}", file=sys.stderr)
