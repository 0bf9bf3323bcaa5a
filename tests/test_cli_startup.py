"""`threadline --help` stays light (issue 15 D4): help loads neither the server (FastAPI, SQLAlchemy,
uvicorn) nor the client (httpx, the wire models). A check of the modules loaded, not of time: what
it costs is measured by hand (about 0.16 s of CPU for `threadline --help`, see docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs the command as the installed entry point does, then lists every module the process holds.
_PROBE = """
import json, runpy, sys
sys.argv = ["threadline", *sys.argv[1:]]
try:
    runpy.run_module("threadline.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""
SERVER_AND_CLIENT = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "httpx",
    "anyio",
    "asyncio",
    "pydantic_settings",
    "threadline.api",
    "threadline.client",
    "threadline.config",
    "threadline.conversations",
    "threadline.db",
)


def _modules_loaded_by(*args: str) -> tuple[set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60, check=False
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr
    assert "Usage" in done.stdout, done.stdout
    return set(report["modules"]), done.stdout


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in SERVER_AND_CLIENT))


def test_top_level_help_loads_neither_server_nor_client_nor_pydantic() -> None:
    modules, text = _modules_loaded_by("--help")
    assert "conversations" in text and "serve" in text
    assert not _heavy(modules)
    # The top-level help builds no parameter of any command, so not even typer's pydantic adapters.
    assert not [m for m in modules if m == "pydantic" or m.startswith("pydantic.")]


@pytest.mark.parametrize(
    "command",
    [["conversations"], ["conversations", "list"], ["conversations", "start"], ["serve"], ["keys", "list"], ["login"]],
)
def test_command_help_loads_neither_server_nor_client(command: list[str]) -> None:
    # Typer itself validates options with pydantic (its bool adapters), so pydantic is allowed here.
    modules, _ = _modules_loaded_by(*command, "--help")
    assert not _heavy(modules)
    assert "threadline.cli.conversations" in modules  # the probe ran the real command tree
