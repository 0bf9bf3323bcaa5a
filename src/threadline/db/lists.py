"""A list of values as one bound parameter, for `column IN (the list)` in a statement built once.

SQLAlchemy's expanding IN renders one parameter per value again at every execution (a page's hundred ids
cost a hundred parameter names, each time); one parameter holding the whole list does not: a JSON text
read by `json_each` on SQLite, an array on PostgreSQL. Both use the column's index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, String, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY


def in_list(column: ColumnElement[str], name: str) -> dict[str, ColumnElement[bool]]:
    """`column IN (:name)` for each dialect; pass the values with `list_value()`."""
    values: Select[Any] = select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=String)))
    return {
        "sqlite": column.in_(values),
        "postgresql": column == func.any(bindparam(name, type_=ARRAY(String))),
    }


def list_value(dialect: str, values: Sequence[str]) -> Any:
    return json.dumps(list(values)) if dialect == "sqlite" else list(values)
