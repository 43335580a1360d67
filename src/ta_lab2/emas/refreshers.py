"""The six EMA refreshers: full and incremental refresh, one transaction per batch of ids
(spec 03).

Per batch, the inputs of all its ids are read at once; per id: read the daily grid (1D closes) and, per timeframe, the canonical closes of the bar
table; find the earliest input change since the last refresh (1D or bar rows with a newer
``ingested_at``, or EMA rows whose day left the grid); recompute every series over the whole
history in memory and replace only rows from that instant on. An EMA row depends only on
inputs at or before its day, so the result is bit-identical to a full refresh.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.builders import DailyWrites, daily_writes, deletions_since
from ta_lab2.bars.families import Timeframe
from ta_lab2.db.bulk import array_params, copy_frame, read_frame, table_ref
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, EMA_TABLES, state_table
from ta_lab2.emas.series import Grid, TfRows, epoch_us, ids_rows_frame, tf_arrays
from ta_lab2.errors import UsageError
from ta_lab2.load.source_schema import UTC_US
from ta_lab2.pipeline.work import (IdResult, ProgressFn, TableResult, bulk_rebuild, by_id, clear_ids, resolve_ids,
                                   run_units, stored_before, unit_size)
from ta_lab2.timeframes import V2_DEFAULT_PERIODS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmaRefresher:
    name: str
    table: str
    kind: str  # "bar" (multi_tf), "v2", "dual" (cal / cal_anchor)
    tf_filter: str  # SQL over dim_timeframe columns
    bar_table: str | None  # canonical closes of the non-1D timeframes
    default_periods: tuple[int, ...] | None = None  # None: every dim_period row


def _cal_filter(family: str, scheme: str) -> str:
    return f"family = '{family}' AND (base_unit IN ('M', 'Y') OR calendar_scheme = '{scheme}')"


_DAILY = "family IN ('1d', 'rolling')"
REFRESHERS: dict[str, EmaRefresher] = {
    "multi_tf": EmaRefresher("multi_tf", EMA_TABLES["multi_tf"], "bar", _DAILY, BAR_TABLES["multi_tf"]),
    "v2": EmaRefresher("v2", EMA_TABLES["v2"], "v2", _DAILY, None, V2_DEFAULT_PERIODS),
    "cal_us": EmaRefresher("cal_us", EMA_TABLES["cal_us"], "dual", _cal_filter("cal", "US"), BAR_TABLES["cal_us"]),
    "cal_iso": EmaRefresher("cal_iso", EMA_TABLES["cal_iso"], "dual", _cal_filter("cal", "ISO"), BAR_TABLES["cal_iso"]),
    "cal_anchor_us": EmaRefresher("cal_anchor_us", EMA_TABLES["cal_anchor_us"], "dual",
                                  _cal_filter("cal_anchor", "US"), BAR_TABLES["cal_anchor_us"]),
    "cal_anchor_iso": EmaRefresher("cal_anchor_iso", EMA_TABLES["cal_anchor_iso"], "dual",
                                   _cal_filter("cal_anchor", "ISO"), BAR_TABLES["cal_anchor_iso"]),
}


def parse_periods(value: str | None) -> tuple[int, ...] | None:
    """``--periods``: None (the refresher's default), ``lut`` (every dim_period row, returned
    as an empty tuple) or a comma list of positive integers."""
    if value is None or not value.strip():
        return None
    if value.strip().lower() == "lut":
        return ()
    out: list[int] = []
    for token in value.replace(" ", ",").split(","):
        if not token:
            continue
        try:
            p = int(token)
        except ValueError:
            raise UsageError(f"--periods: {token!r} is not an integer period") from None
        if p < 1:
            raise UsageError(f"--periods: {p} is not a positive period")
        if p not in out:
            out.append(p)
    return tuple(out)


def load_periods(conn: psycopg.Connection, refresher: EmaRefresher, periods: tuple[int, ...] | None,
                 schema: str = "public") -> tuple[int, ...]:
    if periods:
        return periods
    if periods is None and refresher.default_periods:
        return refresher.default_periods
    rows = conn.execute(sql.SQL("SELECT period FROM {} ORDER BY period").format(sql.Identifier(schema, "dim_period")))
    return tuple(r[0] for r in rows.fetchall())


def load_ema_timeframes(conn: psycopg.Connection, refresher: EmaRefresher, include_non_canonical: bool,
                        schema: str = "public") -> list[Timeframe]:
    canonical = "" if include_non_canonical else " AND is_canonical"
    rows = conn.execute(
        sql.SQL("SELECT tf, family, base_unit, tf_qty, tf_days_nominal, calendar_scheme FROM {t} WHERE "
                + refresher.tf_filter + canonical + " ORDER BY sort_order NULLS LAST, tf").format(
            t=sql.Identifier(schema, "dim_timeframe"))
    ).fetchall()
    return [Timeframe(*r) for r in rows]


@dataclass(frozen=True)
class RefreshOptions:
    refresher: str
    timeframes: tuple[Timeframe, ...]
    periods: tuple[int, ...]
    full: bool
    schema: str
    bulk: bool = False  # inside bulk_rebuild(): one transaction, empty unindexed table


def refresh(
    conn: psycopg.Connection,
    name: str,
    ids: Sequence[int] | None = None,
    *,
    full_refresh: bool = False,
    periods: tuple[int, ...] | None = None,
    include_non_canonical: bool = False,
    schema: str = "public",
    progress: ProgressFn | None = None,
    workers: int = 1,
    url: str | None = None,
) -> TableResult:
    """Refresh one EMA table for ``ids`` (None = all); ``conn`` must be autocommit."""
    if name not in REFRESHERS:
        raise UsageError(f"unknown EMA refresher {name!r}; choose from {', '.join(REFRESHERS)}")
    if not conn.autocommit:
        raise ValueError("refresh() needs an autocommit connection (it opens its own transactions)")
    refresher = REFRESHERS[name]
    started = time.perf_counter()
    id_list = resolve_ids(conn, ids, schema)
    tfs = load_ema_timeframes(conn, refresher, include_non_canonical, schema)
    plist = load_periods(conn, refresher, periods, schema)
    bulk = full_refresh and ids is None
    options = RefreshOptions(name, tuple(tfs), plist, full_refresh, schema, bulk)
    if bulk:
        # every id in one transaction, indexes built once at the end (workers cannot share it)
        with bulk_rebuild(conn, [refresher.table], [state_table(refresher.table)], schema):
            results = run_units(conn, refresh_batch, options, id_list, progress=progress)
    else:
        if full_refresh:
            clear_ids(conn, [refresher.table, state_table(refresher.table)], id_list, schema)
        results = run_units(conn, refresh_batch, options, id_list, batch_size=unit_size(full_refresh),
                            workers=workers, url=url, progress=progress)
    return TableResult(name, refresher.table, full_refresh, tuple(t.tf for t in tfs), time.perf_counter() - started,
                       tuple(results), plist)


_GRID_SCHEMA = {"timestamp": UTC_US, "close": pl.Float64()}
_CANON_SCHEMA = {"tf": pl.String(), "time_close": UTC_US}


#: EMA rows a batch holds in memory before it writes them (a batch of ids that all need a
#: whole recomputation is written in several steps of its one transaction).
CHUNK_ROWS = 1_000_000


@dataclass
class _Inputs:
    """What a batch read once for all its ids."""

    grids: dict[int, pl.DataFrame]
    grid_writes: dict[int, DailyWrites]
    canon: dict[int, pl.DataFrame]
    states: dict[int, dict[tuple[str, int], dt.datetime | None]]
    last_ts: dict[tuple[int, str, int], dt.datetime | None]  # the state's newest row per series
    since: dict[int, dt.datetime | None]  # None: no usable watermark, recompute every series whole
    newest_bar: dict[int, dt.datetime | None]
    bar_changes: dict[int, dict[str, dt.datetime]]
    removals: dict[int, tuple[dt.datetime | None, dt.datetime | None]]


def refresh_batch(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> list[IdResult]:
    """Refresh ``ids`` (the work unit) in one REPEATABLE READ transaction (inputs and
    watermarks from one snapshot), or as part of the caller's bulk transaction."""
    if options.bulk:
        return _refresh(conn, options, ids)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _refresh(conn, options, ids)


def _read_inputs(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> _Inputs:
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    id_list = list(ids)
    grid_all = read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(sql.Identifier(s, BARS_1D)),
                          {"id": pl.Int32(), **_GRID_SCHEMA}, (id_list,), small=True, order_by=("id", "timestamp"))
    grids = by_id(grid_all)
    states: dict[int, dict[tuple[str, int], dt.datetime | None]] = {i: {} for i in ids}
    last_ts: dict[tuple[int, str, int], dt.datetime | None] = {}
    for r in conn.execute(sql.SQL("SELECT id, tf, period, watermark_ingested_at, last_ts FROM {} WHERE id = ANY(%s)")
                          .format(sql.Identifier(s, state_table(refresher.table))), (id_list,)).fetchall():
        states[r[0]][(r[1], r[2])] = r[3]
        last_ts[(r[0], r[1], r[2])] = r[4]
    since = {i: None if options.full else min((w for w in states[i].values() if w is not None), default=None)
             for i in ids}
    # the grid's newest write and first instant written since the watermark: index probes, not
    # a column of the whole grid
    grid_writes = daily_writes(conn, s, {i: [since[i]] if since[i] is not None else [] for i in ids})
    bar_tfs = [t.tf for t in options.timeframes if t.tf != "1D"]
    canon: dict[int, pl.DataFrame] = {}
    newest: dict[int, dt.datetime | None] = {}
    changes: dict[int, dict[str, dt.datetime]] = {i: {} for i in ids}
    if refresher.bar_table and bar_tfs:
        bars = sql.Identifier(s, refresher.bar_table)
        canon_all = read_frame(
            conn, sql.SQL("{} WHERE id = ANY(%s) AND tf = ANY(%s) AND NOT is_partial_end").format(bars),
            {"id": pl.Int32(), **_CANON_SCHEMA}, (id_list, bar_tfs), small=True, order_by=("id", "tf", "time_close"))
        canon = by_id(canon_all)
        # Per id, the newest bar write (the watermark) and, per tf, the first bar written since
        # its last refresh: index-only scans of (id, ingested_at), which cover only the new
        # rows (OFFSET 0: one probe per id, never a scan of the table).
        for r in conn.execute(
            sql.SQL("SELECT u.id, NULL::text, (SELECT max(ingested_at) FROM {b} WHERE id = u.id AND tf = ANY(%(tfs)s)) "
                    "FROM unnest(%(ids)s::int[]) AS u(id) "
                    "UNION ALL SELECT u.id, x.tf, min(x.time_close) "
                    "FROM unnest(%(ids)s::int[], %(since)s::timestamptz[]) AS u(id, since) "
                    "CROSS JOIN LATERAL (SELECT tf, time_close FROM {b} WHERE id = u.id AND ingested_at > u.since "
                    "AND tf = ANY(%(tfs)s) OFFSET 0) x GROUP BY u.id, x.tf").format(b=bars),
                {"ids": id_list, "tfs": bar_tfs, "since": [since[i] for i in ids]}).fetchall():
            if r[1] is None:
                newest[r[0]] = r[2]
            elif since[r[0]] is not None:
                changes[r[0]][r[1]] = r[2]
    removals = deletions_since(conn, s, since)
    return _Inputs(grids, grid_writes, canon, states, last_ts, since, newest, changes, removals)


def _refresh(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> list[IdResult]:
    refresher = REFRESHERS[options.refresher]
    inputs = _read_inputs(conn, options, ids)
    results: dict[int, IdResult] = {}
    pending: list[_Planned] = []
    pending_rows = 0
    for ident in ids:
        planned = _plan(refresher, options, ident, inputs)
        if planned is None:
            results[ident] = IdResult(ident, "unchanged")
            continue
        pending.append(planned)
        pending_rows += planned.n_rows
        if pending_rows >= CHUNK_ROWS:
            results.update(_write(conn, options, pending, inputs))
            pending, pending_rows = [], 0
    if pending:
        results.update(_write(conn, options, pending, inputs))
    return [results[i] for i in ids]


@dataclass(frozen=True)
class _Planned:
    """One id's refresh: the series to replace (tf, period, from where; None = whole), their
    new rows (as the kernel's arrays over the id's grid) and the id's new watermark."""

    id: int
    watermark: dt.datetime | None
    replaced: list[tuple[str, int, dt.datetime | None]]
    grid: Grid
    parts: list[TfRows]

    @property
    def n_rows(self) -> int:
        return sum(p.row.size for p in self.parts)


def _plan(refresher: EmaRefresher, options: RefreshOptions, ident: int, inputs: _Inputs) -> _Planned | None:
    """What one id's refresh replaces, or None when nothing changed."""
    grid_frame = inputs.grids.get(ident, pl.DataFrame(schema=_GRID_SCHEMA))
    grid = Grid(ident, grid_frame["timestamp"].dt.epoch("us").to_numpy(), grid_frame["close"].to_numpy())
    states = inputs.states[ident]
    since = inputs.since[ident]
    writes = inputs.grid_writes[ident]
    watermark = writes.newest
    newest = inputs.newest_bar.get(ident)
    if newest is not None and (watermark is None or newest > watermark):
        watermark = newest
    bar_changes = inputs.bar_changes.get(ident, {})
    deleted, last_removal = inputs.removals.get(ident, (None, None))
    if last_removal is not None and (watermark is None or last_removal > watermark):
        watermark = last_removal  # a removal from the grid is input too: do not see it again
    grid_change = None
    if since is not None:
        grid_change = writes.after.get(since)
    else:
        deleted = None
    parts: list[TfRows] = []
    replaced: list[tuple[str, int, dt.datetime | None]] = []  # (tf, period, from) to delete
    closes_by_tf = _closes_by_tf(inputs.canon.get(ident, pl.DataFrame(schema=_CANON_SCHEMA)))
    # Rows go out in primary-key order (tf byte order, period, ts): a bulk rebuild's index
    # build then sorts presorted input, several times faster.
    for tf in sorted(options.timeframes, key=lambda t: t.tf):
        # per period: None = all rows, an instant = from there on; absent = unchanged
        cut: dict[int, dt.datetime | None] = {}
        first = min((t for t in (grid_change, deleted, bar_changes.get(tf.tf)) if t is not None), default=None)
        for p in sorted(options.periods):
            if since is None or (tf.tf, p) not in states:
                cut[p] = None
            elif first is not None:
                cut[p] = first
        if not cut:
            continue
        mask = _canonical_mask(grid, closes_by_tf, tf.tf)
        groups: dict[dt.datetime | None, list[int]] = {}
        for p, at in cut.items():
            groups.setdefault(at, []).append(p)
            replaced.append((tf.tf, p, at))
        for at, periods in groups.items():
            parts.append(tf_arrays(refresher.kind, grid, tf.tf, tf.tf_days_nominal, mask, periods,
                                   None if at is None else epoch_us(at)))
    if not replaced:
        return None
    return _Planned(ident, watermark, replaced, grid, parts)


def _write(conn: psycopg.Connection, options: RefreshOptions,
           planned: Sequence[_Planned],
           inputs: _Inputs) -> dict[int, IdResult]:
    """One DELETE, one COPY and one state upsert for the planned ids, whatever the number of
    series. Rows are located by one primary-key range probe per series and deleted by their
    ctid (OFFSET 0 keeps each probe a nested loop: pulled up into a join, the planner hashes
    every row of the ids — 170 ms instead of 1 ms per id)."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    table = sql.Identifier(s, refresher.table)
    series = [(p.id, tf, period, at) for p in planned for tf, period, at in p.replaced]
    # A series whose newest stored row (its state's last_ts, written with its rows) is before
    # its cut has nothing to delete: a new day usually adds a row to every series.
    probed = [r for r in series if not stored_before(inputs.last_ts.get(r[:3]), r[3])]
    deleted: dict[int, int] = {}
    if probed and not options.bulk:
        deleted = dict(conn.execute(
            sql.SQL(
                "WITH d AS (DELETE FROM {t} e WHERE e.ctid = ANY(ARRAY("
                "SELECT x.ctid FROM unnest(%b, %b, %b, %b) AS c(id, tf, period, cut) "
                "CROSS JOIN LATERAL (SELECT ctid FROM {t} WHERE id = c.id AND tf = c.tf AND period = c.period "
                "AND ts >= coalesce(c.cut, '-infinity') OFFSET 0) x)) RETURNING e.id) "
                "SELECT id, count(*) FROM d GROUP BY id"
            ).format(t=table),
            array_params(conn, pl.DataFrame(probed, schema={"id": pl.Int32, "tf": pl.String, "period": pl.Int32,
                                                            "cut": UTC_US}, orient="row"),
                         ("int4", "text", "int4", "timestamptz")),
        ).fetchall())
    rows = ids_rows_frame(refresher.kind, [(p.grid, p.parts) for p in planned])
    if rows.height:
        copy_frame(conn, table_ref(refresher.table, s), rows, freeze=options.bulk)
    _write_state(conn, refresher.table, s, [(p.id, tf, period, p.watermark) for p in planned
                                            for tf, period, _ in p.replaced], rows, options.bulk)
    out = {}
    for p in planned:
        mode = "full" if options.full or not inputs.states[p.id] else "incremental"
        has_grid = p.id in inputs.grids and inputs.grids[p.id].height > 0
        out[p.id] = IdResult(p.id, mode if has_grid else "empty", p.n_rows, deleted.get(p.id, 0))
    return out


def _closes_by_tf(canon: pl.DataFrame) -> dict[str, np.ndarray]:
    """The canonical closes (epoch µs) of each tf of ``canon`` (rows ordered by tf)."""
    tfs = canon["tf"].to_numpy()
    closes = canon["time_close"].dt.epoch("us").to_numpy()
    bounds = [0, *(np.flatnonzero(tfs[1:] != tfs[:-1]) + 1).tolist(), len(tfs)]
    return {str(tfs[lo]): closes[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo}


def _canonical_mask(grid: Grid, closes_by_tf: dict[str, np.ndarray], tf: str) -> np.ndarray:
    """Grid rows that are canonical closes of ``tf`` (every row for ``1D``)."""
    if tf == "1D":
        return np.ones(grid.n, dtype=bool)
    closes = closes_by_tf.get(tf, np.zeros(0, dtype=np.int64))
    pos = np.searchsorted(grid.ts_us, closes)
    ok = (pos < grid.n) & (grid.ts_us[np.minimum(pos, grid.n - 1)] == closes) if grid.n else np.zeros(0, bool)
    if not ok.all():
        raise ValueError(f"{tf}: canonical closes not on the daily grid of id {grid.id} (rebuild the bars first)")
    mask = np.zeros(grid.n, dtype=bool)
    mask[pos] = True
    return mask


def _write_state(conn: psycopg.Connection, table: str, schema: str,
                 series: list[tuple[int, str, int, dt.datetime | None]], rows: pl.DataFrame, bulk: bool = False) -> None:
    """Upsert the state of ``series`` (id, tf, period, watermark), whose rows from their cut to
    their end are ``rows``: a series' last instant is its newest row there, else (nothing
    written) the table's."""
    state_ref = table_ref(state_table(table), schema)
    frame = pl.DataFrame(
        {"id": [r[0] for r in series], "tf": [r[1] for r in series], "period": [r[2] for r in series],
         "watermark_ingested_at": [r[3] for r in series]},
        schema={"id": pl.Int32, "tf": pl.String, "period": pl.Int32, "watermark_ingested_at": UTC_US},
    )
    last = rows.group_by("id", "tf", "period").agg(pl.col("ts").max().alias("last_ts")) if rows.height else \
        pl.DataFrame(schema={"id": pl.Int32, "tf": pl.String, "period": pl.Int32, "last_ts": UTC_US})
    frame = frame.join(last, on=["id", "tf", "period"], how="left", maintain_order="left")
    if bulk:  # the state table was truncated in this transaction: nothing to upsert against
        copy_frame(conn, state_ref, frame.with_columns(updated_at=pl.lit(dt.datetime.now(dt.timezone.utc), UTC_US)),
                   freeze=True)
        return
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {st} (id, tf, period, watermark_ingested_at, last_ts, updated_at)
            SELECT u.id, u.tf, u.period, u.wm,
                   coalesce(u.last_ts, (SELECT max(e.ts) FROM {t} e
                                        WHERE e.id = u.id AND e.tf = u.tf AND e.period = u.period)), now()
            FROM unnest(%b, %b, %b, %b, %b) AS u(id, tf, period, wm, last_ts)
            ON CONFLICT (id, tf, period) DO UPDATE SET watermark_ingested_at = EXCLUDED.watermark_ingested_at,
                last_ts = EXCLUDED.last_ts, updated_at = EXCLUDED.updated_at
            """
        ).format(st=state_ref.ident, t=sql.Identifier(schema, table)),
        array_params(conn, frame.select("id", "tf", "period", "watermark_ingested_at", "last_ts"),
                     ("int4", "text", "int4", "timestamptz", "timestamptz")),
    )
