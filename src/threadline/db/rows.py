"""A table's rows as the driver returns them, turned into the values SQLAlchemy's column types would give.

SQLAlchemy processes every value of a typed column it reads: on SQLite a `UTCDateTime` goes through a text
parser and then `process_result_value`, a JSON column through the engine's JSON parser, a Boolean through `bool`. For a
page of a hundred rows of a wide table that is most of the cost of reading it (about 7 us a row here, against
under 2 us for the same work done in one pass per row). `RawColumns` selects the table's columns with no type
(so no result processing) and `decoder(dialect)` does the same conversions itself, with the same results:
`tests/test_search_pages.py::test_raw_rows_decode_to_the_values_sqlalchemy_gives` compares them with
SQLAlchemy's, value by value, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Table, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import Label
from sqlalchemy.types import NullType

from threadline.db.types import UTCDateTime, json_loads

Decoder = Callable[[Sequence[Any]], tuple[Any, ...]]


class RawColumns:
    """All columns of `table`, in order, selected as the driver gives them, and their decoding per dialect."""

    def __init__(self, table: Table) -> None:
        self.names = tuple(column.name for column in table.c)
        self.columns: list[Label[Any]] = [type_coerce(column, NullType()).label(column.name) for column in table.c]
        types = [column.type for column in table.c]
        self._times = tuple(i for i, t in enumerate(types) if isinstance(t, UTCDateTime))
        self._json = tuple(i for i, t in enumerate(types) if isinstance(t, JSON))
        self._bools = tuple(i for i, t in enumerate(types) if isinstance(t, Boolean))
        self._decoders: dict[str, Decoder] = {}

    def decoder(self, dialect: Dialect) -> Decoder:
        """A row of `columns` (a sequence of driver values) to the values SQLAlchemy would give, as a tuple."""
        decoder = self._decoders.get(dialect.name)
        if decoder is None:
            if dialect.name == "sqlite":
                decoder = _sqlite_decoder(self._times, self._json, self._bools)
            elif dialect.name == "postgresql" and dialect.driver == "asyncpg":
                decoder = _asyncpg_decoder(self._times)
            else:
                raise NotImplementedError(f"no raw row decoding for {dialect.name}+{dialect.driver}")
            self._decoders[dialect.name] = decoder
        return decoder


def _sqlite_decoder(times: tuple[int, ...], jsons: tuple[int, ...], bools: tuple[int, ...]) -> Decoder:
    # SQLite gives what SQLAlchemy stored: naive UTC times as text ("2026-12-06 14:35:52.123456"), JSON as
    # text, booleans as 0/1.
    parse, loads = datetime.fromisoformat, json_loads

    def decode(row: Sequence[Any]) -> tuple[Any, ...]:
        values = list(row)
        for i in times:
            value = values[i]
            if value is not None:
                values[i] = parse(value).replace(tzinfo=UTC)
        for i in jsons:
            value = values[i]
            if value is not None:
                values[i] = loads(value)
        for i in bools:
            value = values[i]
            if value is not None:
                values[i] = bool(value)
        return tuple(values)

    return decode


def _asyncpg_decoder(times: tuple[int, ...]) -> Decoder:
    # asyncpg gives booleans, floats and aware datetimes itself, and SQLAlchemy's asyncpg dialect has it decode
    # JSON (a codec set on every connection); the times are only brought to UTC, as `UTCDateTime` does.
    def decode(row: Sequence[Any]) -> tuple[Any, ...]:
        values = list(row)
        for i in times:
            value = values[i]
            if value is not None and value.tzinfo is not UTC:
                values[i] = value.astimezone(UTC)
        return tuple(values)

    return decode


def utc_time(value: Any) -> datetime:
    """One `UTCDateTime` value as the driver gives it (SQLite: naive UTC text; asyncpg: an aware datetime)
    to what the column type would give: an aware UTC datetime."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if value.tzinfo is not UTC:
        return value.astimezone(UTC)
    return value
