"""The six EMA refreshers: full and incremental refresh, one transaction per batch of ids
(spec 03).

Per batch: read the ids' state rows and, through index probes, the earliest input change since
each id's last refresh (1D or bar rows with a newer ``ingested_at``, or 1D rows removed).
Then per id, one of two ways (docs/decisions.md 62):

* **resume** — every changed series continues after its newest stored row (a new day, the
  daily case): read only the grid rows after it and the canonical closes among them, and step
  each series from the ends its state row keeps (:mod:`ta_lab2.emas.resume`; no kernel, no
  numba). A series with no row yet stays empty unless the new rows complete its seed's
  closes; then its id is recomputed.
* **recompute** — anything else (a revision, a removal, a new series, ``--full-refresh``):
  read the id's whole grid, recompute the changed series over it with the kernel and replace
  only their rows from the first change on.

An EMA row depends only on inputs at or before its day, so both are bit-identical to a full
refresh.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.builders import DailyWrites, daily_writes, deletions_since, rows_from
from ta_lab2.bars.families import Timeframe
from ta_lab2.db.bulk import array_params, copy_frame, read_frame, table_ref
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, EMA_TABLES, state_table
from ta_lab2.emas.resume import Ends, resume_rows, seed_value
from ta_lab2.db.schema import DUAL_EMA_ENDS, EMA_ENDS
from ta_lab2.emas.series import DUAL_SCHEMA, EMA_SCHEMA, Grid, TfRows, frame_of_rows, ids_rows_frame, tf_arrays
from ta_lab2.errors import UsageError
from ta_lab2.frames import epoch_us, instants, tuples_frame
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

    @property
    def tf_days(self) -> dict[str, int]:
        """Each timeframe's nominal length in days."""
        return {t.tf: t.tf_days_nominal for t in self.timeframes}


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
_SERIES_SCHEMA = {"id": pl.Int32(), "tf": pl.String(), "period": pl.Int32()}
#: an instant after every other (a from-instant that reads no row and counts them all)
_END_OF_TIME = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)


def _ends(kind: str) -> tuple[str, ...]:
    """A series' ends in its state row (docs/decisions.md 62), in the schema's order."""
    return tuple(c for c, _ in EMA_ENDS + (DUAL_EMA_ENDS if kind == "dual" else ()))


def _state_schema(kind: str) -> dict[str, pl.DataType]:
    return {**_SERIES_SCHEMA, "watermark_ingested_at": UTC_US, "last_ts": UTC_US,
            **{c: UTC_US if c == "canon_ts" else pl.Float64() for c in _ends(kind)}}


#: EMA rows a batch holds in memory before it writes them (a batch of ids that all need a
#: whole recomputation is written in several steps of its one transaction).
CHUNK_ROWS = 1_000_000


@dataclass
class _Inputs:
    """What a batch read once for all its ids before deciding how to refresh each."""

    state: pl.DataFrame  # the ids' state rows, ends included (_state_schema)
    states: dict[int, dict[tuple[str, int], dt.datetime | None]]
    last_ts: dict[tuple[int, str, int], dt.datetime | None]  # the state's newest row per series
    resumable: set[tuple[int, str, int]]  # series whose state holds usable ends
    grid_writes: dict[int, DailyWrites]
    since: dict[int, dt.datetime | None]  # None: no usable watermark, recompute every series whole
    newest_bar: dict[int, dt.datetime | None]
    bar_changes: dict[int, dict[str, dt.datetime]]
    removals: dict[int, tuple[dt.datetime | None, dt.datetime | None]]

    def has_rows(self, key: tuple[int, str, int]) -> bool:
        """Whether the series has rows, as its state says (written with them; no state: no)."""
        return self.last_ts.get(key) is not None


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
    state = read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(sql.Identifier(s, state_table(refresher.table))),
                       _state_schema(refresher.kind), (id_list,), small=True, order_by=("id", "tf", "period"))
    states: dict[int, dict[tuple[str, int], dt.datetime | None]] = {i: {} for i in ids}
    last_ts: dict[tuple[int, str, int], dt.datetime | None] = {}
    for ident, tf, period, wm, last in zip(state["id"].to_list(), state["tf"].to_list(), state["period"].to_list(),
                                           instants(state["watermark_ingested_at"]), instants(state["last_ts"])):
        states[ident][(tf, period)] = wm
        last_ts[(ident, tf, period)] = last
    ema_cols = [c for c in _ends(refresher.kind) if c in ("last_ema", "canon_ema", "last_ema_bar", "canon_ema_bar")]
    resumable = set(state.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in ("last_ts", "canon_ts", *ema_cols))
                                 & (pl.col("canon_ts") <= pl.col("last_ts")))
                    .select(list(_SERIES_SCHEMA)).iter_rows())
    since = {i: None if options.full else min((w for w in states[i].values() if w is not None), default=None)
             for i in ids}
    # the grid's newest write and first instant written since the watermark: index probes, not
    # a column of the whole grid
    grid_writes = daily_writes(conn, s, {i: [since[i]] if since[i] is not None else [] for i in ids})
    bar_tfs = [t.tf for t in options.timeframes if t.tf != "1D"]
    newest: dict[int, dt.datetime | None] = {}
    changes: dict[int, dict[str, dt.datetime]] = {i: {} for i in ids}
    if refresher.bar_table and bar_tfs:
        bars = sql.Identifier(s, refresher.bar_table)
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
    return _Inputs(state, states, last_ts, resumable, grid_writes, since, newest, changes, removals)


@dataclass(frozen=True)
class _Changes:
    """What one id's refresh replaces: per (tf, period) in primary-key order (tf byte order,
    period), the instant its rows are replaced from (None: the whole series), and the id's new
    watermark."""

    id: int
    watermark: dt.datetime | None
    cuts: dict[tuple[str, int], dt.datetime | None]

    @property
    def replaced(self) -> list[tuple[str, int, dt.datetime | None]]:
        return [(tf, p, at) for (tf, p), at in self.cuts.items()]


def _changes(options: RefreshOptions, ident: int, inputs: _Inputs) -> _Changes:
    """The series of ``ident`` whose inputs changed since its watermark, and from where."""
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
    cuts: dict[tuple[str, int], dt.datetime | None] = {}
    # Rows go out in primary-key order (tf byte order, period, ts): a bulk rebuild's index
    # build then sorts presorted input, several times faster.
    for tf in sorted(options.timeframes, key=lambda t: t.tf):
        first = min((t for t in (grid_change, deleted, bar_changes.get(tf.tf)) if t is not None), default=None)
        for p in sorted(options.periods):
            if since is None or (tf.tf, p) not in states:
                cuts[(tf.tf, p)] = None
            elif first is not None:
                cuts[(tf.tf, p)] = first
    return _Changes(ident, watermark, cuts)


def _resumes(changes: _Changes, inputs: _Inputs) -> bool:
    """Whether every changed series of the id either continues after its stored rows (its
    first change is after its newest row, and its state holds its ends) or has no row yet."""
    for (tf, p), cut in changes.cuts.items():
        key = (changes.id, tf, p)
        if cut is None:
            return False
        last = inputs.last_ts.get(key)
        if last is None:
            continue  # no row yet (the state is written with the rows): seeded later, if at all
        if not (last < cut and key in inputs.resumable):
            return False
    return True


def _refresh(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> list[IdResult]:
    """Per id, either resume its changed series from their stored ends (an append, the daily
    case: no grid read beyond the new rows, no kernel) or recompute them over the id's whole
    grid with the kernel and replace their rows from the first change on."""
    inputs = _read_inputs(conn, options, ids)
    results: dict[int, IdResult] = {}
    resumed: list[_Changes] = []
    recomputed: list[_Changes] = []
    for ident in ids:
        changes = _changes(options, ident, inputs)
        if not changes.cuts:
            results[ident] = IdResult(ident, "unchanged")
        elif _resumes(changes, inputs):
            resumed.append(changes)
        else:
            recomputed.append(changes)
    log.debug("%s: %d ids resumed, %d recomputed, %d unchanged", options.refresher, len(resumed), len(recomputed),
              len(ids) - len(resumed) - len(recomputed))
    if resumed:
        frame, again = _resume(conn, options, resumed, inputs)
        recomputed += again
        redo = {c.id for c in again}
        ready = [c for c in resumed if c.id not in redo]
        if ready:
            results.update(_write(conn, options, ready, frame, inputs, {c.id: True for c in ready}))
    if recomputed:
        results.update(_recompute(conn, options, recomputed, inputs))
    return [results[i] for i in ids]


# --------------------------------------------------------------------------- resumed series
def _resume(conn: psycopg.Connection, options: RefreshOptions, resumed: Sequence[_Changes],
            inputs: _Inputs) -> tuple[pl.DataFrame, list[_Changes]]:
    """The new rows of the ``resumed`` ids' series — stepped from their ends over the grid rows
    after them, or, for a series without rows whose seed's closes are now all there, from its
    seed on its first row — and the ids to recompute after all (a seed the stepper cannot
    place: a missing close in its window, or its first row before the rows read)."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    kind = refresher.kind
    tf_days = options.tf_days
    ids = [c.id for c in resumed]
    # each id's grid rows after the oldest of its series' newest rows, and how many precede them
    starts: dict[int, dt.datetime] = {}
    for c in resumed:
        lasts = [inputs.last_ts[(c.id, tf, p)] for tf, p in c.cuts if inputs.has_rows((c.id, tf, p))]
        starts[c.id] = min(lasts) + dt.timedelta(microseconds=1) if lasts else _END_OF_TIME
    from_frame = pl.DataFrame({"id": ids, "from_ts": [starts[i] for i in ids]}, schema={"id": pl.Int32, "from_ts": UTC_US})
    tail, before = rows_from(conn, sql.Identifier(s, BARS_1D), {"id": pl.Int32(), **_GRID_SCHEMA}, from_frame)
    bar_tfs = sorted({tf for c in resumed for tf, _ in c.cuts if tf != "1D"}) if kind != "v2" else []
    canon = pl.DataFrame(schema={"id": pl.Int32(), **_CANON_SCHEMA})
    if bar_tfs:
        canon = read_frame(
            # one index range probe per id (OFFSET 0: never a hash join over the whole table)
            conn, sql.SQL("(SELECT c.id, b.tf, b.time_close FROM unnest(%b, %b) AS c(id, from_ts) CROSS JOIN LATERAL "
                          "(SELECT tf, time_close FROM {b} WHERE id = c.id AND tf = ANY(%b) AND NOT is_partial_end "
                          "AND time_close >= c.from_ts OFFSET 0) b) r")
            .format(b=sql.Identifier(s, refresher.bar_table)),
            {"id": pl.Int32(), **_CANON_SCHEMA},
            [*array_params(conn, from_frame, ("int4", "timestamptz")),
             *array_params(conn, pl.DataFrame({"tf": bar_tfs}), ("text",))],
            small=True, order_by=("id", "tf", "time_close"))
    tails = by_id(tail)
    tail_ts = {i: t["timestamp"].dt.epoch("us").to_numpy() for i, t in tails.items()}
    n_grid = {i: before.get(i, 0) + (tails[i].height if i in tails else 0) for i in ids}
    new_closes = {(i, tf) for i, tf in canon.select("id", "tf").unique().iter_rows()}
    seeds = _seeds(conn, options, _seeding(conn, options, resumed, inputs, n_grid, new_closes))
    # a seed is placed on its first row, which must be among the rows read
    fallback: set[int] = set()
    placed: dict[tuple[int, str, int], tuple[int, float]] = {}
    for key, (first_us, value) in seeds.items():
        ts = tail_ts.get(key[0], np.zeros(0, np.int64))
        at = int(np.searchsorted(ts, first_us)) if first_us is not None else ts.size
        if np.isnan(value) or at >= ts.size or ts[at] != first_us:
            fallback.add(key[0])
        else:
            placed[key] = (at, value)
    again = [c for c in resumed if c.id in fallback]
    log.debug("%s: %d series start from their seed; %d ids recomputed instead", options.refresher, len(placed),
              len(again))
    series = [(c.id, tf, p) for c in resumed if c.id not in fallback for tf, p in c.cuts
              if (c.id, tf, p) in placed or inputs.has_rows((c.id, tf, p))]
    if not series:
        return pl.DataFrame(schema=DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA), again
    # the tails of the ids, concatenated in id order; per (id, tf) its canonical flags there
    close_parts, flag_parts = [], []
    offset: dict[int, int] = {}
    pair_at: dict[tuple[int, str], int] = {}
    n_rows = n_flags = 0
    canon_of = by_id(canon)
    for ident in dict.fromkeys(i for i, _, _ in series):
        ts = tail_ts.get(ident, np.zeros(0, np.int64))
        offset[ident] = n_rows
        close_parts.append(tails[ident]["close"].to_numpy() if ident in tails else np.zeros(0))
        n_rows += ts.size
        grid = Grid(ident, ts, close_parts[-1])
        closes_by_tf = _closes_by_tf(canon_of.get(ident, pl.DataFrame(schema=_CANON_SCHEMA)))
        for tf in dict.fromkeys(t for i, t, _ in series if i == ident):
            if kind == "v2":
                flags = (before.get(ident, 0) + np.arange(ts.size) + 1) % tf_days[tf] == 0
            else:
                flags = _canonical_mask(grid, closes_by_tf, tf)
            pair_at[(ident, tf)] = n_flags
            flag_parts.append(flags)
            n_flags += ts.size
    ts_all = np.concatenate([tail_ts.get(i, np.zeros(0, np.int64)) for i in offset])
    frame = tuples_frame(series, _SERIES_SCHEMA).join(
        inputs.state, on=list(_SERIES_SCHEMA), how="left", maintain_order="left")
    last_us = frame["last_ts"].dt.epoch("us").to_numpy()
    sid = frame["id"].to_numpy()
    stf = frame["tf"].to_list()
    first = np.empty(len(series), dtype=np.int64)
    count = np.empty(len(series), dtype=np.int64)
    canon_first = np.empty(len(series), dtype=np.int64)
    seed = np.full(len(series), np.nan)
    for j, key in enumerate(series):
        ident, tf, _ = key
        lo = offset[ident]
        n = tail_ts[ident].size if ident in tail_ts else 0
        if key in placed:
            skip, seed[j] = placed[key]
        else:
            skip = int(np.searchsorted(ts_all[lo:lo + n], last_us[j], side="right"))
        first[j] = lo + skip
        count[j] = n - skip
        canon_first[j] = pair_at[(ident, tf)] + skip
    periods = frame["period"].to_numpy().astype(np.int64)
    n_days = np.array([tf_days[t] for t in stf], dtype=np.int64)
    ends = Ends(n_days, periods, *(frame[c].to_numpy().astype(np.float64) for c in _ends(kind) if c != "canon_ts"))
    out = resume_rows(kind, np.concatenate(close_parts), np.concatenate(flag_parts), first, count, canon_first, ends,
                      seed)
    j = out["series"]
    return frame_of_rows(kind, sid[j], stf, j, ts_all[out["row"]], periods[j], n_days[j], out["roll"],
                         {c: v for c, v in out.items() if c not in ("series", "row", "roll")}), again


def _seeding(conn: psycopg.Connection, options: RefreshOptions, resumed: Sequence[_Changes], inputs: _Inputs,
             n_grid: Mapping[int, int], new_closes: set[tuple[int, str]]) -> list[tuple[int, str, int]]:
    """The series of ``resumed`` that have no row yet but now have the closes their seed needs
    (spec 03: ``p`` canonical closes; v2: ``n_days·p`` grid rows). Canonical closes are counted
    in the bar table (index-only, at most ``p``) — unless the (id, tf) has a resumed series and
    no canonical close among the rows read (``new_closes``): its count is then the last
    refresh's, which was short (a close added earlier would have cut that series before its
    newest row, and its id would not be resumed)."""
    refresher = REFRESHERS[options.refresher]
    tf_days = options.tf_days
    out: list[tuple[int, str, int]] = []
    counted: list[tuple[int, str, int]] = []
    for c in resumed:
        seeded = {tf for tf, p in c.cuts if inputs.has_rows((c.id, tf, p))}
        for tf, p in c.cuts:
            if inputs.has_rows((c.id, tf, p)):
                continue
            if refresher.kind == "v2" or tf == "1D":
                if n_grid[c.id] >= (tf_days[tf] * p if refresher.kind == "v2" else p):
                    out.append((c.id, tf, p))
            elif tf not in seeded or (c.id, tf) in new_closes:
                counted.append((c.id, tf, p))
    if counted:
        cap: dict[tuple[int, str], int] = {}  # per (id, tf): its largest period without rows
        for i, tf, p in counted:
            cap[(i, tf)] = max(p, cap.get((i, tf), p))
        n_closes = {(i, tf): n for i, tf, n in conn.execute(
            sql.SQL("SELECT u.id, u.tf, (SELECT count(*) FROM (SELECT 1 FROM {b} WHERE id = u.id AND tf = u.tf "
                    "AND NOT is_partial_end LIMIT u.cap) x) FROM unnest(%s::int[], %s::text[], %s::int[]) "
                    "AS u(id, tf, cap)").format(b=sql.Identifier(options.schema, refresher.bar_table)),
            ([k[0] for k in cap], [k[1] for k in cap], list(cap.values())),
        ).fetchall()}
        out += [(i, tf, p) for i, tf, p in counted if n_closes[(i, tf)] >= p]
    return out


def _seeds(conn: psycopg.Connection, options: RefreshOptions,
           series: Sequence[tuple[int, str, int]]) -> dict[tuple[int, str, int], tuple[int | None, float]]:
    """Per series, the instant (epoch µs) of its first row and its seed there: the mean of its
    first ``p`` canonical closes (v2: of its first ``n_days·p`` grid closes), NaN when one of
    them is missing. The closes are the grid's, at the bars' ``time_close``."""
    if not series:
        return {}
    refresher = REFRESHERS[options.refresher]
    tf_days = options.tf_days
    daily = sql.Identifier(options.schema, BARS_1D)
    by_grid = [k for k in series if refresher.kind == "v2" or k[1] == "1D"]
    by_bars = [k for k in series if k not in set(by_grid)]
    found: list[tuple[int, list[float], dt.datetime | None]] = []
    if by_grid:
        need = [tf_days[tf] * p if refresher.kind == "v2" else p for _, tf, p in by_grid]
        found += conn.execute(
            sql.SQL("SELECT u.i, array_agg(d.close ORDER BY d.\"timestamp\"), max(d.\"timestamp\") "
                    "FROM unnest(%s::int[], %s::int[], %s::int[]) AS u(id, n, i) CROSS JOIN LATERAL "
                    "(SELECT \"timestamp\", close FROM {d} WHERE id = u.id ORDER BY \"timestamp\" LIMIT u.n) d "
                    "GROUP BY u.i").format(d=daily),
            ([k[0] for k in by_grid], need, list(range(len(by_grid))))).fetchall()
    if by_bars:
        base = len(by_grid)
        found += conn.execute(
            sql.SQL("SELECT u.i, array_agg(d.close ORDER BY b.time_close), max(b.time_close) "
                    "FROM unnest(%s::int[], %s::text[], %s::int[], %s::int[]) AS u(id, tf, p, i) CROSS JOIN LATERAL "
                    "(SELECT time_close FROM {b} WHERE id = u.id AND tf = u.tf AND NOT is_partial_end "
                    "ORDER BY time_close LIMIT u.p) b JOIN {d} d ON d.id = u.id AND d.\"timestamp\" = b.time_close "
                    "GROUP BY u.i").format(b=sql.Identifier(options.schema, refresher.bar_table), d=daily),
            ([k[0] for k in by_bars], [k[1] for k in by_bars], [k[2] for k in by_bars],
             list(range(base, base + len(by_bars))))).fetchall()
    keys = [*by_grid, *by_bars]
    size = {k: tf_days[k[1]] * k[2] if refresher.kind == "v2" else k[2] for k in keys}
    out: dict[tuple[int, str, int], tuple[int | None, float]] = {k: (None, float("nan")) for k in keys}
    for i, closes, last in found:
        window = np.array(closes, dtype=np.float64)
        if window.size == size[keys[i]] and not np.isnan(window).any():
            out[keys[i]] = (epoch_us(last), seed_value(window))
    return out


# --------------------------------------------------------------------------- recomputed series
def _recompute(conn: psycopg.Connection, options: RefreshOptions, changed: Sequence[_Changes],
               inputs: _Inputs) -> dict[int, IdResult]:
    """Recompute the changed series of ``changed`` over their ids' whole grids (the kernel)
    and write them in chunks of about :data:`CHUNK_ROWS` rows."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    id_list = [c.id for c in changed]
    grids = by_id(read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(sql.Identifier(s, BARS_1D)),
                             {"id": pl.Int32(), **_GRID_SCHEMA}, (id_list,), small=True, order_by=("id", "timestamp")))
    bar_tfs = [t.tf for t in options.timeframes if t.tf != "1D"]
    canon: dict[int, pl.DataFrame] = {}
    if refresher.bar_table and bar_tfs:
        canon = by_id(read_frame(
            conn, sql.SQL("{} WHERE id = ANY(%s) AND tf = ANY(%s) AND NOT is_partial_end").format(
                sql.Identifier(s, refresher.bar_table)),
            {"id": pl.Int32(), **_CANON_SCHEMA}, (id_list, bar_tfs), small=True, order_by=("id", "tf", "time_close")))
    results: dict[int, IdResult] = {}
    pending: list[tuple[_Changes, Grid, list[TfRows]]] = []
    pending_rows = 0

    def flush() -> None:
        rows = ids_rows_frame(refresher.kind, [(g, parts) for _, g, parts in pending])
        results.update(_write(conn, options, [c for c, _, _ in pending], rows, inputs,
                              {c.id: g.n > 0 for c, g, _ in pending}))

    for c in changed:
        grid_frame = grids.get(c.id, pl.DataFrame(schema=_GRID_SCHEMA))
        grid = Grid(c.id, grid_frame["timestamp"].dt.epoch("us").to_numpy(), grid_frame["close"].to_numpy())
        parts = _kernel_parts(refresher, options, c, grid, canon.get(c.id, pl.DataFrame(schema=_CANON_SCHEMA)))
        pending.append((c, grid, parts))
        pending_rows += sum(p.row.size for p in parts)
        if pending_rows >= CHUNK_ROWS:
            flush()
            pending, pending_rows = [], 0
    if pending:
        flush()
    return results


def _kernel_parts(refresher: EmaRefresher, options: RefreshOptions, changes: _Changes, grid: Grid,
                  canon: pl.DataFrame) -> list[TfRows]:
    """The kernel's rows of the changed series of one id, from their cuts on."""
    closes_by_tf = _closes_by_tf(canon)
    tf_days = options.tf_days
    parts: list[TfRows] = []
    by_tf: dict[str, dict[dt.datetime | None, list[int]]] = {}
    for (tf, p), at in changes.cuts.items():
        by_tf.setdefault(tf, {}).setdefault(at, []).append(p)
    for tf, groups in by_tf.items():
        mask = _canonical_mask(grid, closes_by_tf, tf)
        for at, periods in groups.items():
            parts.append(tf_arrays(refresher.kind, grid, tf, tf_days[tf], mask, periods,
                                   None if at is None else epoch_us(at)))
    return parts


# --------------------------------------------------------------------------- writes
def _write(conn: psycopg.Connection, options: RefreshOptions, changed: Sequence[_Changes], rows: pl.DataFrame,
           inputs: _Inputs, has_grid: Mapping[int, bool]) -> dict[int, IdResult]:
    """One DELETE, one COPY and one state upsert for the ``changed`` ids, whose replaced series'
    new rows are ``rows``, whatever the number of series. Rows are located by one primary-key
    range probe per series and deleted by their ctid (OFFSET 0 keeps each probe a nested loop:
    pulled up into a join, the planner hashes every row of the ids — 170 ms instead of 1 ms
    per id)."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    table = sql.Identifier(s, refresher.table)
    series = [(c.id, tf, period, at) for c in changed for tf, period, at in c.replaced]
    # Nothing to delete for a series whose newest stored row (its state's last_ts, written with
    # its rows) is before its cut — a new day usually adds a row to every series — or whose
    # state says it has no row.
    probed = [r for r in series if not stored_before(inputs.last_ts.get(r[:3]), r[3])
              and not (r[:3] in inputs.last_ts and not inputs.has_rows(r[:3]))]
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
            array_params(conn, tuples_frame(probed, {**_SERIES_SCHEMA, "cut": UTC_US}),
                         ("int4", "text", "int4", "timestamptz")),
        ).fetchall())
    if rows.height:
        copy_frame(conn, table_ref(refresher.table, s), rows, freeze=options.bulk)
    _write_state(conn, refresher, s, [(c.id, tf, period, at, c.watermark) for c in changed
                                      for tf, period, at in c.replaced], rows, inputs.state, options.bulk)
    counts = dict(rows.group_by("id").len().iter_rows()) if rows.height else {}
    out = {}
    for c in changed:
        mode = "full" if options.full or not inputs.states[c.id] else "incremental"
        out[c.id] = IdResult(c.id, mode if has_grid.get(c.id, True) else "empty", counts.get(c.id, 0),
                             deleted.get(c.id, 0))
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


def _write_state(conn: psycopg.Connection, refresher: EmaRefresher, schema: str,
                 series: list[tuple[int, str, int, dt.datetime | None, dt.datetime | None]], rows: pl.DataFrame,
                 old: pl.DataFrame, bulk: bool = False) -> None:
    """Upsert the state of ``series`` (id, tf, period, cut, watermark), whose rows from their
    cut (None: all) to their end are ``rows`` (in time order within a series), with the
    series' newest row and ends (:data:`ta_lab2.db.schema.EMA_ENDS`).

    Those come from its newest row in ``rows`` and its newest canonical row there. A series
    with no canonical row there keeps its old canonical end when that is before the cut; one
    with no row there keeps its old newest row and ends when they are before the cut. Where
    neither settles them (rows removed from the end), the table is probed for them — so every
    series with rows leaves with usable ends."""
    kind = refresher.kind
    ends = _ends(kind)
    values = [c for c in ends if c != "canon_ts"]
    key = list(_SERIES_SCHEMA)
    frame = tuples_frame(series, {**_SERIES_SCHEMA, "cut": UTC_US, "watermark_ingested_at": UTC_US})
    source = {c: c.removeprefix("last_").removeprefix("canon_") for c in values}
    if rows.height:
        canonical = ~pl.col("roll")
        new = rows.group_by(key).agg(
            pl.col("ts").last().alias("last_ts"),
            *(pl.col(source[c]).last().alias(c) for c in values if c.startswith("last_")),
            pl.col("ts").filter(canonical).last().alias("canon_ts"),
            *(pl.col(source[c]).filter(canonical).last().alias(c) for c in values if c.startswith("canon_")),
        )
    else:
        new = pl.DataFrame(schema={k: v for k, v in _state_schema(kind).items() if k != "watermark_ingested_at"})
    was = old.select(*key, *(pl.col(c).alias(f"old_{c}") for c in ("last_ts", *ends)), old_present=pl.lit(True))
    frame = frame.join(new, on=key, how="left", maintain_order="left").join(was, on=key, how="left",
                                                                             maintain_order="left")
    cut = pl.col("cut")
    written = pl.col("last_ts").is_not_null()
    # nothing written: the old ends stand when the old rows end before the cut (none removed)
    keep_last = (~written & cut.is_not_null() & (pl.col("old_last_ts") < cut)).fill_null(False)
    probe_last = (~written & cut.is_not_null() & (pl.col("old_last_ts") >= cut)).fill_null(False)
    old_canon_kept = (cut.is_not_null() & (pl.col("old_canon_ts") < cut)).fill_null(False)
    no_canon = written & pl.col("canon_ts").is_null()
    frame = frame.with_columns(
        *(pl.when(keep_last).then(pl.col(f"old_{c}")).otherwise(pl.col(c)).alias(c)
          for c in ("last_ts", *ends) if c.startswith("last_")),
        *(pl.when(keep_last | (no_canon & old_canon_kept)).then(pl.col(f"old_{c}")).otherwise(pl.col(c)).alias(c)
          for c in ends if c.startswith("canon_")),
        probe_last.alias("probe_last"),
        (probe_last | (no_canon & ~old_canon_kept)).alias("probe_canon"),
    )
    columns = [*key, "watermark_ingested_at", "last_ts", *ends]
    pg_types = ["int4", "text", "int4", "timestamptz", "timestamptz",
                *("timestamptz" if c == "canon_ts" else "float8" for c in ends)]
    state_ref = table_ref(state_table(refresher.table), schema)
    if bulk:  # the state table was truncated in this transaction: nothing to upsert against
        copy_frame(conn, state_ref, frame.select(columns).with_columns(
            updated_at=pl.lit(dt.datetime.now(dt.timezone.utc), UTC_US)), freeze=True)
        return
    ident = sql.Identifier
    last_cols = ["last_ts", *(c for c in ends if c.startswith("last_"))]
    canon_cols = [c for c in ends if c.startswith("canon_")]

    def probed(alias: str, cols: list[str], prefix: str) -> sql.Composable:
        # the probe's column for each state column (canon_ts <- ts, last_d1_roll <- d1_roll, ...)
        return sql.SQL(", ").join(
            sql.SQL("CASE WHEN u.{flag} THEN {a}.{src} ELSE u.{c} END").format(
                flag=ident(f"probe_{prefix}"), a=ident(alias), src=ident(c.removeprefix(f"{prefix}_")), c=ident(c))
            for c in cols)

    def lateral(cols: list[str], prefix: str, extra: str) -> sql.Composable:
        # gated inside the subquery: a one-time filter, so unflagged series cost no index probe
        return sql.SQL("(SELECT {cols} FROM {t} e WHERE u.{flag} AND e.id = u.id AND e.tf = u.tf "
                       "AND e.period = u.period" + extra + " ORDER BY e.ts DESC LIMIT 1)").format(
            cols=sql.SQL(", ").join(ident(c.removeprefix(f"{prefix}_")) for c in cols),
            t=ident(schema, refresher.table), flag=ident(f"probe_{prefix}"))

    target = [*key, "watermark_ingested_at", *last_cols, *canon_cols]
    source = sql.SQL(
        "(SELECT u.id, u.tf, u.period, u.watermark_ingested_at, {last}, {canon} "
        "FROM unnest({params}) AS u({names}, probe_last, probe_canon) "
        "LEFT JOIN LATERAL {l} l ON true LEFT JOIN LATERAL {k} k ON true) AS v ({target})"
    ).format(names=sql.SQL(", ").join(ident(c) for c in columns), target=sql.SQL(", ").join(map(ident, target)),
             last=probed("l", last_cols, "last"), canon=probed("k", canon_cols, "canon"),
             params=sql.SQL(", ").join(sql.SQL("%b") for _ in range(len(columns) + 2)),
             l=lateral(last_cols, "last", ""), k=lateral(canon_cols, "canon", " AND NOT e.roll"))
    # Existing state rows are updated in place (cheaper than INSERT … ON CONFLICT, whose
    # speculative insertion probes the key first); a new series' row is inserted.
    present = pl.col("old_present").fill_null(False)
    for part, statement in ((frame.filter(present), sql.SQL(
            "UPDATE {st} s SET {sets}, updated_at = now() FROM {source} "
            "WHERE s.id = v.id AND s.tf = v.tf AND s.period = v.period").format(
                st=state_ref.ident, source=source,
                sets=sql.SQL(", ").join(sql.SQL("{c} = v.{c}").format(c=ident(c)) for c in target[3:]))),
            (frame.filter(~present), sql.SQL(
            "INSERT INTO {st} ({target}, updated_at) SELECT v.*, now() FROM {source} "
            "ON CONFLICT (id, tf, period) DO UPDATE SET {updates}, updated_at = EXCLUDED.updated_at").format(
                st=state_ref.ident, source=source, target=sql.SQL(", ").join(map(ident, target)),
                updates=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident(c)) for c in target[3:])))):
        if part.height:
            conn.execute(statement, array_params(conn, part.select(*columns, "probe_last", "probe_canon"),
                                                 [*pg_types, "bool", "bool"]))
