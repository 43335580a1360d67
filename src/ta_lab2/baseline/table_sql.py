"""A compared table and the SQL fragments over its row pairs, shared by the two passes of a
comparison (:mod:`ta_lab2.baseline.compare`, :mod:`ta_lab2.baseline.differing`).

A table's key is its primary key; its series columns (id, tf[, period]) lead the key and its
time column ends it, so one series is one range of the primary-key index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ta_lab2.baseline.comparison_utils import FLOAT_TYPES, zero_sign_differs


@dataclass(frozen=True)
class TableSpec:
    """How to compare one table: names and columns, validated against the catalog."""

    table: str
    snapshot: sql.Identifier
    rebuilt: sql.Identifier
    key: tuple[str, ...]
    series: tuple[str, ...]
    time: str
    columns: dict[str, str]  # value column -> "float" | "exact"
    #: both tables store their rows in key order under a primary-key index (a snapshot is
    #: copied so, a full rebuild writes so): the pass over every row then merges the two index
    #: scans, ~40 % faster than hashing one side; else (e.g. a table appended to day by day,
    #: whose index scan would jump around the heap) it hashes
    presorted: bool = False


def primary_key(conn: psycopg.Connection, qualified: sql.Identifier) -> tuple[str, ...]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
        ORDER BY array_position(i.indkey::int2[], a.attnum)
        """,
        (qualified.as_string(conn),),
    ).fetchall()
    return tuple(r[0] for r in rows)


def column_kinds(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    """Column name -> "float" (compared with tolerances) or "exact", in table order."""
    # imported here: this module serves `baseline list` and `drop`, which start without polars
    from ta_lab2.db.bulk import TableRef, column_types

    types = column_types(conn, TableRef(schema, table))
    return {name: ("float" if typ in FLOAT_TYPES else "exact") for name, typ in types.items()}


def series_and_time(key: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Series columns (id, tf[, period]) and the time column of a key."""
    time_col = next(c for c in ("ts", "time_close", "timestamp") if c in key)
    series = tuple(c for c in key if c in ("id", "tf", "period"))
    return series, time_col


#: the value a series is about, in order of preference: a bar's close, an EMA's value (its
#: derivatives' relative differences are large near zero and say little of the series)
MAIN_VALUES = ("close", "ema")

def ids_filter(alias: str | None, ids: Sequence[int] | None) -> sql.Composable:
    """``id`` (of ``alias``) is one of ``ids``; TRUE when ``ids`` is None (every id)."""
    if ids is None:
        return sql.SQL("TRUE")
    col = sql.Identifier(alias, "id") if alias else sql.Identifier("id")
    return sql.SQL("{} = ANY({})").format(col, sql.Literal(list(ids)))


@contextmanager
def planner_settings(conn: psycopg.Connection, **values: str) -> Iterator[None]:
    """Planner settings for the session while the block runs, then restored (a failure inside
    a transaction rolls them back with it)."""
    previous = {name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] for name in values}
    for name, value in values.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    try:
        yield
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            for name, value in previous.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def cols(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in names)


def row_differs(spec: TableSpec, s: str = "s", r: str = "r") -> sql.Composable:
    """True when the value columns of rows ``s`` and ``r`` are not bit-identical."""
    cols = list(spec.columns)
    whole = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
        sql.SQL(", ").join(sql.Identifier(s, c) for c in cols), sql.SQL(", ").join(sql.Identifier(r, c) for c in cols))
    # equal as numbers yet not bit-identical: +0.0 vs -0.0 (only zeros need the second look)
    zeros = [zero_sign_differs(sql.Identifier(s, c), sql.Identifier(r, c)) for c, k in spec.columns.items()
             if k == "float"]
    return sql.SQL("(") + sql.SQL(" OR ").join([whole, *zeros]) + sql.SQL(")")


def flagged_series(cond: str, per_series: sql.Composable) -> sql.Composable:
    """``per_series`` (a subquery that may read the columns of one series' ``_cmp_series`` row
    as ``e.<column>``) for every series the first pass flagged with ``cond``.

    Each flagged series is read by a range scan of both primary-key indexes (the series'
    columns lead every key) and its two sides joined on their own: a filter on the series
    would scan and join both tables whole, and the planner, which multiplies the
    selectivities of id, tf and period, may join the two sides' rows pairwise in a nested
    loop — quadratic in a series' length."""
    # OFFSET 0 keeps the subquery per series: pulled up, it became one join of whole tables again
    return sql.SQL("(SELECT * FROM _cmp_series WHERE {cond}) e CROSS JOIN LATERAL ({q} OFFSET 0) c").format(
        cond=sql.SQL(cond), q=per_series)


def of_series(spec: TableSpec, since: str | None = None) -> sql.Composable:
    """The rows of the series ``e`` (see :func:`flagged_series`); with ``since``, only those at or
    after its instant ``e.<since>``."""
    conds = [sql.SQL("{c} = {e}").format(c=sql.Identifier(c), e=sql.Identifier("e", c)) for c in spec.series]
    if since is not None:
        conds.append(sql.SQL("{t} >= {e}").format(t=sql.Identifier(spec.time), e=sql.Identifier("e", since)))
    return sql.SQL(" AND ").join(conds)


def ts_text(v: Any) -> str | None:
    return None if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v))


def jsonable(v: Any) -> Any:
    return ts_text(v) if hasattr(v, "isoformat") else v
