"""Summaries of py-spy speedscope profiles: top functions (self and total) and time by package.

Also writes the same samples as collapsed stacks (`frame;frame;frame count` lines), the input of
flamegraph.pl / inferno-flamegraph, next to the speedscope file.
"""

from __future__ import annotations

import json
import linecache
from collections import defaultdict
from pathlib import Path
from typing import Any

# First match wins: a path fragment -> the package it is charged to.
PACKAGES = [
    ("/threadline/", "threadline"),
    ("/sqlalchemy/", "sqlalchemy"),
    ("/pydantic/", "pydantic"),
    ("/pydantic_core/", "pydantic"),
    ("/fastapi/", "fastapi"),
    ("/starlette/", "starlette"),
    ("/uvicorn/", "uvicorn"),
    ("/h11/", "h11"),
    ("/httptools/", "httptools"),
    ("/aiosqlite/", "aiosqlite"),
    ("/sqlite3/", "sqlite3"),
    ("/asyncpg/", "asyncpg"),
    ("/httpx/", "httpx"),
    ("/httpcore/", "httpx"),
    ("/anyio/", "anyio"),
    ("/cryptography/", "cryptography"),
    ("/json/", "json"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("/greenlet/", "greenlet"),
]


def package_of(path: str) -> str:
    for fragment, name in PACKAGES:
        if fragment in path:
            return name
    if "/lib/python" in path:
        return "stdlib"
    return "other"


def short(path: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." and "/" in tail else tail
    return path


# Leaf frames of a thread that is waiting, not working. py-spy is run without --idle, yet in a container
# it may still report sleeping threads; these are dropped here so percentages are of time spent working.
IDLE_LEAVES = {
    ("threading.py", "Condition.wait"),
    ("threading.py", "Event.wait"),
    ("queue.py", "Queue.get"),
    ("selectors.py", "EpollSelector.select"),
    ("selectors.py", "PollSelector.select"),
    ("thread.py", "_worker"),
}


def is_idle(frame: dict[str, Any]) -> bool:
    file, name = frame.get("file", ""), frame.get("name", "")
    if (file.rsplit("/", 1)[-1], name) in IDLE_LEAVES:
        return True
    # aiosqlite's worker thread waiting for its next statement (the line `future, function = tx.get()`).
    if name == "_connection_worker_thread":
        return ".get()" in linecache.getline(file, int(frame.get("line") or 0))
    return False


def thread_kind(name: str) -> str:
    if "MainThread" in name:
        return "event loop (main thread)"
    if "_connection_worker_thread" in name:
        return "aiosqlite connection threads"
    if "AnyIO worker" in name:
        return "AnyIO thread pool (sync dependencies)"
    return "other threads"


def _most(counter: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(counter.items(), key=lambda kv: -kv[1])


def load_samples(path: Path) -> tuple[list[dict[str, Any]], list[tuple[str, list[int], float]]]:
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    samples: list[tuple[str, list[int], float]] = []
    for profile in doc["profiles"]:
        if profile.get("type") != "sampled":
            continue
        for stack, weight in zip(profile["samples"], profile["weights"], strict=False):
            samples.append((profile.get("name", ""), stack, float(weight)))
    return frames, samples


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    frames, samples = load_samples(path)
    label = [f"{f.get('name', '?')} ({short(f.get('file', '?'))})" for f in frames]
    idle = [is_idle(f) for f in frames]
    self_time: defaultdict[str, float] = defaultdict(float)
    total_time: defaultdict[str, float] = defaultdict(float)
    by_package: defaultdict[str, float] = defaultdict(float)
    by_thread: defaultdict[str, float] = defaultdict(float)
    collapsed: defaultdict[str, float] = defaultdict(float)
    threads: set[str] = set()
    idle_seconds = 0.0
    for thread, stack, weight in samples:
        threads.add(thread)
        if not stack or idle[stack[-1]]:
            idle_seconds += weight
            continue
        leaf = frames[stack[-1]]
        self_time[label[stack[-1]]] += weight
        by_package[package_of(leaf.get("file", ""))] += weight
        by_thread[thread_kind(thread)] += weight
        for name in {label[i] for i in stack if "/threadline/" in frames[i].get("file", "")}:
            total_time[name] += weight
        # py-spy's speedscope stacks run root first, as folded stacks do.
        collapsed[";".join(frames[i].get("name", "?") for i in stack)] += weight
    busy = sum(self_time.values()) or 1e-9
    folded = path.with_name(path.name.replace(".speedscope.json", ".folded.txt"))
    # Folded counts are milliseconds of sampled busy time.
    folded.write_text("".join(f"{k} {round(v * 1000)}\n" for k, v in _most(collapsed)))

    def pct(counter: dict[str, float], n: int = top) -> list[list[Any]]:
        return [[name, round(100 * w / busy, 1)] for name, w in _most(counter)[:n]]

    return {
        "file": str(path),
        "folded": str(folded),
        "busy_seconds": round(sum(self_time.values()), 2),
        "idle_seconds_dropped": round(idle_seconds, 2),
        "threads": len(threads),
        "thread_names": sorted(threads),
        "top_self": pct(self_time),
        # Inclusive time of Threadline's own functions (the framework's frames sit under every sample).
        "top_total": pct(total_time, 25),
        "by_package": pct(by_package, 20),
        "by_thread": pct(by_thread),
    }


def markdown(name: str, summary: dict[str, Any]) -> str:
    lines = [
        f"#### {name}",
        "",
        f"{summary['busy_seconds']:.1f} s of busy samples over {summary['threads']} threads "
        "(waiting threads dropped); percentages are of the busy time.",
        "",
    ]
    lines += ["By thread: " + ", ".join(f"{p} {v}%" for p, v in summary.get("by_thread", [])) + ".", ""]
    packages = ", ".join(f"{p} {v}%" for p, v in summary["by_package"] if v >= 0.5)
    lines += [f"Self time by package: {packages}.", ""]
    lines += ["| self % | function (file) |", "| ---: | --- |"]
    lines += [f"| {v} | `{n}` |" for n, v in summary["top_self"][:12]]
    lines += ["", "| total % | Threadline function (file) |", "| ---: | --- |"]
    lines += [f"| {v} | `{n}` |" for n, v in summary["top_total"] if not n.startswith("serve (")][:15]
    return "\n".join(lines) + "\n"
