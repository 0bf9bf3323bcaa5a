"""The sync SDK client is generated from the async one (`scripts/unasync.py`): the committed `_sync.py`
must be what the script makes now, and the conversion does what it says."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "unasync.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sync_client_is_current() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + "\n(run scripts/unasync.py and commit src/threadline/client/_sync.py)"


def test_the_conversion() -> None:
    source = '''"""Async doc."""

import asyncio


class AsyncPageIterator:
    async def __aiter__(self) -> AsyncIterator[int]:
        async for page in self.pages():
            yield page  # async only
            # sync only: yield from page

    async def run(self, fn: Callable[[], Awaitable[dict[str, list[int]]] | None]) -> None:
        async with self.http.stream() as response:
            await response.aread()
            await asyncio.sleep(1)
        return AsyncThreadline(httpx.AsyncClient())
'''
    converted = _script().convert(source)
    assert "Async doc" not in converted and "Generated from `_async.py`" in converted
    body = converted.split('"""', 2)[2]
    assert "async" not in body.replace("asyncio", "") and "await" not in body and "Awaitable" not in body
    assert "class PageIterator:" in body and "def __iter__(self) -> Iterator[int]:" in body
    assert "for page in self.pages():\n            yield from page\n" in body
    assert "fn: Callable[[], dict[str, list[int]] | None]" in body
    assert "with self.http.stream() as response:\n            response.read()\n            time.sleep(1)" in body
    assert "return Threadline(httpx.Client())" in body
