"""Root causes: which change explains each divergence — "did my code change this, or did the
data change under it, and which one change explains what?"

Every divergent series gets one cause:

* **source** — a 1D row differs because its source row changed: it was loaded or updated
  after the snapshot's row was built (``cmc_price_bars_1d.src_load_ts`` differs between the
  two sides), added after the snapshot's build (newer than that id's load watermark in the
  snapshotted state), or removed; the later 1D rows of that id that differ although their own
  source row did not change are counted with it (a removed or added day renumbers every later
  day and moves the next day's open);
* **inherited** — a row it is computed from differs at or before its first divergence: the 1D
  row for a bar, the bar row (or the 1D row of the daily grid) for an EMA; it then shares its
  input's root, and names that input's first differing row;
* **computation** — its inputs are identical (as far as the compared tables show) and its
  output is not: the code that computes it changed;
* **undetermined** — an input table was not part of the comparison.

Roots group divergences: one per run of adjacent source days of an id with the same kind of
change (one changed price is one root), and one per table for computation. Each root counts
the rows it explains in every table.

:func:`daily_changes` reads the 1D comparison's work tables (SQL); :func:`attribute` is pure.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline.table_sql import TableSpec, ts_text
from ta_lab2.baseline.results import Cause, DailyChange, RootCause, SeriesDivergence, TableComparison
from ta_lab2.db.tables import BARS_1D, SOURCE_TABLE, state_table

#: 1D value columns whose before/after a one-day source root shows
CHANGE_COLUMNS = ("open", "high", "low", "close", "volume", "market_cap")
#: single-day roots whose values are fetched (the report shows the largest roots only)
MAX_DETAILED = 500

SOURCE_KINDS = ("source_revised", "source_added", "source_removed")


def daily_changes(conn: psycopg.Connection, spec: TableSpec, rebuilt_schema: str, aux_schema: str | None,
                  ids: Sequence[int] | None) -> tuple[DailyChange, ...]:
    """Runs of adjacent differing 1D rows of one id with one kind of change (see the module
    docstring), read from the work tables :func:`ta_lab2.baseline.compare.compare_table` just
    made for the 1D table with ``failing_keys`` (same transaction). One-day runs carry their changed values."""
    state = None
    if aux_schema is not None:
        found = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(aux_schema, state_table(BARS_1D)).as_string(conn),))
        state = sql.Identifier(aux_schema, state_table(BARS_1D)) if found.fetchone()[0] else None
    # an id's load watermark when the snapshot's rows were built: its state row, or else the
    # newest source row its snapshot rows were built from
    watermark = (sql.SQL("(SELECT watermark_load_ts FROM {} st WHERE st.id = d.id)").format(state) if state is not None
                 else sql.SQL("(SELECT max(src_load_ts) FROM {} w WHERE w.id = d.id)").format(spec.snapshot))
    ids_r = sql.SQL("TRUE") if ids is None else sql.SQL("id = ANY({})").format(sql.Literal(list(ids)))
    conn.execute("DROP TABLE IF EXISTS pg_temp._cmp_daily")
    conn.execute(sql.SQL(
        """
        CREATE TEMP TABLE _cmp_daily AS
        WITH d AS (
            SELECT id, "timestamp" FROM _cmp_failing
            UNION SELECT id, "timestamp" FROM _cmp_onesided
        )
        SELECT d.id, d."timestamp" AS ts, coalesce(s.bar_seq, r.bar_seq) AS seq,
               CASE WHEN s.id IS NOT NULL AND r.id IS NOT NULL THEN
                        CASE WHEN s.src_load_ts IS DISTINCT FROM r.src_load_ts THEN 'source_revised' ELSE 'computation' END
                    WHEN s.id IS NOT NULL THEN
                        CASE WHEN src.id IS NULL THEN 'source_removed'
                             WHEN src.load_ts IS DISTINCT FROM s.src_load_ts THEN 'source_revised'
                             ELSE 'computation' END
                    ELSE CASE WHEN r.src_load_ts > coalesce({wm}, '-infinity') THEN 'source_added' ELSE 'computation' END
               END AS kind
        FROM d
        LEFT JOIN {snap} s USING (id, "timestamp")
        LEFT JOIN (SELECT * FROM {reb} WHERE {ids}) r USING (id, "timestamp")
        LEFT JOIN {source} src USING (id, "timestamp")
        """).format(wm=watermark, snap=spec.snapshot, reb=spec.rebuilt, ids=ids_r,
                    source=sql.Identifier(rebuilt_schema, SOURCE_TABLE)))
    # a run: rows of one id and kind whose 1D sequence numbers are consecutive
    runs = conn.execute(
        """
        SELECT id, kind, min(ts), max(ts), count(*) FROM (
            SELECT *, seq - row_number() OVER (PARTITION BY id, kind ORDER BY ts) AS grp FROM _cmp_daily
        ) x GROUP BY id, kind, grp ORDER BY id, min(ts)
        """).fetchall()
    single = [(i, lo) for i, kind, lo, _hi, n in runs if n == 1 and kind in SOURCE_KINDS][:MAX_DETAILED]
    values = _one_day_values(conn, spec, ids_r, single) if single else {}
    return tuple(
        DailyChange(int(i), ts_text(lo), kind, values.get((i, lo), ()), last_ts=ts_text(hi), rows=int(n))
        for i, kind, lo, hi, n in runs
    )


def _one_day_values(conn: psycopg.Connection, spec: TableSpec, ids_r: sql.Composable,
                    days: list[tuple[int, Any]]) -> dict[tuple[int, Any], tuple[tuple[str, Any, Any], ...]]:
    """(id, day) -> the value columns whose snapshot and rebuilt values differ (None: no row)."""
    cols = [c for c in CHANGE_COLUMNS if c in spec.columns]
    pairs = sql.SQL(", ").join(sql.SQL("s.{c}, r.{c}").format(c=sql.Identifier(c)) for c in cols)
    rows = conn.execute(sql.SQL(
        """
        SELECT k.id, k.ts, {pairs} FROM unnest(%s::int[], %s::timestamptz[]) AS k(id, ts)
        LEFT JOIN {snap} s ON s.id = k.id AND s."timestamp" = k.ts
        LEFT JOIN (SELECT * FROM {reb} WHERE {ids}) r ON r.id = k.id AND r."timestamp" = k.ts
        """).format(pairs=pairs, snap=spec.snapshot, reb=spec.rebuilt, ids=ids_r),
        ([i for i, _ in days], [t for _, t in days])).fetchall()
    out = {}
    for row in rows:
        vals = row[2:]
        out[(row[0], row[1])] = tuple((c, vals[2 * j], vals[2 * j + 1]) for j, c in enumerate(cols)
                                      if vals[2 * j] != vals[2 * j + 1])
    return out


# --------------------------------------------------------------------------- attribution
Parents = Callable[[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]]


def _instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@dataclass
class _Root:
    kind: str
    table: str
    id: int | None
    first: str
    last: str
    days: int
    changes: tuple[tuple[str, Any, Any], ...] = ()
    explains: dict[str, int] = field(default_factory=dict)
    series: int = 0

    def count(self, table: str, rows: int, series: int = 1) -> None:
        self.explains[table] = self.explains.get(table, 0) + rows
        self.series += series

    def widen(self, first: str, last: str) -> None:
        self.first = min(self.first, first, key=_instant)
        self.last = max(self.last, last, key=_instant)


def attribute(comparisons: Sequence[TableComparison], parents: Parents
              ) -> tuple[tuple[RootCause, ...], tuple[TableComparison, ...]]:
    """Give every divergence of ``comparisons`` (in dependency order: 1D, bars, EMAs) its
    :class:`Cause`, and return the roots (largest first) with the comparisons so annotated.
    ``parents(table, series)``: the (table, series) a series is computed from, closest first."""
    roots: list[_Root] = []
    computation: dict[str, int] = {}
    # per id, the runs of the 1D table (sorted by first instant) and their roots
    runs: dict[int, list[tuple[dt.datetime, str, int]]] = {}
    compared = {c.table for c in comparisons}
    firsts: dict[tuple[str, tuple], tuple[dt.datetime, str, int]] = {}  # (table, series) -> first, text, root

    def computation_root(table: str, first: str, last: str) -> int:
        if table not in computation:
            computation[table] = len(roots)
            roots.append(_Root("computation", table, None, first, last, 0))
        index = computation[table]
        roots[index].widen(first, last)
        return index

    out: list[TableComparison] = []
    for comp in comparisons:
        if comp.table == BARS_1D:
            last_source: dict[int, int] = {}  # id -> its latest source root so far
            for change in comp.daily_changes:  # by id, then by first instant
                if change.kind in SOURCE_KINDS:
                    index = len(roots)
                    roots.append(_Root(change.kind, SOURCE_TABLE, change.id, change.ts, change.last_ts or change.ts,
                                       change.rows, change.changes))
                    last_source[change.id] = index
                elif change.id in last_source:
                    # later days of an id whose source changed before them: a removed or added
                    # day renumbers every later day (bar_seq) and moves the next day's open
                    index = last_source[change.id]
                else:
                    index = computation_root(BARS_1D, change.ts, change.last_ts or change.ts)
                roots[index].count(BARS_1D, change.rows, series=0)
                runs.setdefault(change.id, []).append((_instant(change.ts), change.ts, index))
            for id_runs in runs.values():
                id_runs.sort()
        annotated = []
        for d in comp.divergences:
            t = _instant(d.first_ts)
            cause = _cause_of(comp.table, d, t, parents(comp.table, d.series), compared, firsts, runs)
            own = runs.get(d.series.get("id"), []) if comp.table == BARS_1D else []
            if own:  # the 1D rows were counted run by run above
                root = own[0][2]
                cause = Cause("source" if roots[root].kind in SOURCE_KINDS else "computation", root)
                roots[root].series += 1
            else:
                if cause is None:
                    cause = Cause("computation", computation_root(comp.table, d.first_ts, d.last_ts))
                if cause.root is not None:
                    roots[cause.root].count(comp.table, d.count)
            if cause.kind == "computation" and cause.root is not None:
                roots[cause.root].days += 1
            firsts[(comp.table, _key(d.series))] = (t, d.first_ts, cause.root if cause.root is not None else -1)
            annotated.append(replace(d, cause=cause))
        out.append(replace(comp, divergences=tuple(annotated)))
    return _renumbered(roots, out)


def _key(series: dict[str, Any]) -> tuple:
    return tuple(series.values())


def _cause_of(table: str, d: SeriesDivergence, t: dt.datetime, inputs: list[tuple[str, dict[str, Any]]],
              compared: set[str], firsts: dict[tuple[str, tuple], tuple[dt.datetime, str, int]],
              runs: dict[int, list[tuple[dt.datetime, str, int]]]) -> Cause | None:
    """The inherited (or undetermined) cause of a non-1D series, or None: computation."""
    missing = False
    for parent_table, parent_series in inputs:
        if parent_table not in compared:
            missing = True
            continue
        if parent_table == BARS_1D:
            id_runs = runs.get(parent_series.get("id"), [])
            at = bisect_right([r[0] for r in id_runs], t)
            if at:
                _, first, root = id_runs[at - 1]
                return Cause("inherited", root, {"table": BARS_1D, "series": parent_series, "ts": first})
            continue
        hit = firsts.get((parent_table, _key(parent_series)))
        if hit is not None and hit[0] <= t:
            return Cause("inherited", hit[2] if hit[2] >= 0 else None,
                         {"table": parent_table, "series": parent_series, "ts": hit[1]})
    return Cause("undetermined", None) if missing else None


def _renumbered(roots: list[_Root], comparisons: list[TableComparison]
                ) -> tuple[tuple[RootCause, ...], tuple[TableComparison, ...]]:
    """Roots ordered by the rows they explain (then by kind and first instant), and the
    causes' indexes rewritten to that order."""
    order = sorted(range(len(roots)), key=lambda i: (-sum(roots[i].explains.values()), roots[i].kind == "computation",
                                                     _instant(roots[i].first)))
    new = {old: n for n, old in enumerate(order)}
    final = tuple(RootCause(r.kind, r.table, r.id, r.first, r.last, r.days, r.changes, dict(r.explains), r.series)
                  for r in (roots[i] for i in order))

    def renumber(d: SeriesDivergence) -> SeriesDivergence:
        if d.cause is None or d.cause.root is None:
            return d
        return replace(d, cause=replace(d.cause, root=new[d.cause.root]))

    return final, tuple(replace(c, divergences=tuple(renumber(d) for d in c.divergences)) for c in comparisons)
