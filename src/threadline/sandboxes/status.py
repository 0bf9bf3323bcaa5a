"""A sandbox's status, as the API reports it (a module of its own, without pydantic, like `core.enums`)."""

from __future__ import annotations

from enum import StrEnum


class SandboxStatus(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    ERROR = "ERROR"
    # Its agent server is gone (killed, or died while Threadline was down), or there is no sandbox at all.
    MISSING = "MISSING"
