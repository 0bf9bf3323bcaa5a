"""What keeps a request off the slow paths of the framework (issue 14): checked on the app's routes as built,
without serving them."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant

from threadline.api.app import create_app
from threadline.config import Settings


def _routes(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        else:
            yield route


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependencies(sub)


def _is_async(call: Any) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    # Instances (FastAPI's security schemes): their __call__ decides.
    return not inspect.isroutine(call) and inspect.iscoroutinefunction(type(call).__call__)


def test_every_dependency_of_every_route_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A plain `def` dependency costs each request a hop to the thread pool and back (FastAPI runs it in
    one): measured at about 0.1 ms of CPU per dependency, for functions that only read `app.state`."""
    app = create_app(Settings(home=tmp_path))
    routes = [r for r in _routes(app.routes) if getattr(r, "dependant", None) is not None]
    assert len(routes) > 50, "the walk no longer finds the routes: FastAPI's router changed"
    sync = sorted(
        {
            f"{getattr(call, '__module__', '?')}.{getattr(call, '__qualname__', type(call).__name__)}"
            for route in routes
            for call in _dependencies(route.dependant)
            if not _is_async(call)
        }
    )
    assert sync == [], f"dependencies FastAPI would run in its thread pool: {sync}"


def test_records_are_built_by_position_from_rows_of_their_whole_table() -> None:
    """`Record.of(row)` takes the fast path (by position, not a mapping per row) only while a record's fields
    are its table's columns in order; a column added to one and not the other would make every page slower
    (or, by position, wrong), so the two are held together here."""
    import dataclasses
    from datetime import UTC, datetime

    from sqlalchemy import create_engine, insert, select

    from threadline.conversations.records import ConversationRecord
    from threadline.conversations.tables import conversations
    from threadline.db.metadata import metadata
    from threadline.sandboxes.records import SandboxRecord
    from threadline.sandboxes.tables import sandboxes

    for record, table in ((ConversationRecord, conversations), (SandboxRecord, sandboxes)):
        assert [f.name for f in dataclasses.fields(record)] == [c.name for c in table.c]

    import threadline.schema  # noqa: F401  (every table on the metadata, for create_all)

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        now = datetime.now(UTC)
        conn.execute(
            insert(sandboxes),
            {"id": "s1", "user_id": "u1", "spec_id": "x", "backend": "process", "status": "RUNNING",
             "session_key_hash": "h", "session_key_enc": "e", "created_at": now, "updated_at": now},
        )  # fmt: skip
        row = conn.execute(select(sandboxes)).one()
        by_position, by_name = SandboxRecord.of(row), SandboxRecord(**row._mapping)
        assert by_position == by_name and by_position.status == "RUNNING" and by_position.user_id == "u1"
        # A row of other columns still works (by name).
        partial = conn.execute(select(*[c for c in sandboxes.c if c.name != "id"], sandboxes.c.id)).one()
        assert SandboxRecord.of(partial) == by_name
