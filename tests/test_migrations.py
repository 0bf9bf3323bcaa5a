"""The Alembic migrations build exactly the schema the code declares (`threadline.schema`: every domain's
`tables.py`), on SQLite and PostgreSQL: a column or index added to one and not the other fails here, not in
production."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from tests.conftest import Database
from threadline.db.engine import Database as Engine
from threadline.db.migrate import upgrade_to_head
from threadline.schema import metadata


def _differences(connection: Connection) -> list[Any]:
    def declared_for_this_database(obj: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
        # Some indexes exist on one database only (`Index(...).ddl_if(dialect=...)`): not a difference.
        condition = getattr(obj, "_ddl_if", None)
        return condition is None or condition.dialect in (None, connection.dialect.name)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": declared_for_this_database}
    )
    return list(compare_metadata(context, metadata))


def test_migrations_build_the_declared_schema(database: Database) -> None:
    async def check() -> list[Any]:
        engine = Engine(database.url, schema=database.schema)
        try:
            await upgrade_to_head(engine)
            async with engine.read() as conn:
                return await conn.run_sync(_differences)
        finally:
            await engine.dispose()

    differences = asyncio.run(check())
    assert differences == [], "\n".join(map(str, differences))
