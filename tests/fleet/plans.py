"""Checks on PostgreSQL's plans for the statements the stores send with a list of keys (an unnest of arrays).

A join of such a list with a table is the planner's to shape. On statistics that say the table holds nothing of
interest (taken before a worker, a lease or a replicator existed), it planned nested loops that scan the whole
list again for every row of the table: quadratic, seconds at thousands of keys. The stores probe the table once
per listed key instead (a LATERAL subquery); these helpers show that no plan of theirs rescans a list.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event

_RESCANNED = {"Function Scan", "Materialize"}


def lists_rescanned_per_row(plan: dict[str, Any]) -> list[str]:
    """The nested loops of an EXPLAIN (FORMAT JSON) plan whose inner side is a list (a function scan) or a set of
    rows materialized once and compared with every row of the outer side: quadratic either way. A probe per outer
    row (an index scan on the outer row's key) is neither."""
    found = []
    if plan["Node Type"] == "Nested Loop":
        inner, stack = plan["Plans"][1], [plan["Plans"][1]]
        while stack:
            node = stack.pop()
            if node["Node Type"] in _RESCANNED:
                alias = f" {node['Alias']}" if node.get("Alias") else ""
                found.append(f"{node['Node Type']}{alias} inside {inner['Node Type']}")
            stack.extend(node.get("Plans", []))
    for child in plan.get("Plans", []):
        found.extend(lists_rescanned_per_row(child))
    return found


@contextmanager
def statements_on(engine: Engine, table: str) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (and its parameters, as sent) that ``engine`` runs on ``table`` while in the block."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if table in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def assert_no_list_rescanned(engine: Engine, statements: list[tuple[str, Any]]) -> None:
    """EXPLAIN each statement as sent, with hash and merge joins off: whether the planner hashed a list or looped
    over it was a near tie of its estimates, so what it has left without them must still probe per key."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        for statement, parameters in statements:
            [(plan,)] = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).all()
            rescans = lists_rescanned_per_row(plan[0]["Plan"])
            assert not rescans, f"{statement[:70]}...: a list is scanned again per row ({rescans})"
