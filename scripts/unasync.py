#!/usr/bin/env python3
"""Generate the synchronous SDK client (`src/threadline/client/_sync.py`) from the asynchronous one.

The async client is the source; the sync one is the same code without `async`/`await`, made by token
substitutions (as httpcore does with unasync), then tidied by ruff (unused imports dropped, imports
sorted, formatted). Two markers in the async source cover what substitution cannot:

    line  # async only           -> left out of the sync client
    # sync only: code            -> `code` in the sync client (same indentation)

Usage: `scripts/unasync.py` rewrites `_sync.py`; `scripts/unasync.py --check` exits 1 when it is not current
(a test runs that).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "threadline" / "client" / "_async.py"
TARGET = ROOT / "src" / "threadline" / "client" / "_sync.py"

HEADER = '''"""The synchronous client: `Threadline`.

Generated from `_async.py` by `scripts/unasync.py`; edit that file and run the script, not this one.
"""
'''

# Whole words (or exact fragments) of the async client and their sync counterparts, applied in order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\bAsyncThreadline\b", "Threadline"),
    (r"\bAsyncPageIterator\b", "PageIterator"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\basynccontextmanager\b", "contextmanager"),
    (r"\bhttpx\.AsyncBaseTransport\b", "httpx.BaseTransport"),
    (r"\bhttpx\.AsyncClient\b", "httpx.Client"),
    (r"\basync def ", "def "),
    (r"\basync for ", "for "),
    (r"\basync with ", "with "),
    (r"\bawait ", ""),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\.aclose\(\)", ".close()"),
    (r"\.aread\(\)", ".read()"),
    (r"\.aiter_bytes\(\)", ".iter_bytes()"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\bAsynchronous client\b", "Client"),
    (r" \(`async for`\)", ""),
]
_SYNC_ONLY = re.compile(r"^(\s*)# sync only: (.*)$")


def _unwrap_awaitable(text: str) -> str:
    """`Awaitable[X]` -> `X`, brackets matched; `X | None` where X was `None` collapses to `None`."""
    while (start := text.find("Awaitable[")) != -1:
        depth, index = 0, start + len("Awaitable")
        for index in range(start + len("Awaitable"), len(text)):
            depth += {"[": 1, "]": -1}.get(text[index], 0)
            if depth == 0:
                break
        inner = text[start + len("Awaitable[") : index]
        text = text[:start] + inner + text[index + 1 :]
    return text.replace("None | None", "None")


def convert(source: str) -> str:
    lines = []
    for line in source.splitlines():
        if line.rstrip().endswith("# async only"):
            continue
        marker = _SYNC_ONLY.match(line)
        if marker:
            line = marker[1] + marker[2]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    # The module docstring is the sync client's own.
    text = HEADER + text.split('"""', 2)[2]
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    return _unwrap_awaitable(text)


def _ruff(args: list[str], text: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed:\n{done.stderr}{done.stdout}")
    return done.stdout


def generate() -> str:
    text = convert(SOURCE.read_text())
    # Imports only the async client needs (asyncio, inspect, Awaitable) go; then sorted and formatted.
    text = _ruff(["check", "--fix", "--select", "F401,I", "--quiet"], text)
    return _ruff(["format", "--quiet"], text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when _sync.py is not what would be generated")
    args = parser.parse_args()
    generated = generate()
    if args.check:
        if TARGET.read_text() != generated:
            print(f"{TARGET.relative_to(ROOT)} is not current: run scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
