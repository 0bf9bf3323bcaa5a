"""A sandbox as stored: what travels between the sandboxes table and the code that uses it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    def all_of(cls, rows: Sequence[Row[Any]]) -> list[SandboxRecord]:
        """`of()` for the rows of one result (they have the same columns: looked at once, not per row)."""
        if rows and rows[0]._fields == _SANDBOXRECORD_FIELDS:
            return [cls(*row) for row in rows]  # type: ignore[call-arg]
        return [cls(**row._mapping) for row in rows]

    @classmethod
    def of(cls, row: Row[Any]) -> SandboxRecord:
        """From a row of `select(sandboxes)`."""
        # By position when the row's columns are the fields in order (rows of the whole table are): several
        # times cheaper than by name, which builds a mapping per row; a page has a hundred of them.
        if row._fields == _SANDBOXRECORD_FIELDS:
            return cls(*row)  # type: ignore[call-arg]
        return cls(**row._mapping)

    @property
    def directory(self) -> Path:
        """The sandbox's own directory (workspace, agent state, logs); recorded before it is launched."""
        if self.work_dir is None:
            raise RuntimeError(f"sandbox {self.id} has no directory recorded")
        return Path(self.work_dir)


_SANDBOXRECORD_FIELDS = tuple(field.name for field in dataclasses.fields(SandboxRecord))
