"""JSON columns are read with orjson where it gives what the standard parser gives, and with the standard
parser where orjson refuses (`threadline.db.types.json_loads`): what a column gives back never changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select

from tests.conftest import Database as TestDatabase
from threadline.db.engine import Database
from threadline.db.types import JSONType, json_loads

DOCUMENTS = [
    '{"team": "core", "priority": "p1"}',
    "[]",
    "[1, 2, 3]",
    '{"a": {"b": [true, false, null, "x"]}}',
    "[0.1, 1e-07, 2.5e+300, -0.0, 1.7976931348623157e308]",
    f"[{2**63 - 1}, {-(2**63)}, {2**64 - 1}]",
    f"[{2**64}, {2**70}, {-(2**70)}]",  # beyond 64 bits: orjson refuses, the standard parser reads them
    f"[{10**18}, {10**19}, 12345678901234567890.5]",  # 19 digits: read by the standard parser, the same
    '{"id": "12345678901234567890"}',
    "[1e400, -1e400, 1e-400]",
    "[NaN, Infinity, -Infinity]",  # not JSON, but the standard parser takes them
    '"\\ud800"',  # a lone surrogate
    '{"a": 1, "a": 2}',
    '"h\\u00e9llo \\ud83d\\ude00"',
    '"tab\\tnewline\\n"',
]


def _same(a: Any, b: Any) -> bool:
    # repr, not ==: NaN is not equal to itself, and 1 == 1.0 == True would hide a changed type.
    return repr(a) == repr(b) and type(a) is type(b)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_json_loads_reads_what_the_standard_parser_reads(document: str) -> None:
    assert _same(json_loads(document), json.loads(document))


@pytest.mark.parametrize("document", ["", "{", '{"a": }', "[1,]", "nul", '{"a": 1} x'])
def test_json_loads_refuses_what_the_standard_parser_refuses(document: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(document)
    with pytest.raises(json.JSONDecodeError):
        json_loads(document)


def test_json_columns_give_back_what_was_stored(database: TestDatabase) -> None:
    values: list[Any] = [
        {"team": "core", "nested": {"list": [1, 2.5, None, True]}},
        [2**70, -(2**64), 0.1],
        {"emoji": "h\u00e9llo \U0001f600"},
        [],
        {},
    ]
    metadata = MetaData(schema=database.schema)
    table = Table("json_roundtrip", metadata, Column("id", Integer, primary_key=True), Column("doc", JSONType))

    async def scenario() -> list[Any]:
        db = Database(database.url, schema=database.schema)
        try:
            async with db.write() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(table.insert(), [{"id": i, "doc": v} for i, v in enumerate(values)])
            by_async = []
            async with db.read() as conn:
                by_async = [r.doc for r in await conn.execute(select(table).order_by(table.c.id))]
            # The path of the hot requests (`run_read`: on SQLite the Database's own synchronous engine).
            by_run = await db.run_read(lambda conn: [r.doc for r in conn.execute(select(table).order_by(table.c.id))])
            assert [repr(v) for v in by_run] == [repr(v) for v in by_async]
            return by_async
        finally:
            await db.dispose()

    read = asyncio.run(scenario())
    assert [repr(v) for v in read] == [repr(v) for v in values]
