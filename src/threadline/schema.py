"""The whole schema: every domain's tables in one MetaData, as the Alembic migrations must build it.

Each domain declares its own tables (`<domain>/tables.py`); importing them here registers them all. Only
the migrations and the tools that need every table (schema checks, the benchmark's data generator) import
this module.
"""

from __future__ import annotations

from threadline.auth import tables as auth_tables
from threadline.conversations import tables as conversation_tables
from threadline.db.metadata import metadata
from threadline.events import tables as event_tables
from threadline.idempotency import tables as idempotency_tables
from threadline.sandboxes import tables as sandbox_tables
from threadline.secrets import tables as secret_tables
from threadline.settings import tables as settings_tables

DOMAIN_TABLE_MODULES = (
    auth_tables,
    sandbox_tables,
    conversation_tables,
    event_tables,
    secret_tables,
    settings_tables,
    idempotency_tables,
)

__all__ = ["DOMAIN_TABLE_MODULES", "metadata"]
