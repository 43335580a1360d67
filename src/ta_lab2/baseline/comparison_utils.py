"""Snapshot-vs-rebuilt comparison, in the database (spec 05 phase 4).

Semantics, stated once:

* **Hybrid tolerance** (floats): ``|a − b| ≤ max(rtol · max(|a|, |b|), atol)`` — symmetric, as
  in PEP 485 ``math.isclose`` (not ``numpy.isclose``, which is asymmetric). NULL vs NULL and
  NaN vs NaN match; NULL vs a value never matches. Every other type compares exactly.
* **Severity** of a differing cell: CRITICAL for NULL vs value, any non-float difference, or a
  relative difference > 1 %; WARNING outside tolerance but ≤ 1 %; INFO inside tolerance but
  not bit-identical, or matched by the expected-differences allow-list. A row present on one
  side only is CRITICAL.
* A table **passes** when it has no CRITICAL or WARNING difference and equal row counts.

All work happens in SQL; Python receives aggregates, the per-series divergence summary and
the top differences only.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.bulk import TableRef, array_params, column_types

CRITICAL, WARNING, INFO = "CRITICAL", "WARNING", "INFO"
SEVERITIES = (CRITICAL, WARNING, INFO)
CRITICAL_REL = 0.01  # relative difference above which a float difference is CRITICAL
VOLATILE_COLUMNS = frozenset({"ingested_at", "rejected_at", "updated_at"})
FLOAT_TYPES = frozenset({"float8", "float4", "numeric"})


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


#: The seed's per-column defaults: prices, EMA values and derivatives 1e-5/1e-6; volume and
#: market cap 1e-4/1e-2.
PRICE_TOL = Tolerance(1e-5, 1e-6)
VOLUME_TOL = Tolerance(1e-4, 1e-2)
VOLUME_COLUMNS = frozenset({"volume", "market_cap", "marketcap"})


def default_tolerance(column: str) -> Tolerance:
    return VOLUME_TOL if column in VOLUME_COLUMNS else PRICE_TOL


@dataclass(frozen=True)
class Tolerances:
    """Built-in defaults, overridable per column and per table.column (``--tolerances`` TOML:
    ``[default]``, ``[columns.<column>]``, ``[tables.<table>.<column>]``, keys ``rtol``/``atol``)."""

    default: Tolerance | None = None
    columns: Mapping[str, Tolerance] = field(default_factory=dict)
    tables: Mapping[str, Mapping[str, Tolerance]] = field(default_factory=dict)

    def for_column(self, table: str, column: str) -> Tolerance:
        if column in self.tables.get(table, {}):
            return self.tables[table][column]
        if column in self.columns:
            return self.columns[column]
        return self.default or default_tolerance(column)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Tolerances":
        def tol(d: Mapping[str, Any], where: str) -> Tolerance:
            try:
                return Tolerance(float(d["rtol"]), float(d["atol"]))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"tolerances: {where} needs numeric 'rtol' and 'atol'") from None

        default = tol(data["default"], "[default]") if "default" in data else None
        columns = {c: tol(v, f"[columns.{c}]") for c, v in data.get("columns", {}).items()}
        tables = {t: {c: tol(v, f"[tables.{t}.{c}]") for c, v in cols.items()} for t, cols in data.get("tables", {}).items()}
        return cls(default, columns, tables)


@dataclass(frozen=True)
class ExpectedDiff:
    """An intended difference: cells of ``table`` in ``columns`` (optionally only some ids/tfs)
    are reported as INFO with ``reason`` instead of failing the table."""

    table: str
    columns: tuple[str, ...]
    reason: str
    ids: tuple[int, ...] = ()
    tfs: tuple[str, ...] = ()


def compare_with_hybrid_tolerance(a: float | None, b: float | None, rtol: float, atol: float) -> bool:
    """True when ``a`` and ``b`` match under the hybrid tolerance (NULL≡NULL, NaN≡NaN)."""
    if a is None or b is None:
        return a is None and b is None
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= max(rtol * max(abs(a), abs(b)), atol)


def classify_difference(a: Any, b: Any, rtol: float | None = None, atol: float | None = None) -> str | None:
    """Severity of one cell pair (None when identical). ``rtol``/``atol`` None = exact type."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        return CRITICAL
    if rtol is None or atol is None:
        return None if a == b else CRITICAL
    if (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return None if (math.isnan(a) and math.isnan(b)) else CRITICAL
    if a == b:
        return None
    if compare_with_hybrid_tolerance(a, b, rtol, atol):
        return INFO
    scale = max(abs(a), abs(b))
    rel = abs(a - b) / scale if scale else math.inf
    return CRITICAL if rel > CRITICAL_REL else WARNING


# --------------------------------------------------------------------------- result objects
@dataclass(frozen=True)
class ColumnStats:
    column: str
    kind: str  # "float" | "exact"
    rtol: float | None
    atol: float | None
    cells_compared: int
    mismatches: int
    null_mismatches: int
    critical: int
    warning: int
    info: int
    max_abs_diff: float | None
    mean_abs_diff: float | None
    std_abs_diff: float | None
    max_rel_diff: float | None


@dataclass(frozen=True)
class SeriesDivergence:
    series: dict[str, Any]
    first_ts: str
    last_ts: str
    count: int
    persists_to_end: bool
    likely_cause: str | None = None


@dataclass(frozen=True)
class Difference:
    key: dict[str, Any]
    column: str
    snapshot: str | None
    rebuilt: str | None
    abs_diff: float | None
    rel_diff: float | None
    severity: str
    reason: str | None = None


@dataclass(frozen=True)
class SeriesCount:
    series: dict[str, Any]
    rows_snapshot: int
    rows_rebuilt: int
    first_ts_snapshot: str | None
    last_ts_snapshot: str | None
    first_ts_rebuilt: str | None
    last_ts_rebuilt: str | None


@dataclass(frozen=True)
class TableComparison:
    table: str
    snapshot: str
    rebuilt: str
    rows_snapshot: int
    rows_rebuilt: int
    only_in_snapshot: int
    only_in_rebuilt: int
    rows_compared: int
    cells_compared: int
    mismatching_rows: int
    severity_counts: dict[str, int]
    columns: tuple[ColumnStats, ...]
    divergences: tuple[SeriesDivergence, ...]
    top_differences: tuple[Difference, ...]
    series_count_mismatches: tuple[SeriesCount, ...]
    sampled: bool
    error: str | None = None

    @property
    def match_rate(self) -> float:
        if self.rows_compared == 0:
            return 1.0 if self.rows_snapshot == self.rows_rebuilt == 0 else 0.0
        return max(0.0, min(1.0, 1.0 - self.mismatching_rows / self.rows_compared))

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.severity_counts.get(CRITICAL, 0) == 0
            and self.severity_counts.get(WARNING, 0) == 0
            and self.rows_snapshot == self.rows_rebuilt
        )

    @property
    def worst(self) -> str:
        if self.error:
            return CRITICAL
        for s in SEVERITIES:
            if self.severity_counts.get(s):
                return s
        return "OK"


def summarize_comparison(tables: Sequence[TableComparison]) -> dict[str, Any]:
    """Overall verdict and totals: PASS iff every table passed."""
    totals = {s: sum(t.severity_counts.get(s, 0) for t in tables) for s in SEVERITIES}
    return {
        "verdict": "PASS" if tables and all(t.passed for t in tables) else "FAIL",
        "tables": len(tables),
        "tables_passed": sum(t.passed for t in tables),
        "tables_failed": [t.table for t in tables if not t.passed],
        "severity_counts": totals,
        "rows_compared": sum(t.rows_compared for t in tables),
        "cells_compared": sum(t.cells_compared for t in tables),
        "one_sided_rows": sum(t.only_in_snapshot + t.only_in_rebuilt for t in tables),
    }


# --------------------------------------------------------------------------- table metadata
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


# --------------------------------------------------------------------------- the comparison
@dataclass(frozen=True)
class Sampling:
    beginning: int = 30
    end: int = 30
    random_pct: float = 0.05
    seed: int = 20250205
    full: bool = False


def _in_ids(alias: str | None, ids: Sequence[int] | None) -> sql.Composable:
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
    """Compare ``spec.snapshot`` with ``spec.rebuilt`` (restricted to ``ids``) entirely in SQL.

    ``helper``: a second (autocommit) connection to the same database; the pass over every row
    then runs half on it, concurrently. Meant for a table compared on its own (a capture
    already compares several tables at once)."""
    key = [sql.Identifier(c) for c in spec.key]
    key_list = sql.SQL(", ").join(key)
    snap, reb = spec.snapshot, spec.rebuilt
    ids_r = _in_ids(None, ids)
    rebuilt_rows = sql.SQL("(SELECT * FROM {r} WHERE {ids})").format(r=reb, ids=ids_r)
    series = sql.SQL(", ").join(map(sql.Identifier, spec.series))
    tcol = sql.Identifier(spec.time)
    conn.execute("DROP TABLE IF EXISTS pg_temp._cmp_keys, pg_temp._cmp_diffs, pg_temp._cmp_onesided, pg_temp._cmp_series")
    # --- one pass over all rows: a full outer join on the key, aggregated per series: row
    # counts, first/last instants, one-sided rows, and rows whose values differ at all. Only
    # the series it flags are looked at again, so identical tables cost one join.
    k0 = key[0]
    s_row = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in spec.columns)
    r_row = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in spec.columns)
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
               count(*) FILTER (WHERE s.{k0} IS NOT NULL AND r.{k0} IS NOT NULL
                                AND ROW({s_row}) IS DISTINCT FROM ROW({r_row})) AS n_differing
        FROM (SELECT * FROM {s} WHERE {part}) s FULL JOIN (SELECT * FROM {rr} r WHERE {part}) r USING ({k})
        GROUP BY {series}
        """
    ).format
    args = dict(series=series, k0=k0, t=tcol, s=snap, rr=rebuilt_rows, k=key_list, s_row=s_row, r_row=r_row,
                seed=sql.Literal(sampling.seed))
    split_on = key[:2]  # id and the next key column: a few ids may hold most rows
    split = _split_point(conn, snap, split_on) if helper is not None else None
    # two halves on two backends are the parallelism: no parallel workers on top of them
    settings = {"work_mem": PASS_WORK_MEM, **({} if split is None else {"max_parallel_workers_per_gather": "0"}),
                **({"enable_hashjoin": "off"} if spec.presorted else {})}
    with _settings(conn, enable_sort="off", jit="off", **settings):
        if split is None or helper is None:
            conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_series AS ") + first_pass(part=sql.SQL("TRUE"), **args))
        else:
            # The two halves of the key space on two backends at once (PostgreSQL's own
            # parallel hash join gains nothing here on two cores; two backends run ~1.7x
            # faster): the helper's per-series rows are added to the temporary table.
            on = sql.SQL("ROW({})").format(sql.SQL(", ").join(split_on))
            at = sql.SQL("ROW({})").format(sql.SQL(", ").join(map(sql.Literal, split)))
            below = sql.SQL("{} < {}").format(on, at)
            above = sql.SQL("{} >= {}").format(on, at)
            with ThreadPoolExecutor(max_workers=1) as pool:
                upper = pool.submit(_fetch_frame, helper, first_pass(part=above, **args), settings)
                conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_series AS ") + first_pass(part=below, **args))
                rows = upper.result()
            if rows.height:
                types = column_types(conn, TableRef("pg_temp", "_cmp_series"))
                conn.execute(sql.SQL("INSERT INTO _cmp_series SELECT * FROM unnest({})").format(
                    sql.SQL(", ").join(sql.SQL("%b") for _ in types)), array_params(conn, rows, list(types.values())))
    any_onesided, any_differing = conn.execute(
        "SELECT coalesce(bool_or(n_onesided > 0), false), coalesce(bool_or(n_differing > 0), false) FROM _cmp_series"
    ).fetchone()

    def flagged(cond: str, anything: bool) -> sql.Composable:
        # a constant FALSE when no series is flagged: the planner then reads no row at all,
        # where a filter that happens to match nothing would still scan both tables
        if not anything:
            return sql.SQL("FALSE")
        return sql.SQL("({series}) IN (SELECT {series} FROM _cmp_series WHERE {cond})").format(
            series=series, cond=sql.SQL(cond))

    onesided_series = flagged("n_onesided > 0", any_onesided)
    conn.execute(
        sql.SQL(
            """
            CREATE TEMP TABLE _cmp_onesided AS
            SELECT {k}, s_present IS NOT NULL AS in_snapshot
            FROM (SELECT {k}, TRUE AS s_present FROM {s} WHERE {f}) s
            FULL JOIN (SELECT {k}, TRUE AS r_present FROM {r} WHERE {ids} AND {f}) r USING ({k})
            WHERE s_present IS NULL OR r_present IS NULL
            """
        ).format(k=key_list, s=snap, r=reb, ids=ids_r, f=onesided_series)
    )
    only_s, only_r = (int(v or 0) for v in conn.execute(
        "SELECT count(*) FILTER (WHERE in_snapshot), count(*) FILTER (WHERE NOT in_snapshot) FROM _cmp_onesided").fetchone())
    n_s, n_r = (int(v or 0) for v in conn.execute("SELECT sum(n_s), sum(n_r) FROM _cmp_series").fetchone())
    # Values are compared again (cell by cell) only in series with a differing row.
    differing = flagged("n_differing > 0", any_differing)
    snap_d = sql.SQL("(SELECT * FROM {s} WHERE {f})").format(s=snap, f=differing)
    reb_d = sql.SQL("(SELECT * FROM {r} WHERE {ids} AND {f})").format(r=reb, ids=ids_r, f=differing)
    # --- which keys get their values compared: all, or per-series first/last N + interior sample
    if sampling.full:
        compared = sql.SQL("{s} s JOIN {rr} r USING ({k})").format(s=snap_d, rr=reb_d, k=key_list)
        sample_count = None
    else:
        # The interior sample is a pseudo-random function of (series, position, seed), so its
        # size is counted from the per-series row counts alone, without reading any row.
        interior = sql.SQL("((hashint8extended(c.series_hash # {rn}, {seed}) % 1000000 + 1000000) % 1000000) < {pct}").format
        pct = sql.Literal(int(round(sampling.random_pct * 1_000_000)))
        seed = sql.Literal(sampling.seed)
        b_, e_ = sql.Literal(sampling.beginning), sql.Literal(sampling.end)
        sample = sql.SQL(
            """
            SELECT {k} FROM (
                SELECT {k}, row_number() OVER (PARTITION BY {series} ORDER BY {t}) AS rn, c.n_s AS n, c.series_hash
                FROM {s} JOIN _cmp_series c USING ({series})
            ) c
            WHERE rn <= {b} OR rn > n - {e} OR {interior}
            """
        ).format
        args = dict(k=key_list, series=series, t=tcol, b=b_, e=e_,
                    interior=interior(rn=sql.SQL("rn"), seed=seed, pct=pct))
        # how many keys the sample holds over every series, and the sampled keys of the
        # flagged series
        sample_count = int(conn.execute(sql.SQL(
            "SELECT (SELECT coalesce(sum(least(n_s, {b} + {e})), 0) FROM _cmp_series) + "
            "(SELECT count(*) FROM _cmp_series c CROSS JOIN LATERAL generate_series({b} + 1, c.n_s - {e}) AS g(rn) "
            "WHERE {interior})").format(b=b_, e=e_, interior=interior(rn=sql.SQL("g.rn"), seed=seed, pct=pct))
        ).fetchone()[0])
        conn.execute(sql.SQL("CREATE TEMP TABLE _cmp_keys AS {q} EXCEPT SELECT {k} FROM _cmp_onesided").format(
            q=sample(s=snap_d, **args), k=key_list))
        compared = sql.SQL("_cmp_keys k JOIN {s} s USING ({k}) JOIN {rr} r USING ({k})").format(
            s=snap_d, rr=reb_d, k=key_list)
    # --- every differing cell: rows are filtered with one row comparison, then unpivoted
    diff_sql = _diff_statement(spec, compared, tolerances, [e for e in expected if e.table == spec.table])
    conn.execute(diff_sql)
    added = 0
    if not sampling.full:
        # Drill down: every row of a series where the sample found a real difference is
        # compared too, so "where it starts" is exact, not the first *sampled* difference.
        added = conn.execute(
            sql.SQL(
                """
                INSERT INTO _cmp_keys
                SELECT {kk} FROM {s} s
                JOIN (SELECT DISTINCT {series} FROM _cmp_diffs WHERE severity <> 'INFO') d USING ({series})
                EXCEPT (SELECT {k} FROM _cmp_keys UNION ALL SELECT {k} FROM _cmp_onesided)
                """
            ).format(kk=sql.SQL(", ").join(sql.SQL("s.{}").format(c) for c in key), k=key_list, s=snap, series=series)
        ).rowcount
        if added:
            conn.execute("DROP TABLE _cmp_diffs")
            conn.execute(diff_sql)
    if sampling.full:
        rows_compared = n_s - only_s
    else:
        # the sample over every series, less its keys that have no counterpart (one-sided rows
        # are coverage differences, not compared values), plus the drill-down's rows
        sampled_onesided = int(conn.execute(
            sql.SQL("SELECT count(*) FROM ({q} INTERSECT SELECT {k} FROM _cmp_onesided) x").format(
                q=sample(s=sql.SQL("(SELECT * FROM {s} WHERE {f})").format(s=snap, f=onesided_series), **args),
                k=key_list)).fetchone()[0])
        rows_compared = sample_count - sampled_onesided + added
    stats = _column_stats(conn, spec, tolerances, rows_compared)
    mismatching_rows = int(conn.execute(
        sql.SQL("SELECT count(*) FROM (SELECT DISTINCT {k} FROM _cmp_diffs WHERE severity <> 'INFO') d").format(k=key_list)
    ).fetchone()[0])
    sev_counts = dict(conn.execute("SELECT severity, count(*) FROM _cmp_diffs GROUP BY severity").fetchall())
    sev_counts = {sv: int(sev_counts.get(sv, 0)) for sv in SEVERITIES}
    sev_counts[CRITICAL] += only_s + only_r
    return TableComparison(
        table=spec.table, snapshot=snap.as_string(conn), rebuilt=reb.as_string(conn), rows_snapshot=n_s, rows_rebuilt=n_r,
        only_in_snapshot=only_s, only_in_rebuilt=only_r, rows_compared=rows_compared,
        cells_compared=rows_compared * len(spec.columns), mismatching_rows=mismatching_rows,
        severity_counts=sev_counts, columns=stats, divergences=_divergences(conn, spec), top_differences=_top(conn, spec, top_n),
        series_count_mismatches=_series_counts(conn, spec), sampled=not sampling.full,
    )


def _diff_statement(spec: TableSpec, compared: sql.Composable, tolerances: Tolerances,
                    allow: Sequence[ExpectedDiff]) -> sql.Composable:
    """``CREATE TEMP TABLE _cmp_diffs``: one row per differing cell of the compared rows, with
    its severity (the rules of the module docstring, written in SQL)."""
    cells = []
    for col, kind in spec.columns.items():
        c = sql.Identifier(col)
        a, b = sql.SQL("s.{}").format(c), sql.SQL("r.{}").format(c)
        reason = _allow_reason(allow, col)
        if kind == "float":
            tol = tolerances.for_column(spec.table, col)
            scale = sql.SQL("greatest(abs({a}), abs({b}))").format(a=a, b=b)
            absd = sql.SQL("abs({a} - {b})").format(a=a, b=b)
            rel = sql.SQL("({d} / NULLIF({sc}, 0))").format(d=absd, sc=scale)
            sev = sql.SQL(
                "CASE WHEN {a} IS NULL OR {b} IS NULL THEN 'CRITICAL' "
                "WHEN {d} <= greatest({rt} * {sc}, {at}) THEN 'INFO' "
                "WHEN {rel} IS NULL OR {rel} > {crit} OR {d} = 'NaN'::float8 THEN 'CRITICAL' ELSE 'WARNING' END"
            ).format(a=a, b=b, d=absd, sc=scale, rel=rel, rt=sql.Literal(tol.rtol), at=sql.Literal(tol.atol),
                     crit=sql.Literal(CRITICAL_REL))
            absd_v = absd
            rel_v = sql.SQL("coalesce({rel}, CASE WHEN {d} > 0 THEN 'Infinity'::float8 END)").format(rel=rel, d=absd)
        else:
            sev = sql.SQL("'CRITICAL'")
            absd_v = rel_v = sql.SQL("NULL::float8")
        if reason is not None:
            match = _allow_match(reason[1])
            sev = sql.SQL("CASE WHEN {m} THEN 'INFO' ELSE {sev} END").format(m=match, sev=sev)
            why: sql.Composable = sql.SQL("CASE WHEN {m} THEN {r} END").format(m=match, r=sql.Literal(reason[0]))
        else:
            why = sql.SQL("NULL::text")
        cells.append(sql.SQL("({col}, {a} IS DISTINCT FROM {b}, {a}::text, {b}::text, {d}, {rel}, {sev}, "
                             "({a} IS NULL) <> ({b} IS NULL), {why})").format(
            col=sql.Literal(col), a=a, b=b, d=absd_v, rel=rel_v, sev=sev, why=why))
    s_row = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in spec.columns)
    r_row = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in spec.columns)
    return sql.SQL(
        """
        CREATE TEMP TABLE _cmp_diffs AS
        SELECT {kq}, v.col, v.s_val, v.r_val, v.abs_diff, v.rel_diff, v.severity, v.null_mismatch, v.reason
        FROM {compared}
        CROSS JOIN LATERAL (VALUES {cells}) AS v(col, differs, s_val, r_val, abs_diff, rel_diff, severity, null_mismatch, reason)
        WHERE ROW({s_row}) IS DISTINCT FROM ROW({r_row}) AND v.differs
        """
    ).format(kq=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in spec.key), compared=compared,
             cells=sql.SQL(", ").join(cells), s_row=s_row, r_row=r_row)


def _allow_reason(allow: Sequence[ExpectedDiff], column: str) -> tuple[str, list[ExpectedDiff]] | None:
    hits = [e for e in allow if not e.columns or column in e.columns]
    return (hits[0].reason, hits) if hits else None


def _allow_match(hits: Sequence[ExpectedDiff]) -> sql.Composable:
    conds = []
    for e in hits:
        parts = [sql.SQL("TRUE")]
        if e.ids:
            parts.append(sql.SQL("s.id = ANY({})").format(sql.Literal(list(e.ids))))
        if e.tfs:
            parts.append(sql.SQL("s.tf = ANY({})").format(sql.Literal(list(e.tfs))))
        conds.append(sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")"))
    return sql.SQL("(") + sql.SQL(" OR ").join(conds) + sql.SQL(")")


def _column_stats(conn: psycopg.Connection, spec: TableSpec, tolerances: Tolerances, rows: int) -> tuple[ColumnStats, ...]:
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
        if kind == "float" and rows:
            mean = (sm or 0.0) / rows
            std = math.sqrt(max((sq or 0.0) / rows - mean * mean, 0.0))
        out.append(ColumnStats(col, kind, tol.rtol if tol else None, tol.atol if tol else None, rows, int(n), int(nulls),
                               int(crit), int(warn), int(info), mx if kind == "float" else None, mean, std,
                               mrel if kind == "float" else None))
    return tuple(out)


def _ts_text(v: Any) -> str | None:
    return None if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v))


def _divergences(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesDivergence, ...]:
    """Per series with differences (values or one-sided rows): first/last differing instant,
    count, and whether the divergence reaches the series' last row."""
    series = sql.SQL(", ").join(map(sql.Identifier, spec.series))
    t = sql.Identifier(spec.time)
    k = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    rows = conn.execute(
        sql.SQL(
            """
            WITH d AS (
                SELECT DISTINCT {k} FROM _cmp_diffs WHERE severity <> 'INFO'
                UNION SELECT {k} FROM _cmp_onesided
            )
            SELECT {series}, min(d.{t}), max(d.{t}), count(*),
                   max(d.{t}) >= max(greatest(e.hi_s, e.hi_r))
            FROM d JOIN _cmp_series e USING ({series}) GROUP BY {series} ORDER BY min(d.{t}), {series} LIMIT 1000
            """
        ).format(k=k, series=series, t=t)
    ).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesDivergence({c: _jsonable(v) for c, v in zip(spec.series, r[:n])}, _ts_text(r[n]), _ts_text(r[n + 1]),
                         int(r[n + 2]), bool(r[n + 3]))
        for r in rows
    )


def _top(conn: psycopg.Connection, spec: TableSpec, top_n: int) -> tuple[Difference, ...]:
    k = sql.SQL(", ").join(map(sql.Identifier, spec.key))
    rows = conn.execute(
        sql.SQL(
            """
            SELECT {k}, col, s_val, r_val, abs_diff, rel_diff, severity, reason FROM (
                SELECT {k}, col, s_val, r_val, abs_diff, rel_diff, severity, reason FROM _cmp_diffs
                UNION ALL
                SELECT {k}, '(row)', CASE WHEN in_snapshot THEN 'present' END, CASE WHEN NOT in_snapshot THEN 'present' END,
                       NULL, NULL, 'CRITICAL',
                       CASE WHEN in_snapshot THEN 'only in the snapshot' ELSE 'only in the rebuilt table' END
                FROM _cmp_onesided
            ) x
            ORDER BY CASE severity WHEN 'CRITICAL' THEN 0 WHEN 'WARNING' THEN 1 ELSE 2 END,
                     rel_diff DESC NULLS FIRST, {k}
            LIMIT {n}
            """
        ).format(k=k, n=sql.Literal(top_n))
    ).fetchall()
    n = len(spec.key)
    return tuple(
        Difference({c: _jsonable(v) for c, v in zip(spec.key, r[:n])}, r[n], r[n + 1], r[n + 2], r[n + 3], r[n + 4],
                   r[n + 5], r[n + 6])
        for r in rows
    )


def _series_counts(conn: psycopg.Connection, spec: TableSpec) -> tuple[SeriesCount, ...]:
    """Per (id, tf[, period]) row counts and first/last instants, listed where they differ."""
    series = sql.SQL(", ").join(map(sql.Identifier, spec.series))
    rows = conn.execute(
        sql.SQL(
            "SELECT {series}, n_s, n_r, lo_s, hi_s, lo_r, hi_r FROM _cmp_series "
            "WHERE n_s <> n_r OR lo_s IS DISTINCT FROM lo_r OR hi_s IS DISTINCT FROM hi_r ORDER BY {series} LIMIT 1000"
        ).format(series=series)
    ).fetchall()
    n = len(spec.series)
    return tuple(
        SeriesCount({c: _jsonable(v) for c, v in zip(spec.series, r[:n])}, int(r[n]), int(r[n + 1]),
                    *(_ts_text(v) for v in r[n + 2 : n + 6]))
        for r in rows
    )


def _jsonable(v: Any) -> Any:
    return _ts_text(v) if hasattr(v, "isoformat") else v


def first_bar_divergence(tables: Iterable[TableComparison]) -> dict[tuple[str, int, str], str]:
    """(bar table, id, tf) -> earliest differing instant, for the EMA cause hint."""
    out: dict[tuple[str, int, str], str] = {}
    for t in tables:
        for d in t.divergences:
            key = (t.table, d.series.get("id"), d.series.get("tf", "1D"))
            out[key] = min(out.get(key, d.first_ts), d.first_ts)
    return out
