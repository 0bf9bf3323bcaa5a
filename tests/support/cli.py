"""Running the `threadline` command line as a user does: a separate process with its own environment."""

from __future__ import annotations

import subprocess
import sys


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadline.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
