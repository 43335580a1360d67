"""Snapshot vs rebuilt, one table, entirely in the database (the rules: :mod:`comparison_utils`).

1. **One pass over every row**: a full outer join on the key, aggregated per series (row
   counts, first/last instants, one-sided rows, the first row whose values differ at all —
   bit level).
2. Only the series that pass flags are read again, each by a range of the primary-key index:
   their one-sided rows, and **every** row of a series from its first differing row on, cell
   by cell, classified (:mod:`ta_lab2.baseline.differing`). So every differing row is found
   and classified whatever the sampling options, and an identical table costs one pass.
3. Counts, per-column statistics, per-series divergences, the top differences.

Python receives aggregates, the per-series summaries and the top differences only. The work
tables are temporary tables of the caller's transaction: a caller may read them (e.g.
:func:`ta_lab2.baseline.causes.daily_changes`) before the transaction ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.baseline.comparison_utils import CRITICAL, INFO, WARNING, ExpectedDiff, Sampling, Tolerances
from ta_lab2.baseline.differing import cell_rules, column_stats, differing_rows, top_differences
from ta_lab2.baseline.results import SeriesCount, SeriesDivergence, TableComparison
from ta_lab2.baseline.table_sql import (
    TableSpec, cols, flagged_series, ids_filter, jsonable, of_series, planner_settings, row_differs, ts_text,
)
from ta_lab2.db.bulk import TableRef, array_params, column_types


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
    with planner_settings(conn, enable_sort="off", jit="off", **settings):
        cur = conn.execute(query)
        names = [d.name for d in cur.description]
        # every row decides a column's type: NULLs in the first hundred (identical series have
        # no first difference) must not fix it before a later value is seen
        return pl.DataFrame(cur.fetchall(), schema=names, orient="row", infer_schema_length=None)


def compare_table(
    conn: psycopg.Connection,
    spec: TableSpec,
    ids: Sequence[int] | None,
    sampling: Sampling,
    tolerances: Tolerances,
    expected: Sequence[ExpectedDiff] = (),
    top_n: int = 20,
    helper: psycopg.Connection | None = None,
    failing_keys: bool = False,
) -> TableComparison:
    """Compare ``spec.snapshot`` with ``spec.rebuilt`` (restricted to ``ids``) in SQL.

    ``helper``: a second (autocommit) connection to the same database; the pass over every row
    then runs half on it, concurrently. Meant for a table compared on its own (a capture
    already compares several tables at once). ``failing_keys``: keep the key of every failing
    row in the temporary table ``_cmp_failing`` (and one-sided rows in ``_cmp_onesided``) for
    the caller to read before its transaction ends."""
    conn.execute("DROP TABLE IF EXISTS pg_temp._cmp_agg, pg_temp._cmp_top, pg_temp._cmp_failing, "
                 "pg_temp._cmp_onesided, pg_temp._cmp_series")
    _first_pass(conn, spec, ids, sampling.seed, helper)
    # Each flagged series is read on its own (see flagged_series). Inside one, the planner — which
    # multiplies the selectivities of id, tf and period and expects a handful of rows — may
    # join the two sides pairwise in a nested loop, quadratic in the series' length (one table
    # of 100k rows, 47 flagged series of ~700 rows, took over 13 minutes): hash and merge
    # joins only; and no memoized per-series results, which are never reused.
    with planner_settings(conn, enable_nestloop="off", enable_memoize="off"):
        _one_sided_rows(conn, spec, ids)
        rules = cell_rules(spec, tolerances, [e for e in expected if e.table == spec.table])
        differing_rows(conn, spec, ids, rules, top_n, failing_keys)
    only_s, only_r = (int(v or 0) for v in conn.execute(
        "SELECT count(*) FILTER (WHERE in_snapshot), count(*) FILTER (WHERE NOT in_snapshot) FROM _cmp_onesided").fetchone())
    n_s, n_r, differing_series = (int(v or 0) for v in conn.execute(
        "SELECT sum(n_s), sum(n_r), count(*) FILTER (WHERE first_differing IS NOT NULL OR n_onesided > 0) "
        "FROM _cmp_series").fetchone())
    rows_compared = n_s - only_s
    stats_rows = rows_compared if sampling.full else _stats_rows(conn, sampling)
    columns = column_stats(conn, spec, tolerances, rows_compared, stats_rows)
    mismatching_rows = int(conn.execute("SELECT coalesce(sum(n_fail), 0) FROM _cmp_agg").fetchone()[0])
    sev_counts = {CRITICAL: sum(c.critical for c in columns) + only_s + only_r,
                  WARNING: sum(c.warning for c in columns), INFO: sum(c.info for c in columns)}
    return TableComparison(
        table=spec.table, snapshot=spec.snapshot.as_string(conn), rebuilt=spec.rebuilt.as_string(conn),
        rows_snapshot=n_s, rows_rebuilt=n_r, only_in_snapshot=only_s, only_in_rebuilt=only_r,
        rows_compared=rows_compared, cells_compared=rows_compared * len(spec.columns),
        mismatching_rows=mismatching_rows, severity_counts=sev_counts,
        columns=columns, divergences=_divergences(conn, spec),
        top_differences=top_differences(conn, spec, ids, rules, top_n), series_count_mismatches=_series_counts(conn, spec),
        stats_rows=stats_rows, sampled=not sampling.full and stats_rows < rows_compared,
        differing_series=differing_series,
    )


def _first_pass(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None, seed: int,
                helper: psycopg.Connection | None) -> None:
    """``_cmp_series``: per series, counts and first/last instants on each side, one-sided
    rows, the first instant whose values differ at all (NULL: none), and a hash of the series
    (its sample's offset)."""
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
               min(s.{t}) FILTER (WHERE s.{k0} IS NOT NULL AND r.{k0} IS NOT NULL AND {differs}) AS first_differing
        FROM (SELECT * FROM {s} WHERE {part}) s FULL JOIN (SELECT * FROM {r} WHERE {ids} AND {part}) r USING ({k})
        GROUP BY {series}
        """
    ).format
    args = dict(series=cols(spec.series), k0=key[0], t=sql.Identifier(spec.time), s=spec.snapshot, r=spec.rebuilt,
                ids=ids_filter(None, ids), k=sql.SQL(", ").join(key), differs=row_differs(spec), seed=sql.Literal(seed))
    split_on = key[:2]  # id and the next key column: a few ids may hold most rows
    split = _split_point(conn, spec.snapshot, split_on) if helper is not None else None
    # two halves on two backends are the parallelism: no parallel workers on top of them
    settings = {"work_mem": PASS_WORK_MEM, **({} if split is None else {"max_parallel_workers_per_gather": "0"}),
                **({"enable_hashjoin": "off"} if spec.presorted else {})}
    with planner_settings(conn, enable_sort="off", jit="off", **settings):
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
    # a split inside a series (a key whose second column is the time, as the 1D table's) leaves
    # a row of it in each half: one row per series again
    conn.execute(sql.SQL(
        """
        CREATE TEMP TABLE _cmp_series_whole AS
        SELECT {series}, min(series_hash) AS series_hash, sum(n_s)::bigint AS n_s, sum(n_r)::bigint AS n_r,
               min(lo_s) AS lo_s, max(hi_s) AS hi_s, min(lo_r) AS lo_r, max(hi_r) AS hi_r,
               sum(n_onesided)::bigint AS n_onesided, min(first_differing) AS first_differing
        FROM _cmp_series GROUP BY {series}
        """).format(series=cols(spec.series)))
    conn.execute("DROP TABLE _cmp_series")
    conn.execute("ALTER TABLE _cmp_series_whole RENAME TO _cmp_series")


def _one_sided_rows(conn: psycopg.Connection, spec: TableSpec, ids: Sequence[int] | None) -> None:
    """``_cmp_onesided``: the key of every row present on one side only, and which side."""
    per_series = sql.SQL(
        """
        SELECT {k}, s_present IS NOT NULL AS in_snapshot
        FROM (SELECT {k}, TRUE AS s_present FROM {s} WHERE {f}) s
        FULL JOIN (SELECT {k}, TRUE AS r_present FROM {r} WHERE {ids} AND {f}) r USING ({k})
        WHERE s_present IS NULL OR r_present IS NULL
        """).format(k=cols(spec.key), s=spec.snapshot, r=spec.rebuilt, ids=ids_filter(None, ids), f=of_series(spec))
    conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_onesided AS SELECT c.* FROM {}").format(
        flagged_series("n_onesided > 0", per_series)))


def _stats_rows(conn: psycopg.Connection, sampling: Sampling) -> int:
    """Rows behind the mean/std of differences: every matched row of a series with any
    difference, plus, of each identical series, its first ``beginning`` and last ``end`` rows
    and a systematic sample of the rows between (every k-th, k = 1 / random_pct, from an
    offset drawn from the series and the seed). Counted from the series' sizes alone: the
    sample of an identical series is known to hold zero differences, so no row is read."""
    k = max(1, round(1 / sampling.random_pct)) if sampling.random_pct > 0 else 0
    row = conn.execute(
        """
        SELECT coalesce(sum(CASE WHEN first_differing IS NOT NULL OR n_onesided > 0 THEN (n_s + n_r - n_onesided) / 2
                                 ELSE least(n_s, %(b)s + %(e)s) + CASE WHEN %(k)s = 0 OR n_s <= %(b)s + %(e)s THEN 0
                                      ELSE floor((n_s - %(e)s - off)::float8 / %(k)s) - floor((%(b)s - off)::float8 / %(k)s)
                                      END END), 0)
        FROM (SELECT *, CASE WHEN %(k)s > 0 THEN abs(series_hash %% %(k)s) ELSE 0 END AS off FROM _cmp_series) c
        """,
        {"b": sampling.beginning, "e": sampling.end, "k": k},
    ).fetchone()
    return int(row[0])


def _divergences(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesDivergence, ...]:
    """Every series with a failing difference (a non-INFO cell or a one-sided row): first and
    last such instant, how many rows, whether it reaches the series' last row, and the largest
    finite relative difference of its main value (close, or ema)."""
    rows = conn.execute(sql.SQL(
        """
        WITH d AS (
            SELECT {series}, lo_fail AS lo, hi_fail AS hi, n_fail AS n, rel_main AS rel FROM _cmp_agg WHERE n_fail > 0
            UNION ALL SELECT {series}, min({t}), max({t}), count(*), NULL FROM _cmp_onesided GROUP BY {series}
        )
        SELECT {series}, min(d.lo), max(d.hi), sum(d.n), max(d.hi) >= max(greatest(e.hi_s, e.hi_r)), max(d.rel)
        FROM d JOIN _cmp_series e USING ({series}) GROUP BY {series} ORDER BY min(d.lo), {series}
        """).format(series=cols(spec.series), t=sql.Identifier(spec.time))).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesDivergence({c: jsonable(v) for c, v in zip(spec.series, r[:n])}, ts_text(r[n]), ts_text(r[n + 1]),
                         int(r[n + 2]), bool(r[n + 3]), max_rel_diff=r[n + 4])
        for r in rows
    )


def _series_counts(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesCount, ...]:
    """Per (id, tf[, period]) row counts and first/last instants, listed where they differ."""
    rows = conn.execute(sql.SQL(
        "SELECT {series}, n_s, n_r, lo_s, hi_s, lo_r, hi_r FROM _cmp_series "
        "WHERE n_s <> n_r OR lo_s IS DISTINCT FROM lo_r OR hi_s IS DISTINCT FROM hi_r ORDER BY {series}"
    ).format(series=cols(spec.series))).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesCount({c: jsonable(v) for c, v in zip(spec.series, r[:n])}, int(r[n]), int(r[n + 1]),
                    *(ts_text(v) for v in r[n + 2: n + 6]))
        for r in rows
    )
