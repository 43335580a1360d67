"""Snapshot vs rebuilt, one table, entirely in the database (the rules: :mod:`comparison_utils`).

1. **One pass over every row**: a full outer join on the key, aggregated per series (row
   counts, first/last instants, one-sided rows, rows that differ at all — bit level).
2. Only the series that pass flags are read again: their one-sided rows, and **every** row of
   a series with a differing row, cell by cell, classified. So every differing row is found
   and classified whatever the sampling options, and an identical table costs one pass.
3. Counts, per-column statistics, per-series divergences, the top differences.

Python receives aggregates, the per-series summaries and the top differences only. The work
tables are temporary tables of the caller's transaction: a caller may read them (e.g.
:func:`ta_lab2.baseline.causes.daily_changes`) before the transaction ends.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.baseline.comparison_utils import (
    FLOAT_TYPES, SEVERITIES, ExpectedDiff, Sampling, Tolerances, allow_list_match, allowed_for, cell_rule, zero_sign_differs,
)
from ta_lab2.baseline.results import ColumnStats, Difference, SeriesCount, SeriesDivergence, TableComparison
from ta_lab2.db.bulk import TableRef, array_params, column_types


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


def column_kinds(conn: psycopg.Connection, qualified: sql.Identifier) -> dict[str, str]:
    rows = conn.execute(
        """
        SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
        """,
        (qualified.as_string(conn),),
    ).fetchall()
    return {name: ("float" if typ in FLOAT_TYPES else "exact") for name, typ in rows}


def series_and_time(key: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Series columns (id, tf[, period]) and the time column of a key."""
    time_col = next(c for c in ("ts", "time_close", "timestamp") if c in key)
    series = tuple(c for c in key if c in ("id", "tf", "period"))
    return series, time_col


def _ids(alias: str | None, ids: Sequence[int] | None) -> sql.Composable:
    if ids is None:
        return sql.SQL("TRUE")
    col = sql.Identifier(alias, "id") if alias else sql.Identifier("id")
    return sql.SQL("{} = ANY({})").format(col, sql.Literal(list(ids)))


@contextmanager
def _settings(conn: psycopg.Connection, **values: str) -> Iterator[None]:
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


#: the value a series is about, in order of preference: a bar's close, an EMA's value (its
#: derivatives' relative differences are large near zero and say little of the series)
MAIN_VALUES = ("close", "ema")

#: ``work_mem`` of the pass over every row: the hash of a 3.4M-row EMA table takes ~360 MB; with
#: the server's 64 MB it went to disk in batches and took twice as long. Per query (and up to
#: ``hash_mem_multiplier`` times it for the hash), two tables at a time in a capture.
PASS_WORK_MEM = "512MB"


def _split_point(conn: psycopg.Connection, table: sql.Composable, columns: Sequence[sql.Composable]) -> Any:
    """The value of ``columns`` (the key's first columns, as a tuple) that best halves
    ``table``'s rows, judged from a sample of its pages; None when no value splits it."""
    pages = conn.execute("SELECT pg_relation_size(to_regclass(%s)) / current_setting('block_size')::int",
                         (table.as_string(conn),)).fetchone()[0] or 0
    pct = min(100.0, max(0.1, 100.0 * 200 / max(pages, 1)))  # ~200 pages: ~20,000 rows
    cols = sql.SQL(", ").join(columns)
    counts = conn.execute(sql.SQL(
        "SELECT {c}, count(*) FROM {t} TABLESAMPLE SYSTEM ({p}) REPEATABLE (0) GROUP BY {c} ORDER BY {c}").format(
        c=cols, t=table, p=sql.Literal(pct))).fetchall()
    if len(counts) < 2:
        return None
    # rows below each candidate value (a split at counts[i] puts counts[:i] below it)
    below = np.cumsum([r[-1] for r in counts])[:-1]
    best = int(np.argmin(np.abs(2 * below - below[-1] - counts[-1][-1])))
    return tuple(counts[best + 1][:-1])


def _fetch_frame(conn: psycopg.Connection, query: sql.Composable, settings: Mapping[str, str]) -> pl.DataFrame:
    """Run ``query`` (with the first pass's settings and ``settings``) and return its rows as a frame."""
    with _settings(conn, enable_sort="off", jit="off", **settings):
        cur = conn.execute(query)
        names = [d.name for d in cur.description]
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row")


def row_differs(spec: TableSpec, s: str = "s", r: str = "r") -> sql.Composable:
    """True when the value columns of rows ``s`` and ``r`` are not bit-identical."""
    cols = list(spec.columns)
    whole = sql.SQL("ROW({}) IS DISTINCT FROM ROW({})").format(
        sql.SQL(", ").join(sql.Identifier(s, c) for c in cols), sql.SQL(", ").join(sql.Identifier(r, c) for c in cols))
    # equal as numbers yet not bit-identical: +0.0 vs -0.0 (only zeros need the second look)
    zeros = [zero_sign_differs(sql.Identifier(s, c), sql.Identifier(r, c)) for c, k in spec.columns.items()
             if k == "float"]
    return sql.SQL("(") + sql.SQL(" OR ").join([whole, *zeros]) + sql.SQL(")")


def compare_table(
    conn: psycopg.Connection,
    spec: TableSpec,
    ids: Sequence[int] | None,
    sampling: Sampling,
    tolerances: Tolerances,
    expected: Sequence[ExpectedDiff] = (),
    top_n: int = 20,
    helper: psycopg.Connection | None = None,
) -> TableComparison:
    """Compare ``spec.snapshot`` with ``spec.rebuilt`` (restricted to ``ids``) in SQL.

    ``helper``: a second (autocommit) connection to the same database; the pass over every row
    then runs half on it, concurrently. Meant for a table compared on its own (a capture
    already compares several tables at once)."""
    conn.execute("DROP TABLE IF EXISTS pg_temp._cmp_diffs, pg_temp._cmp_onesided, pg_temp._cmp_series")
    _first_pass(conn, spec, ids, sampling.seed, helper)
    any_onesided, any_differing = conn.execute(
        "SELECT coalesce(bool_or(n_onesided > 0), false), coalesce(bool_or(n_differing > 0), false) FROM _cmp_series"
    ).fetchone()
    if any_onesided or any_differing:
        # the flagged series: their count steers the joins below (statistics of the two big
        # tables are not needed once nested loops are off — ANALYZE of both sides cost more
        # than the rest of a changed table's compare)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("_cmp_series")))
    # The planner multiplies the selectivities of the series columns (id, tf, period), expects
    # a handful of rows per series and may join each flagged series' rows pairwise in a nested
    # loop (the other side's index probed per series, the time only filtered): quadratic in
    # the series' length — one table of 100k rows, 47 flagged series of ~700 rows, took over 13
    # minutes, and 3.4 s with hash and merge joins only.
    with _settings(conn, enable_nestloop="off"):
        _one_sided_rows(conn, spec, ids, _flagged(spec, "n_onesided > 0", any_onesided))
        _differing_cells(conn, spec, ids, _flagged(spec, "n_differing > 0", any_differing), tolerances,
                         [e for e in expected if e.table == spec.table])
    only_s, only_r = (int(v or 0) for v in conn.execute(
        "SELECT count(*) FILTER (WHERE in_snapshot), count(*) FILTER (WHERE NOT in_snapshot) FROM _cmp_onesided").fetchone())
    n_s, n_r, differing_series = (int(v or 0) for v in conn.execute(
        "SELECT sum(n_s), sum(n_r), count(*) FILTER (WHERE n_differing > 0 OR n_onesided > 0) FROM _cmp_series").fetchone())
    rows_compared = n_s - only_s
    stats_rows = rows_compared if sampling.full else _stats_rows(conn, sampling)
    mismatching_rows = int(conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT DISTINCT {k} FROM _cmp_diffs WHERE severity <> 'INFO') d").format(
            k=_cols(spec.key))).fetchone()[0])
    sev_counts = dict(conn.execute("SELECT severity, count(*) FROM _cmp_diffs GROUP BY severity").fetchall())
    sev_counts = {sv: int(sev_counts.get(sv, 0)) for sv in SEVERITIES}
    sev_counts["CRITICAL"] += only_s + only_r
    return TableComparison(
        table=spec.table, snapshot=spec.snapshot.as_string(conn), rebuilt=spec.rebuilt.as_string(conn),
        rows_snapshot=n_s, rows_rebuilt=n_r, only_in_snapshot=only_s, only_in_rebuilt=only_r,
        rows_compared=rows_compared, cells_compared=rows_compared * len(spec.columns),
        mismatching_rows=mismatching_rows, severity_counts=sev_counts,
        columns=_column_stats(conn, spec, tolerances, rows_compared, stats_rows), divergences=_divergences(conn, spec),
        top_differences=_top(conn, spec, top_n), series_count_mismatches=_series_counts(conn, spec),
        stats_rows=stats_rows, sampled=not sampling.full and stats_rows < rows_compared,
        differing_series=differing_series,
    )


def _cols(names: Sequence[str], alias: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in names)


def _flagged(spec: TableSpec, cond: str, anything: bool) -> sql.Composable:
    """Rows of the series the first pass flagged with ``cond``. A constant FALSE when none is:
    the planner then reads no row at all, where a filter that happens to match nothing would
    still scan both tables."""
    if not anything:
        return sql.SQL("FALSE")
    return sql.SQL("({series}) IN (SELECT {series} FROM _cmp_series WHERE {cond})").format(
        series=_cols(spec.series), cond=sql.SQL(cond))


def _first_pass(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None, seed: int,
                helper: psycopg.Connection | None) -> None:
    """``_cmp_series``: per series, counts and first/last instants on each side, one-sided
    rows, rows whose values differ at all, and a hash of the series (its sample's offset)."""
    key = [sql.Identifier(c) for c in spec.key]
    # The planner cannot estimate the number of series (the keys are the join's merged
    # columns) and guesses one per row, so it sorts every joined row to group them; a hash
    # aggregate over the few series is about twice as fast. JIT compilation of this pass's
    # many expressions costs ~0.2 s and saves nothing measurable.
    first_pass = sql.SQL(
        """
        SELECT {series}, hashtextextended(concat_ws('|', {series}), {seed}) AS series_hash,
               count(s.{k0}) AS n_s, count(r.{k0}) AS n_r, min(s.{t}) AS lo_s, max(s.{t}) AS hi_s,
               min(r.{t}) AS lo_r, max(r.{t}) AS hi_r,
               count(*) FILTER (WHERE s.{k0} IS NULL OR r.{k0} IS NULL) AS n_onesided,
               count(*) FILTER (WHERE s.{k0} IS NOT NULL AND r.{k0} IS NOT NULL AND {differs}) AS n_differing
        FROM (SELECT * FROM {s} WHERE {part}) s FULL JOIN (SELECT * FROM {r} WHERE {ids} AND {part}) r USING ({k})
        GROUP BY {series}
        """
    ).format
    args = dict(series=_cols(spec.series), k0=key[0], t=sql.Identifier(spec.time), s=spec.snapshot, r=spec.rebuilt,
                ids=_ids(None, ids), k=sql.SQL(", ").join(key), differs=row_differs(spec), seed=sql.Literal(seed))
    split_on = key[:2]  # id and the next key column: a few ids may hold most rows
    split = _split_point(conn, spec.snapshot, split_on) if helper is not None else None
    # two halves on two backends are the parallelism: no parallel workers on top of them
    settings = {"work_mem": PASS_WORK_MEM, **({} if split is None else {"max_parallel_workers_per_gather": "0"}),
                **({"enable_hashjoin": "off"} if spec.presorted else {})}
    with _settings(conn, enable_sort="off", jit="off", **settings):
        if split is None or helper is None:
            conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_series AS ") + first_pass(part=sql.SQL("TRUE"), **args))
            return
        # The two halves of the key space on two backends at once (PostgreSQL's own parallel
        # hash join gains nothing here on two cores; two backends run ~1.7x faster): the
        # helper's per-series rows are added to the temporary table.
        on = sql.SQL("ROW({})").format(sql.SQL(", ").join(split_on))
        at = sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Literal, split)))
        with ThreadPoolExecutor(max_workers=1) as pool:
            upper = pool.submit(_fetch_frame, helper, first_pass(part=sql.SQL("{} >= {}").format(on, at), **args), settings)
            conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_series AS ")
                         + first_pass(part=sql.SQL("{} < {}").format(on, at), **args))
            rows = upper.result()
    if rows.height:
        types = column_types(conn, TableRef("pg_temp", "_cmp_series"))
        conn.execute(sql.SQL("INSERT INTO _cmp_series SELECT * FROM unnest({})").format(
            sql.SQL(", ").join(sql.SQL("%b") for _ in types)), array_params(conn, rows, list(types.values())))


def _one_sided_rows(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None, where: sql.Composable) -> None:
    """``_cmp_onesided``: the key of every row present on one side only, and which side."""
    conn.execute(sql.SQL(
        """
        CREATE TEMP TABLE _cmp_onesided AS
        SELECT {k}, s_present IS NOT NULL AS in_snapshot
        FROM (SELECT {k}, TRUE AS s_present FROM {s} WHERE {f}) s
        FULL JOIN (SELECT {k}, TRUE AS r_present FROM {r} WHERE {ids} AND {f}) r USING ({k})
        WHERE s_present IS NULL OR r_present IS NULL
        """).format(k=_cols(spec.key), s=spec.snapshot, r=spec.rebuilt, ids=_ids(None, ids), f=where))


def _differing_cells(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None, where: sql.Composable,
                     tolerances: Tolerances, allow: Sequence[ExpectedDiff]) -> None:
    """``_cmp_diffs``: one row per differing cell of every row of the flagged series, with its
    severity (rows are filtered with one row comparison, then unpivoted; only a cell that
    differs gets its differences and severity computed — every rule evaluated on every cell
    of a differing row cost ~10 µs a row per column)."""
    v = {c: sql.Identifier("v", c) for c in ("s_num", "r_num", "s_txt", "r_txt")}
    cells, abs_cases, rel_cases, sev_cases, why_cases = [], [], [], [], []
    for col, kind in spec.columns.items():
        a, b = sql.Identifier("s", col), sql.Identifier("r", col)
        allowed = allowed_for(allow, col)
        match = allow_list_match(allowed[1]) if allowed else None
        tol = tolerances.for_column(spec.table, col) if kind == "float" else None
        # floats stay numbers (turned into text for the top differences only: ~1 µs a value)
        if kind == "float":
            values = sql.SQL("{a}::float8, {b}::float8, NULL::text, NULL::text").format(a=a, b=b)
            rule = cell_rule(v["s_num"], v["r_num"], kind, tol, match)
        else:
            values = sql.SQL("NULL::float8, NULL::float8, {a}::text, {b}::text").format(a=a, b=b)
            rule = cell_rule(v["s_txt"], v["r_txt"], kind, tol, match)
        cells.append(sql.SQL("({col}, {differs}, {values})").format(
            col=sql.Literal(col), differs=cell_rule(a, b, kind, tol).differs, values=values))
        when = sql.SQL(" WHEN {} THEN ").format(sql.Literal(col))
        abs_cases.append(when + rule.abs_diff)
        rel_cases.append(when + rule.rel_diff)
        sev_cases.append(when + rule.severity)
        if allowed and match is not None:
            why_cases.append(when + sql.SQL("CASE WHEN {m} THEN {r} END").format(m=match, r=sql.Literal(allowed[0])))

    def by_column(cases: list[sql.Composable], cast: str) -> sql.Composable:
        if not cases:
            return sql.SQL(f"NULL::{cast}")
        return sql.SQL("CASE v.col") + sql.SQL("").join(cases) + sql.SQL(f" END::{cast}")

    conn.execute(sql.SQL(
        """
        CREATE TEMP TABLE _cmp_diffs AS
        SELECT {kq}, v.col, v.s_num, v.r_num, v.s_txt, v.r_txt, {abs_diff} AS abs_diff, {rel_diff} AS rel_diff,
               {severity} AS severity,
               (v.s_num IS NULL AND v.s_txt IS NULL) <> (v.r_num IS NULL AND v.r_txt IS NULL) AS null_mismatch,
               {reason} AS reason
        FROM (SELECT * FROM {s} WHERE {f}) s JOIN (SELECT * FROM {r} WHERE {ids} AND {f}) r USING ({k})
        CROSS JOIN LATERAL (VALUES {cells}) AS v(col, differs, s_num, r_num, s_txt, r_txt)
        WHERE {row_differs} AND v.differs
        """).format(kq=_cols(spec.key, "s"), s=spec.snapshot, r=spec.rebuilt, ids=_ids(None, ids), f=where,
                    k=_cols(spec.key), cells=sql.SQL(", ").join(cells), row_differs=row_differs(spec),
                    abs_diff=by_column(abs_cases, "float8"), rel_diff=by_column(rel_cases, "float8"),
                    severity=by_column(sev_cases, "text"), reason=by_column(why_cases, "text")))


def _stats_rows(conn: psycopg.Connection, sampling: Sampling) -> int:
    """Rows behind the mean/std of differences: every matched row of a series with any
    difference, plus, of each identical series, its first ``beginning`` and last ``end`` rows
    and a systematic sample of the rows between (every k-th, k = 1 / random_pct, from an
    offset drawn from the series and the seed). Counted from the series' sizes alone: the
    sample of an identical series is known to hold zero differences, so no row is read."""
    k = max(1, round(1 / sampling.random_pct)) if sampling.random_pct > 0 else 0
    row = conn.execute(
        """
        SELECT coalesce(sum(CASE WHEN n_differing > 0 OR n_onesided > 0 THEN (n_s + n_r - n_onesided) / 2
                                 ELSE least(n_s, %(b)s + %(e)s) + CASE WHEN %(k)s = 0 OR n_s <= %(b)s + %(e)s THEN 0
                                      ELSE floor((n_s - %(e)s - off)::float8 / %(k)s) - floor((%(b)s - off)::float8 / %(k)s)
                                      END END), 0)
        FROM (SELECT *, CASE WHEN %(k)s > 0 THEN abs(series_hash %% %(k)s) ELSE 0 END AS off FROM _cmp_series) c
        """,
        {"b": sampling.beginning, "e": sampling.end, "k": k},
    ).fetchone()
    return int(row[0])


def _column_stats(conn: psycopg.Connection, spec: TableSpec, tolerances: Tolerances, rows: int,
                  stats_rows: int) -> tuple[ColumnStats, ...]:
    agg = {
        r[0]: r[1:]
        for r in conn.execute(
            """
            SELECT col, count(*), count(*) FILTER (WHERE null_mismatch),
                   count(*) FILTER (WHERE severity = 'CRITICAL'), count(*) FILTER (WHERE severity = 'WARNING'),
                   count(*) FILTER (WHERE severity = 'INFO'),
                   max(abs_diff) FILTER (WHERE abs_diff < 'Infinity'),
                   sum(abs_diff) FILTER (WHERE abs_diff < 'Infinity'),
                   sum(abs_diff * abs_diff) FILTER (WHERE abs_diff < 'Infinity'),
                   max(rel_diff) FILTER (WHERE rel_diff < 'Infinity')
            FROM _cmp_diffs GROUP BY col
            """
        ).fetchall()
    }
    out = []
    for col, kind in spec.columns.items():
        n, nulls, crit, warn, info, mx, sm, sq, mrel = agg.get(col, (0, 0, 0, 0, 0, None, None, None, None))
        tol = tolerances.for_column(spec.table, col) if kind == "float" else None
        mean = std = None
        if kind == "float" and stats_rows:
            mean = (sm or 0.0) / stats_rows
            std = math.sqrt(max((sq or 0.0) / stats_rows - mean * mean, 0.0))
        out.append(ColumnStats(col, kind, tol.rtol if tol else None, tol.atol if tol else None, rows, int(n), int(nulls),
                               int(crit), int(warn), int(info), mx if kind == "float" else None, mean, std,
                               mrel if kind == "float" else None))
    return tuple(out)


def ts_text(v: Any) -> str | None:
    return None if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v))


def _jsonable(v: Any) -> Any:
    return ts_text(v) if hasattr(v, "isoformat") else v


def _divergences(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesDivergence, ...]:
    """Every series with a failing difference (a non-INFO cell or a one-sided row): first and
    last such instant, how many rows, whether it reaches the series' last row, and the largest
    finite relative difference of its main value (close, or ema)."""
    main = next((c for c in MAIN_VALUES if c in spec.columns), None)
    rows = conn.execute(sql.SQL(
        """
        WITH d AS (
            SELECT {k}, max(rel_diff) FILTER (WHERE rel_diff < 'Infinity' AND col = {main}) AS rel
            FROM _cmp_diffs WHERE severity <> 'INFO' GROUP BY {k}
            UNION ALL SELECT {k}, NULL FROM _cmp_onesided
        )
        SELECT {series}, min(d.{t}), max(d.{t}), count(*), max(d.{t}) >= max(greatest(e.hi_s, e.hi_r)), max(d.rel)
        FROM d JOIN _cmp_series e USING ({series}) GROUP BY {series} ORDER BY min(d.{t}), {series}
        """).format(k=_cols(spec.key), series=_cols(spec.series), t=sql.Identifier(spec.time),
                    main=sql.Literal(main))).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesDivergence({c: _jsonable(v) for c, v in zip(spec.series, r[:n])}, ts_text(r[n]), ts_text(r[n + 1]),
                         int(r[n + 2]), bool(r[n + 3]), max_rel_diff=r[n + 4])
        for r in rows
    )


def _top(conn: psycopg.Connection, spec: TableSpec, top_n: int) -> tuple[Difference, ...]:
    k = _cols(spec.key)
    rows = conn.execute(sql.SQL(
        """
        SELECT {k}, col, s_val, r_val, abs_diff, rel_diff, severity, reason FROM (
            SELECT {k}, col, coalesce(s_txt, s_num::text) AS s_val, coalesce(r_txt, r_num::text) AS r_val, abs_diff,
                   rel_diff, severity, reason FROM _cmp_diffs
            UNION ALL
            SELECT {k}, '(row)', CASE WHEN in_snapshot THEN 'present' END, CASE WHEN NOT in_snapshot THEN 'present' END,
                   NULL, NULL, 'CRITICAL',
                   CASE WHEN in_snapshot THEN 'only in the snapshot' ELSE 'only in the rebuilt table' END
            FROM _cmp_onesided
        ) x
        ORDER BY CASE severity WHEN 'CRITICAL' THEN 0 WHEN 'WARNING' THEN 1 ELSE 2 END, rel_diff DESC NULLS FIRST, {k}
        LIMIT {n}
        """).format(k=k, n=sql.Literal(top_n))).fetchall()
    n = len(spec.key)
    return tuple(
        Difference({c: _jsonable(v) for c, v in zip(spec.key, r[:n])}, r[n], r[n + 1], r[n + 2], r[n + 3], r[n + 4],
                   r[n + 5], r[n + 6])
        for r in rows
    )


def _series_counts(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesCount, ...]:
    """Per (id, tf[, period]) row counts and first/last instants, listed where they differ."""
    rows = conn.execute(sql.SQL(
        "SELECT {series}, n_s, n_r, lo_s, hi_s, lo_r, hi_r FROM _cmp_series "
        "WHERE n_s <> n_r OR lo_s IS DISTINCT FROM lo_r OR hi_s IS DISTINCT FROM hi_r ORDER BY {series}"
    ).format(series=_cols(spec.series))).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesCount({c: _jsonable(v) for c, v in zip(spec.series, r[:n])}, int(r[n]), int(r[n + 1]),
                    *(ts_text(v) for v in r[n + 2: n + 6]))
        for r in rows
    )
