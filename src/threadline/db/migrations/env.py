"""Alembic environment: always run with a connection handed in by threadline.db.migrate."""

from __future__ import annotations

from alembic import context

from threadline.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through threadline.db.migrate (threadline serve does it on start)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
