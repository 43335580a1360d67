"""Comparing the pipeline's tables: one :func:`compare_table` per table, run concurrently, then
the root causes over all of them and, for the largest roots, the values of their most
affected series around the first divergence (the report's charts)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline.causes import attribute, daily_changes
from ta_lab2.baseline.compare import compare_table
from ta_lab2.baseline.table_sql import MAIN_VALUES, TableSpec, column_kinds, primary_key, series_and_time, ts_text
from ta_lab2.baseline.comparison_utils import VOLATILE_COLUMNS, ExpectedDiff, Sampling, Tolerances
from ta_lab2.baseline.naming import aux_schema, snapshot_name
from ta_lab2.baseline.results import RootCause, TableComparison, failed_comparison
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, EMA_TABLES
from ta_lab2.errors import DatabaseError
from ta_lab2.redaction import redact
from ta_lab2.emas.registry import REFRESHERS

log = logging.getLogger(__name__)

#: roots that get a chart in the report, and the days shown before/after the first divergence
CHARTED_ROOTS = 6
WINDOW_BEFORE, WINDOW_AFTER = dt.timedelta(days=30), dt.timedelta(days=90)


@dataclass(frozen=True)
class CompareSettings:
    sampling: Sampling = Sampling()
    tolerances: Tolerances = Tolerances()
    expected: tuple[ExpectedDiff, ...] = ()
    top_n: int = 20


@dataclass(frozen=True)
class RootChart:
    """Snapshot vs rebuilt values of one series around a root's first divergence."""

    root: int
    table: str
    series: dict[str, Any]
    column: str
    first_ts: str
    points: tuple[tuple[str, float | None, float | None], ...]  # (instant, snapshot, rebuilt)


@dataclass(frozen=True)
class Comparison:
    tables: tuple[TableComparison, ...]
    root_causes: tuple[RootCause, ...]
    charts: tuple[RootChart, ...]


def table_spec(conn: psycopg.Connection, table: str, suffix: str, rebuilt_schema: str, schema: str = "public",
               presorted: bool = False) -> TableSpec:
    live = sql.Identifier(schema, table)
    key = primary_key(conn, live)
    series, time_col = series_and_time(key)
    # both sides' columns: one that only one side has (dropped or renamed since the snapshot,
    # or added) would otherwise be left out of the comparison, or break it halfway
    def values(at: str, name: str) -> dict[str, str]:
        return {c: k for c, k in column_kinds(conn, at, name).items() if c not in VOLATILE_COLUMNS and c not in key}

    snap, cols = values(schema, snapshot_name(table, suffix)), values(rebuilt_schema, table)
    if snap != cols:
        shape = [f"{c} only in the snapshot" for c in snap if c not in cols]
        shape += [f"{c} only in the rebuilt table" for c in cols if c not in snap]
        shape += [f"{c} compared as {snap[c]} in the snapshot, {cols[c]} in the rebuilt table"
                  for c in snap if c in cols and snap[c] != cols[c]]
        raise DatabaseError(f"{table}: the snapshot and the rebuilt table differ in their columns ({'; '.join(shape)}), "
                            "so their rows cannot be compared cell by cell")
    return TableSpec(table, sql.Identifier(schema, snapshot_name(table, suffix)), sql.Identifier(rebuilt_schema, table),
                     key, series, time_col, cols, presorted)


def inputs_of(table: str, series: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The tables and series a series of ``table`` is computed from, closest first: a bar
    series from the 1D rows of its id; an EMA series from the bar series of its tf (the 1D
    rows for ``1D`` and for v2) and from the daily grid (the 1D rows)."""
    daily = (BARS_1D, {"id": series.get("id")})
    if table == BARS_1D:
        return []
    if table in BAR_TABLES.values():
        return [daily]
    refresher = next((r for r in REFRESHERS.values() if r.table == table), None)
    tf = series.get("tf")
    if refresher is None or refresher.bar_table is None or tf == "1D":
        return [daily]
    return [(refresher.bar_table, {"id": series.get("id"), "tf": tf}), daily]


def state_differences(conn: psycopg.Connection, suffix: str, tables: Sequence[str], ids: list[int] | None,
                      rebuilt_schema: str) -> list[str]:
    """Where the rebuild's state (what the next incremental refresh resumes from) differs from
    the snapshot's: per state table of ``tables`` (and the 1D rejects with the 1D table), the
    rows of either side the other lacks, over the columns that say what was built — its ends'
    instants, bar numbers, days, counts — exactly. Not compared: the watermarks and audit
    instants (when rows were written), and the float ends, which repeat the newest rows' values
    that the tables' comparison checks with its tolerances. Returns one sentence per table."""
    from ta_lab2.baseline.comparison_utils import FLOAT_TYPES
    from ta_lab2.db.bulk import TableRef, column_types
    from ta_lab2.db.tables import BARS_1D_REJECTS, state_table

    aux = aux_schema(suffix)
    where = sql.SQL(" WHERE id = ANY({})").format(sql.Literal(list(ids))) if ids is not None else sql.SQL("")
    names = [state_table(t) for t in tables] + ([BARS_1D_REJECTS] if BARS_1D in tables else [])
    out = []
    for name in names:
        columns = [c for c, typ in column_types(conn, TableRef(aux, name)).items()
                   if typ not in FLOAT_TYPES and not c.startswith("watermark") and c not in VOLATILE_COLUMNS]
        listed = sql.SQL(", ").join(map(sql.Identifier, columns))
        snap, rebuilt = (sql.SQL("SELECT {c} FROM {t}").format(c=listed, t=sql.Identifier(at, name)) + where
                         for at in (aux, rebuilt_schema))
        # each side's rows the other lacks, counted, and one of them shown: one statement
        only_snap, only_rebuilt, example = conn.execute(sql.SQL(
            "WITH s AS MATERIALIZED ({s} EXCEPT ALL {r}), r AS MATERIALIZED ({r} EXCEPT ALL {s}) "
            "SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM r), "
            "coalesce((SELECT to_jsonb(s) FROM s LIMIT 1), (SELECT to_jsonb(r) FROM r LIMIT 1))").format(
                s=snap, r=rebuilt)).fetchone()
        if only_snap or only_rebuilt:
            out.append(f"{name}: {only_snap:,} rows of the snapshot and {only_rebuilt:,} of the rebuild differ in "
                       f"{', '.join(columns)} (e.g. {'the snapshot' if only_snap else 'the rebuild'}: {example}): "
                       "the next incremental refresh would not continue from the same state")
    return out


def compare_all(conn: psycopg.Connection, suffix: str, tables: Sequence[str], ids: list[int] | None,
                settings: CompareSettings, rebuilt_schema: str, schema: str = "public",
                target: Target | None = None, presorted: bool = False) -> Comparison:
    """Every table (bars first, then EMAs), their root causes and the charts' data. With
    ``target``, tables are compared concurrently on one connection per CPU: each comparison
    is a few large joins that a single backend runs on one core. ``presorted``: the rebuilt
    tables were just written by a full rebuild, in key order, as every snapshot is (see
    :attr:`TableSpec.presorted`)."""
    ordered = [t for t in (*BAR_TABLES.values(), *EMA_TABLES.values()) if t in tables]

    def one(c: psycopg.Connection, table: str, helper: psycopg.Connection | None = None) -> TableComparison:
        return _compare_one(c, table, suffix, ids, settings, rebuilt_schema, schema, presorted, helper)

    workers = min(os.cpu_count() or 1, len(ordered)) if target is not None else 1
    if target is not None and len(ordered) == 1 and (os.cpu_count() or 1) > 1:
        # one table: its pass over every row runs in two halves on two connections instead
        with connect(target, autocommit=True) as helper:
            raw = [one(conn, ordered[0], helper)]
    elif workers > 1:
        local = threading.local()
        opened: list[psycopg.Connection] = []

        def pooled(table: str) -> TableComparison:
            if not hasattr(local, "conn"):
                local.conn = connect(target, autocommit=True)
                opened.append(local.conn)
            return one(local.conn, table)

        try:
            # largest first, so the last table to finish is a small one
            with ThreadPoolExecutor(max_workers=workers) as pool:
                done = dict(zip(ordered[::-1], pool.map(pooled, ordered[::-1])))
        finally:
            for c in opened:
                c.close()
        raw = [done[t] for t in ordered]
    else:
        raw = [one(conn, t) for t in ordered]
    roots, results = attribute(raw, inputs_of)
    for result in results:
        log.info("compare %-40s %s (%d rows compared)", result.table, "PASS" if result.passed else "FAIL",
                 result.rows_compared)
    charts = _root_charts(conn, roots, results, suffix, rebuilt_schema, schema)
    return Comparison(results, roots, charts)


def _compare_one(conn: psycopg.Connection, table: str, suffix: str, ids: list[int] | None, settings: CompareSettings,
                 rebuilt_schema: str, schema: str, presorted: bool,
                 helper: psycopg.Connection | None = None) -> TableComparison:
    try:
        with conn.transaction():
            spec = table_spec(conn, table, suffix, rebuilt_schema, schema, presorted)
            result = compare_table(conn, spec, ids, settings.sampling, settings.tolerances, settings.expected,
                                   settings.top_n, helper=helper, failing_keys=table == BARS_1D)
            if table == BARS_1D and result.divergences:
                from dataclasses import replace

                result = replace(result, daily_changes=daily_changes(conn, spec, rebuilt_schema, aux_schema(suffix), ids))
            return result
    except Exception as exc:  # noqa: BLE001 - a broken table must not stop the others
        log.error("compare %s failed: %s", table, redact(str(exc)))
        return failed_comparison(table, snapshot_name(table, suffix), f"{rebuilt_schema}.{table}", redact(str(exc)),
                                 not settings.sampling.full)


def _root_charts(conn: psycopg.Connection, roots: Sequence[RootCause], results: Sequence[TableComparison],
                 suffix: str, rebuilt_schema: str, schema: str) -> tuple[RootChart, ...]:
    """For each of the largest roots, its most affected series (the largest relative
    difference, then the most differing rows) and the column whose values differ in most rows
    of the window around its first divergence."""
    charts = []
    for index in range(min(CHARTED_ROOTS, len(roots))):
        candidates = [(d.max_rel_diff or 0.0, d.count, -n, t.table, d) for n, t in enumerate(results)
                      for d in t.divergences if d.cause is not None and d.cause.root == index]
        if not candidates:
            continue
        *_, table, d = max(candidates, key=lambda c: c[:3])
        try:
            with conn.transaction():
                spec = table_spec(conn, table, suffix, rebuilt_schema, schema)
                chart = series_window(conn, spec, d.series, d.first_ts)
        except Exception as exc:  # noqa: BLE001 - a chart is never a reason to fail a capture
            log.warning("chart of %s %s: %s", table, d.series, redact(str(exc)))
            continue
        if chart is not None:
            charts.append(RootChart(index, table, d.series, chart[0], d.first_ts, chart[1]))
    return tuple(charts)


def series_window(conn: psycopg.Connection, spec: TableSpec, series: dict[str, Any], first_ts: str
                  ) -> tuple[str, tuple[tuple[str, float | None, float | None], ...]] | None:
    """Both sides' rows of ``series`` from ``WINDOW_BEFORE`` before ``first_ts`` to
    ``WINDOW_AFTER`` after it, and the float column whose values differ in most of them."""
    floats = [c for c, k in spec.columns.items() if k == "float"]
    if not floats:
        return None
    first = dt.datetime.fromisoformat(first_ts)
    t = sql.Identifier(spec.time)
    match = sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier(c), sql.Literal(v)) for c, v in series.items())
    window = sql.SQL("{t} BETWEEN {lo} AND {hi}").format(t=t, lo=sql.Literal(first - WINDOW_BEFORE),
                                                          hi=sql.Literal(first + WINDOW_AFTER))
    pairs = sql.SQL(", ").join(sql.SQL("s.{c}, r.{c}").format(c=sql.Identifier(c)) for c in floats)
    rows = conn.execute(sql.SQL(
        "SELECT {t}, {pairs} FROM (SELECT * FROM {snap} WHERE {m} AND {w}) s "
        "FULL JOIN (SELECT * FROM {reb} WHERE {m} AND {w}) r USING ({k}) ORDER BY {t}").format(
        t=t, pairs=pairs, snap=spec.snapshot, reb=spec.rebuilt, m=match, w=window,
        k=sql.SQL(", ").join(map(sql.Identifier, spec.key)))).fetchall()
    if not rows:
        return None
    differing = [sum(1 for r in rows if r[1 + 2 * j] != r[2 + 2 * j]) for j in range(len(floats))]
    j = max(range(len(floats)), key=lambda i: (differing[i], floats[i] in MAIN_VALUES))
    return floats[j], tuple((ts_text(r[0]), r[1 + 2 * j], r[2 + 2 * j]) for r in rows)
