"""The layers point down: no import cycle between Threadline's packages, `core` below every domain, the
app factory (`api`) on top. Read from the source (every import, also those inside functions; only
imports made for type checkers alone are left out), so a cycle cannot hide in a function body."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "threadline"
# What may only be imported by the layers above everything: the app factory, the command line, the whole
# schema (every domain's tables) and the migrations that build it.
TOP = {"api", "cli", "schema", "migrations"}
# The bottom: they import no other part of Threadline but each other (`config`, `db` and `core`).
BOTTOM = {"core", "config", "db"}


def _unit(path: Path) -> str:
    """The package (or top-level module) a file belongs to: `conversations`, `core`, `config`...; the
    migrations are a unit of their own (scripts Alembic loads, above every domain), not part of `db`."""
    parts = path.relative_to(PACKAGE).parts
    if parts[:2] == ("db", "migrations"):
        return "migrations"
    return parts[0].removesuffix(".py")


def _runtime_imports(tree: ast.Module) -> Iterator[ast.ImportFrom | ast.Import]:
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # type-only imports: no runtime edge
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            yield node


def import_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: [file:line, ...]}"""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        graph.setdefault(unit, {})
        for node in _runtime_imports(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module == "threadline":
                names = [f"threadline.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "threadline" and len(parts) > 1 and parts[1] != unit:
                    where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                    graph[unit].setdefault(parts[1], []).append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        for other in graph.get(unit, {}):
            if other not in index:
                visit(other)
                low[unit] = min(low[unit], low[other])
            elif other in stack:
                low[unit] = min(low[unit], index[other])
        if low[unit] == index[unit]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == unit:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return found


def test_no_import_cycle_between_packages() -> None:
    graph = import_graph()
    assert {"core", "api", "conversations", "sandboxes", "events", "auth"} <= set(graph)
    found = cycles(graph)
    detail = [
        f"{' <-> '.join(c)}: " + "; ".join(f"{a}->{b} at {graph[a][b][0]}" for a in c for b in graph[a] if b in c)
        for c in found
    ]
    assert not found, "\n".join(detail)


def test_the_bottom_imports_nothing_above_it_and_nothing_imports_the_top() -> None:
    graph = import_graph()
    upward = [
        f"{unit} -> {other} at {places[0]}"
        for unit in BOTTOM
        for other, places in graph.get(unit, {}).items()
        if other not in BOTTOM
    ]
    assert not upward, upward
    into_top = [
        f"{unit} -> {other} at {places[0]}"
        for unit, imported in graph.items()
        if unit not in TOP
        for other, places in imported.items()
        if other in TOP
    ]
    assert not into_top, into_top


def test_the_checks_see_a_cycle_hidden_in_a_function() -> None:
    graph = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:1"]}, "c": {"a": ["c.py:9"]}, "d": {"a": ["d.py:1"]}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from threadline.x import y\nif TYPE_CHECKING:\n    from threadline.z import w\n")
    assert [n.module for n in _runtime_imports(tree) if isinstance(n, ast.ImportFrom)] == ["threadline.x"]


def test_each_domain_declares_its_own_tables_and_the_schema_has_them_all() -> None:
    from threadline.schema import DOMAIN_TABLE_MODULES, metadata

    declared_in = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            # SQLAlchemy's Table(name, metadata, ...), not the command line's display tables.
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "Table"
                and "metadata" in map(ast.unparse, node.args)
            ):
                declared_in.setdefault(path.relative_to(PACKAGE).as_posix(), []).append(ast.unparse(node.args[0]))
    outside = [f for f in declared_in if not f.endswith("/tables.py") and "/migrations/" not in f]
    assert not outside, f"tables declared outside a domain's tables.py: {outside}"
    from sqlalchemy import Table

    tables = (t for module in DOMAIN_TABLE_MODULES for t in vars(module).values() if isinstance(t, Table))
    from_modules = {t.name for t in tables}
    assert from_modules == set(metadata.tables), "every table of the schema comes from a domain's tables.py"
    assert {"conversations", "sandboxes", "events", "users"} <= set(metadata.tables)


def _is_id(name: str) -> bool:
    # An entity id (not a page token): a swap of two of them would type-check, so they go by keyword.
    return name != "page_id" and (name in ("id", "ids") or name.endswith(("_id", "_ids")))


def test_functions_taking_two_ids_take_them_by_keyword() -> None:
    positional = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            # Route handlers are called by the framework, by name.
            if any(
                ".get" in d or ".post" in d or ".patch" in d or ".delete" in d
                for d in map(ast.unparse, node.decorator_list)
            ):
                continue
            ids = [a.arg for a in node.args.posonlyargs + node.args.args if _is_id(a.arg)]
            if len(ids) >= 2:
                positional.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}({', '.join(ids)})")
    assert not positional, positional
