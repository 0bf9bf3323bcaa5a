"""A sandbox as stored: what travels between the sandboxes table and the code that uses it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Row


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    user_id: str | None  # None while it waits in the warm pool
    spec_id: str
    backend: str
    runtime_version: str | None
    status: str
    detail: str | None
    pid: int | None
    port: int | None
    url: str | None
    work_dir: str | None
    session_key_hash: str
    session_key_enc: str
    created_at: datetime
    updated_at: datetime
    owner_instance: str | None

    @classmethod
    def of(cls, row: Row[Any]) -> SandboxRecord:
        """From a row of `select(sandboxes)`."""
        return cls(**row._mapping)

    @property
    def directory(self) -> Path:
        """The sandbox's own directory (workspace, agent state, logs); recorded before it is launched."""
        if self.work_dir is None:
            raise RuntimeError(f"sandbox {self.id} has no directory recorded")
        return Path(self.work_dir)
