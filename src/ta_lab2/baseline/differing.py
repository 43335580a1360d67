"""The rows that differ at all, of the series a comparison's first pass flagged: every cell
classified once by the rules of :mod:`ta_lab2.baseline.comparison_utils`, aggregated in the
database per series and column; only the rows that may hold a top difference are read again.

One changed price makes millions of cells differ below the tolerance (an EMA never forgets a
price): a table of one row per cell, read five times, cost several times the first pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline.comparison_utils import (
    CRITICAL, SEVERITIES, CellRule, ExpectedDiff, Tolerances, allow_list_match, allowed_for, cell_rule,
    is_difference_column, severity_rank,
)
from ta_lab2.baseline.results import ColumnStats, Difference
from ta_lab2.baseline.table_sql import (
    MAIN_VALUES, TableSpec, cols, flagged_series, ids_filter, jsonable, of_series, row_differs,
)


def cell_rules(spec: TableSpec, tolerances: Tolerances,
               allow: Sequence[ExpectedDiff]) -> list[tuple[str, CellRule, sql.Composable]]:
    """Per value column (in ``spec.columns`` order): its rule over the row pair ``s``/``r``, the
    allow-list folded into its severity, and the allow-list's reason for the row (text, NULL
    where no entry covers it)."""
    out = []
    for col, kind in spec.columns.items():
        allowed = allowed_for(allow, col)
        match = allow_list_match(allowed[1]) if allowed else None
        tol = tolerances.for_column(spec.table, col) if kind == "float" else None
        why = (sql.SQL("CASE WHEN {m} THEN {r} END").format(m=match, r=sql.Literal(allowed[0]))
               if allowed and match is not None else sql.SQL("NULL::text"))
        out.append((col, cell_rule(sql.Identifier("s", col), sql.Identifier("r", col), kind, tol, match,
                                   level=not is_difference_column(col)), why))
    return out


#: PostgreSQL raises an error where a float product or sum leaves the float8 range. Sums of
#: absolute differences and of their squares are therefore kept in three bands, scaled by
#: exact powers of two: differences up to 2**480 as they are (a square ≤ 2**960; 2**60
#: of them still fit), larger ones times 2**-600, squares of those below 2**-480 times 2**600
#: first (:func:`_mean_std` puts them together)
BIG, SMALL, SCALE = 2 ** 480, 2 ** -480, 600
_BANDS = {"big": repr(float(BIG)), "small": repr(float(SMALL)), "down": repr(2.0 ** -SCALE), "up": repr(2.0 ** SCALE)}

#: ``_cmp_agg``'s per-column aggregates over the differing cells of column j of one series
#: (``rank{j}``: the cell's severity rank, NULL where its values are bit-identical): name, SQL,
#: how the series' values add up to the table's, and whether it is a float statistic (NULL for
#: an exact column). ``{null_side}`` is a cell with one side NULL: for a float column, one whose
#: ``abs{j}`` is NULL (no column of its own). The cells of a column number
#: ``crit + warn + info``. Every aggregate costs ~15 ns a row, and a changed price makes
#: hundreds of thousands of rows differ per table
COLUMN_AGGREGATES = (
    ("nulls", "count(rank{j}) FILTER (WHERE {null_side})", "sum", False),
    ("crit", "count(*) FILTER (WHERE rank{j} = 0)", "sum", False),
    ("warn", "count(*) FILTER (WHERE rank{j} = 1)", "sum", False),
    ("info", "count(*) FILTER (WHERE rank{j} = 2)", "sum", False),
    ("max_abs", "max(abs{j}) FILTER (WHERE abs{j} < 'Infinity')", "max", True),
    ("max_rel", "max(rel{j}) FILTER (WHERE rel{j} < 'Infinity')", "max", True),
    ("sum_abs", "sum(abs{j}) FILTER (WHERE abs{j} <= {big})", "sum", True),
    ("sum_abs_big", "sum(abs{j} * {down}) FILTER (WHERE abs{j} > {big} AND abs{j} < 'Infinity')", "sum", True),
    ("sum_sq", "sum(abs{j} * abs{j}) FILTER (WHERE abs{j} BETWEEN {small} AND {big})", "sum", True),
    ("sum_sq_big", "sum((abs{j} * {down}) * (abs{j} * {down})) FILTER (WHERE abs{j} > {big} AND abs{j} < 'Infinity')",
     "sum", True),
    ("sum_sq_small", "sum((abs{j} * {up}) * (abs{j} * {up})) FILTER (WHERE abs{j} > 0 AND abs{j} < {small})", "sum",
     True),
)


def _aggregate(expr: str, float_stat: bool, j: int, is_float: bool) -> str:
    """One of :data:`COLUMN_AGGREGATES` for column j."""
    if float_stat and not is_float:
        return "NULL::float8"
    null_side = f"abs{j} IS NULL" if is_float else f"nullmis{j}"
    return expr.format(j=j, null_side=null_side, **_BANDS)


def differing_rows(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None,
                   rules: Sequence[tuple[str, CellRule, sql.Composable]], top_n: int, failing_keys: bool) -> None:
    """One pass over the rows that differ at all of the series the first pass flagged, each cell
    classified once, nothing stored per cell:

    * ``_cmp_agg``: per series, its failing rows (a CRITICAL or WARNING cell) — how many, the
      first and last instant, the largest finite relative difference of its main value among
      their non-INFO cells — and, per column j (``spec.columns`` order), :data:`COLUMN_AGGREGATES`
      as ``c{j}_<name>``;
    * ``_cmp_top``: the keys of the ``top_n`` rows whose best cell ranks first in the order of
      :func:`top_differences` (every one of the top ``top_n`` cells lies in one of them: fewer
      than k rows hold a cell ranked above the k-th cell);
    * ``_cmp_failing`` (with ``failing_keys``, else empty): the key of every failing row.

    Severities are ranks (:attr:`CellRule.rank`): comparing their text a few dozen times a row
    cost more than the join. Only the rows whose best rank is at most the ``top_n``-th row's are
    ordered by the full key of :func:`top_differences` (its expressions, over every row of a
    changed price's series, took a tenth of the pass)."""
    main = next((j for j, (col, *_rest) in enumerate(rules) if col in MAIN_VALUES), None)
    keys = cols(spec.key)
    n = range(len(rules))
    floats = [spec.columns[col] == "float" for col, *_rest in rules]
    cells = [sql.SQL(
        "CASE WHEN {d} THEN {rank} END AS rank{j}, CASE WHEN {d} THEN {absd} END AS abs{j}, "
        "CASE WHEN {d} THEN {rel} END AS rel{j}"
        if is_float else
        "CASE WHEN {d} THEN {rank} END AS rank{j}, NULL::float8 AS abs{j}, NULL::float8 AS rel{j}, "
        "CASE WHEN {d} THEN ({a} IS NULL) <> ({b} IS NULL) END AS nullmis{j}"
    ).format(d=rule.differs, rank=rule.rank, absd=rule.abs_diff, rel=rule.rel_diff, j=sql.SQL(str(j)),
             a=sql.Identifier("s", col), b=sql.Identifier("r", col))
        for j, ((col, rule, _why), is_float) in enumerate(zip(rules, floats))]
    per_series = sql.SQL(
        """
        SELECT *, least({ranks}) AS best FROM (
            SELECT {ks}, {cells}
            FROM (SELECT * FROM {s} WHERE {f}) s JOIN (SELECT * FROM {r} WHERE {ids} AND {f}) r USING ({k})
            WHERE {row_differs} OFFSET 0
        ) cells
        """).format(ranks=sql.SQL(", ").join(sql.SQL(f"rank{j}") for j in n), ks=cols(spec.key, "s"),
                    cells=sql.SQL(", ").join(cells), s=spec.snapshot, r=spec.rebuilt, ids=ids_filter(None, ids),
                    f=of_series(spec, "first_differing"), k=keys, row_differs=row_differs(spec))
    # a row's place: its best cell's — its rank; among its cells of that rank, one without a
    # relative difference first, then the largest relative difference
    no_rel = sql.SQL(" OR ").join(sql.SQL(f"(rank{j} = best AND rel{j} IS NULL) IS TRUE") for j in n)
    best_rel = sql.SQL(", ").join(sql.SQL(f"CASE WHEN rank{j} = best THEN rel{j} END") for j in n)
    rel_main = sql.SQL("NULL::float8") if main is None else sql.SQL(
        f"max(rel{main}) FILTER (WHERE rank{main} < 2 AND rel{main} < 'Infinity')")
    aggregates = sql.SQL(", ").join(sql.SQL(f"{_aggregate(expr, float_stat, j, floats[j])} AS c{j}_{name}")
                                    for j in n for name, expr, _total, float_stat in COLUMN_AGGREGATES)
    for table in ("_cmp_top", "_cmp_failing"):
        conn.execute(sql.SQL("CREATE TEMP TABLE {t} AS SELECT {k} FROM {s} WITH NO DATA").format(
            t=sql.Identifier(table), k=keys, s=spec.snapshot))
    conn.execute(sql.SQL(
        """
        CREATE TEMP TABLE _cmp_agg AS
        WITH x AS MATERIALIZED (SELECT c.* FROM {flagged}), top AS (
            INSERT INTO _cmp_top SELECT {k} FROM x
            WHERE best <= (SELECT max(best) FROM (SELECT best FROM x ORDER BY best LIMIT {n}) b)
            ORDER BY best, ({no_rel}) DESC, greatest({best_rel}) DESC NULLS FIRST, {k} LIMIT {n}
        ), failing AS (
            INSERT INTO _cmp_failing SELECT {k} FROM x WHERE {keep} AND best < 2
        )
        SELECT {series}, count(*) FILTER (WHERE best < 2) AS n_fail,
               min({t}) FILTER (WHERE best < 2) AS lo_fail, max({t}) FILTER (WHERE best < 2) AS hi_fail,
               {rel_main} AS rel_main, {aggregates}
        FROM x GROUP BY {series}
        """).format(flagged=flagged_series("first_differing IS NOT NULL", per_series), k=keys, no_rel=no_rel,
                    best_rel=best_rel, n=sql.Literal(top_n), keep=sql.Literal(failing_keys), series=cols(spec.series),
                    t=sql.Identifier(spec.time), rel_main=rel_main, aggregates=aggregates))


def column_stats(conn: psycopg.Connection, spec: TableSpec, tolerances: Tolerances, rows: int,
                 stats_rows: int) -> tuple[ColumnStats, ...]:
    """Per column, its counts and differences over every series (``_cmp_agg``'s rows)."""
    totals = sql.SQL(", ").join(
        sql.SQL(f"{total}(c{j}_{name})") for j in range(len(spec.columns)) for name, _expr, total, _float in COLUMN_AGGREGATES)
    row = conn.execute(sql.SQL("SELECT {} FROM _cmp_agg").format(totals)).fetchone()
    width = len(COLUMN_AGGREGATES)
    out = []
    for j, (col, kind) in enumerate(spec.columns.items()):
        nulls, crit, warn, info, mx, mrel, *sums = row[j * width:(j + 1) * width]
        n = (crit or 0) + (warn or 0) + (info or 0)
        tol = tolerances.for_column(spec.table, col) if kind == "float" else None
        mean, std = _mean_std(stats_rows, *(v or 0.0 for v in sums)) if kind == "float" and stats_rows else (None, None)
        out.append(ColumnStats(col, kind, tol.rtol if tol else None, tol.atol if tol else None, rows, int(n or 0),
                               int(nulls or 0), int(crit or 0), int(warn or 0), int(info or 0),
                               mx if kind == "float" else None, mean, std, mrel if kind == "float" else None))
    return tuple(out)


def _mean_std(rows: int, sum_abs: float, sum_abs_big: float, sum_sq: float, sum_sq_big: float,
              sum_sq_small: float) -> tuple[float, float]:
    """Mean and population standard deviation of ``rows`` absolute differences (the rows not
    summed are zeros) from their banded sums (see :data:`BIG`), computed in the unit of the
    largest band present so that nothing in between leaves the float range; a result beyond
    it is ``inf``."""
    if sum_abs_big:  # unit 2**600
        s1 = sum_abs_big + math.ldexp(sum_abs, -SCALE)
        s2 = sum_sq_big + math.ldexp(sum_sq, -2 * SCALE) + math.ldexp(sum_sq_small, -4 * SCALE)
        unit = 2.0 ** SCALE
    elif sum_sq or not sum_sq_small:  # unit 1
        s1, s2, unit = sum_abs, sum_sq + math.ldexp(sum_sq_small, -2 * SCALE), 1.0
    else:  # unit 2**-600: only differences below 2**-480
        s1, s2, unit = math.ldexp(sum_abs, SCALE), sum_sq_small, 2.0 ** -SCALE
    mean = s1 / rows
    return mean * unit, math.sqrt(max(s2 / rows - mean * mean, 0.0)) * unit


def top_differences(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None,
                    rules: Sequence[tuple[str, CellRule, sql.Composable]], top_n: int) -> tuple[Difference, ...]:
    """The ``top_n`` largest differences, most severe first, then the largest relative
    difference (none first: a NULL or non-float cell), then by key and column: the differing
    cells of the rows ``_cmp_top`` holds, and the one-sided rows."""
    cells = []
    for col, rule, why in rules:
        # floats as float8 prints them (the shortest text that reads back the same number)
        cast = sql.SQL("::float8::text" if spec.columns[col] == "float" else "::text")
        cells.append(sql.SQL("({col}, {d}, {a}{cast}, {b}{cast}, {absd}, {rel}, {rank}, {why})").format(
            col=sql.Literal(col), d=rule.differs, a=sql.Identifier("s", col), b=sql.Identifier("r", col), cast=cast,
            absd=rule.abs_diff, rel=rule.rel_diff, rank=rule.rank, why=why))
    k = cols(spec.key)
    rows = conn.execute(sql.SQL(
        """
        SELECT {k}, col, s_val, r_val, abs_diff, rel_diff, rank, reason FROM (
            SELECT {ks}, v.col, v.s_val, v.r_val, v.abs_diff, v.rel_diff, v.rank, v.reason
            FROM _cmp_top t JOIN {s} s USING ({k}) JOIN (SELECT * FROM {r} WHERE {ids}) r USING ({k})
            CROSS JOIN LATERAL (VALUES {cells}) AS v(col, differs, s_val, r_val, abs_diff, rel_diff, rank, reason)
            WHERE v.differs
            UNION ALL
            SELECT {k}, '(row)', CASE WHEN in_snapshot THEN 'present' END, CASE WHEN NOT in_snapshot THEN 'present' END,
                   NULL, NULL, {critical},
                   CASE WHEN in_snapshot THEN 'only in the snapshot' ELSE 'only in the rebuilt table' END
            FROM _cmp_onesided
        ) x
        ORDER BY rank, rel_diff DESC NULLS FIRST, {k}, col
        LIMIT {n}
        """).format(k=k, ks=cols(spec.key, "t"), s=spec.snapshot, r=spec.rebuilt, ids=ids_filter(None, ids),
                    cells=sql.SQL(", ").join(cells), n=sql.Literal(top_n),
                    critical=severity_rank(CRITICAL))).fetchall()
    n = len(spec.key)
    return tuple(
        Difference({c: jsonable(v) for c, v in zip(spec.key, r[:n])}, r[n], r[n + 1], r[n + 2], r[n + 3], r[n + 4],
                   SEVERITIES[r[n + 5]], r[n + 6])
        for r in rows
    )
