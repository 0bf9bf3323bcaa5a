"""Every example of docs/quickstart.md runs, in order, against a live Threadline with the real agent server.

The fenced blocks of the quick start are all ```console or ```python; any other kind fails the test, so
no example can escape it. In a console block, lines starting with `$ ` are commands (a trailing `\\`
continues one on the next line) and the other lines are sample output. The commands of all console
blocks run as one bash script (`set -euo pipefail`: shell variables like `$ID` carry over, the first
failing command fails the test); the python blocks then run as one Python program, from that script, so
the `export`s of the guide are in effect. The guide's URL and API key are replaced by the test server's.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"
DOC_URL = "http://127.0.0.1:8000"
DOC_KEY = "tl_your_key_here"
DOC_USER = "ada"
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int


def blocks(text: str) -> list[Block]:
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def commands(block: Block) -> list[str]:
    """The `$ ` lines of a console block, continuation lines joined."""
    found: list[str] = []
    lines = iter(block.body.splitlines())
    for line in lines:
        if not line.startswith("$ "):
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + next(lines).strip()
        found.append(command)
    return found


def test_the_quickstart_is_made_of_runnable_examples() -> None:
    """Without a server: every block is an example the live test runs, and each is well-formed."""
    found = blocks(QUICKSTART.read_text())
    assert {b.lang for b in found} == {"console", "python"}, [(b.lang, b.line) for b in found]
    console = [b for b in found if b.lang == "console"]
    python = [b for b in found if b.lang == "python"]
    assert len(console) >= 8 and len(python) >= 8
    for block in console:
        assert commands(block), f"console block at line {block.line} has no `$ ` command"
    for block in python:
        ast.parse(block.body, filename=f"quickstart.md:{block.line}")
    # Python runs after the shell commands: no console block may come after a python one.
    first_python = min(b.line for b in python)
    late = [b.line for b in console if b.line > first_python and not commands(b)[0].startswith("export ")]
    assert not late, f"console blocks after the first python block (line {first_python}): {late}"
    text = QUICKSTART.read_text()
    assert DOC_URL in text and DOC_KEY in text


def _script(text: str, workdir: Path) -> Path:
    found = blocks(text)
    python = "\n\n".join(f"# --- quickstart.md line {b.line}\n{b.body}" for b in found if b.lang == "python")
    (workdir / "quickstart_examples.py").write_text(python)
    lines = [
        "set -euo pipefail",
        "step() { printf '\\n::: %s\\n' \"$1\" >&2; printf '\\n::: %s\\n' \"$1\"; }",
    ]
    for block in found:
        if block.lang != "console":
            continue
        for command in commands(block):
            lines.append(f"step {json.dumps(f'line {block.line}: {command}')}")
            lines.append(command)
    lines.append("step 'python examples'")
    lines.append('"$QUICKSTART_PYTHON" quickstart_examples.py')
    script = workdir / "quickstart.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


@pytest.mark.agent
@pytest.mark.timeout(900)
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_every_quickstart_example_runs(agent_server_factory: Any, tmp_path: Path) -> None:
    server: LiveServer = agent_server_factory()
    _, key = server.user(DOC_USER)
    text = QUICKSTART.read_text().replace(DOC_URL, server.base_url).replace(DOC_KEY, key)
    workdir = tmp_path / "work"
    workdir.mkdir()
    script = _script(text, workdir)

    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(
        {
            "HOME": str(tmp_path / "home"),  # the default config file: ~/.config/threadline/config.json
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "QUICKSTART_PYTHON": sys.executable,
            "COLUMNS": "160",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("XDG_CONFIG_HOME", None)
    result = subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=840)
    (workdir / "stdout.txt").write_text(result.stdout)  # kept with the test's tmp_path, to read
    (workdir / "stderr.txt").write_text(result.stderr)
    failed_at = [line for line in result.stderr.splitlines() if line.startswith("::: ")][-1:]
    assert result.returncode == 0, (
        f"quickstart example failed at {failed_at}:\n--- stdout\n{result.stdout[-4000:]}\n"
        f"--- stderr\n{result.stderr[-4000:]}"
    )

    # A few outputs the guide promises.
    assert f"Logged in to {server.base_url} as {DOC_USER}" in result.stderr
    config = tmp_path / "home" / ".config" / "threadline" / "config.json"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert "✓ READY" in result.stderr
    assert json.loads((workdir / "conversations.json").read_text())[0]["title"] == "Paging haiku"
    events = [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]
    assert events and all("kind" in e for e in events)
    out = result.stdout
    for expected in (
        f"Hello, {DOC_USER}",
        "start: READY",
        "404 conversation 00000000000000000000000000000000 not found",
        "changed meanwhile; current etag",
        "sent: True",
        "async: ",
        "Hello, ",
    ):
        assert expected in out, (expected, out[-4000:])
