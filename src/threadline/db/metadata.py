"""The one MetaData every domain declares its tables in (each domain's `tables.py`); `threadline.schema`
collects them all for Alembic."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()
