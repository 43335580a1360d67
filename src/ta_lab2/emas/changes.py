"""What an EMA work unit reads before deciding how to refresh each id: the ids' state rows
and, through index probes, the earliest input change since each id's watermark (1D or bar rows
with a newer ``ingested_at``, or 1D rows removed); per id, the series to replace and from
where (:class:`Changes`), and whether they can all be resumed from their stored ends."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.changes import DailyWrites, daily_writes, deletions_since
from ta_lab2.bars.families import Timeframe
from ta_lab2.db.reads import read_frame
from ta_lab2.db.schema import DUAL_EMA_ENDS, EMA_ENDS
from ta_lab2.db.tables import state_table
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.frames import instants
from ta_lab2.load.source_schema import UTC_US


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


GRID_SCHEMA = {"timestamp": UTC_US, "close": pl.Float64()}
CANON_SCHEMA = {"tf": pl.String(), "time_close": UTC_US}
SERIES_SCHEMA = {"id": pl.Int32(), "tf": pl.String(), "period": pl.Int32()}
#: an instant after every other (a from-instant that reads no row and counts them all)
END_OF_TIME = dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)


def ends_columns(kind: str) -> tuple[str, ...]:
    """A series' ends in its state row (docs/decisions.md, "EMA series continue from their stored ends"), in the schema's order."""
    return tuple(c for c, _ in EMA_ENDS + (DUAL_EMA_ENDS if kind == "dual" else ()))


def state_schema(kind: str) -> dict[str, pl.DataType]:
    return {**SERIES_SCHEMA, "watermark_ingested_at": UTC_US, "last_ts": UTC_US,
            **{c: UTC_US if c == "canon_ts" else pl.Float64() for c in ends_columns(kind)}}


@dataclass
class Inputs:
    """What a batch read once for all its ids before deciding how to refresh each."""

    state: pl.DataFrame  # the ids' state rows, ends included (_state_schema)
    states: dict[int, dict[tuple[str, int], dt.datetime | None]]
    last_ts: dict[tuple[int, str, int], dt.datetime | None]  # the state's newest row per series
    resumable: set[tuple[int, str, int]]  # series whose state holds usable ends
    with_rows: set[tuple[int, str, int]]  # series with rows, as their state says (written with them)
    grid_writes: dict[int, DailyWrites]
    since: dict[int, dt.datetime | None]  # None: no usable watermark, recompute every series whole
    newest_bar: dict[int, dt.datetime | None]
    bar_changes: dict[int, dict[str, dt.datetime]]
    removals: dict[int, tuple[dt.datetime | None, dt.datetime | None]]

    def has_rows(self, key: tuple[int, str, int]) -> bool:
        """Whether the series has rows, as its state says (written with them; no state: no)."""
        return key in self.with_rows


def read_inputs(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> Inputs:
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    id_list = list(ids)
    state = read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(sql.Identifier(s, state_table(refresher.table))),
                       state_schema(refresher.kind), (id_list,), small=True, order_by=("id", "tf", "period"))
    states: dict[int, dict[tuple[str, int], dt.datetime | None]] = {i: {} for i in ids}
    last_ts: dict[tuple[int, str, int], dt.datetime | None] = {}
    with_rows: set[tuple[int, str, int]] = set()
    for ident, tf, period, wm, last in zip(state["id"].to_list(), state["tf"].to_list(), state["period"].to_list(),
                                           instants(state["watermark_ingested_at"]), instants(state["last_ts"])):
        states[ident][(tf, period)] = wm
        last_ts[(ident, tf, period)] = last
        if last is not None:
            with_rows.add((ident, tf, period))
    ema_cols = [c for c in ends_columns(refresher.kind) if c in ("last_ema", "canon_ema", "last_ema_bar", "canon_ema_bar")]
    resumable = set(state.filter(pl.all_horizontal(pl.col(c).is_not_null() for c in ("last_ts", "canon_ts", *ema_cols))
                                 & (pl.col("canon_ts") <= pl.col("last_ts")))
                    .select(list(SERIES_SCHEMA)).iter_rows())
    since = {i: None if options.full else _since(i, states[i], last_ts) for i in ids}
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
    return Inputs(state, states, last_ts, resumable, with_rows, grid_writes, since, newest, changes, removals)


def _since(ident: int, states: dict[tuple[str, int], dt.datetime | None],
           last_ts: dict[tuple[int, str, int], dt.datetime | None]) -> dt.datetime | None:
    """Where an id's changes are read from: the oldest watermark of its series that have rows
    (of all its series when none has). A series that stayed without rows keeps its state row
    as it was (:func:`ta_lab2.emas.writes.write_state`), so its watermark may be older than
    the inputs its id has seen; they were seen, and left it without rows."""
    with_rows = [w for (tf, p), w in states.items() if w is not None and last_ts.get((ident, tf, p)) is not None]
    return min(with_rows or (w for w in states.values() if w is not None), default=None)


@dataclass(frozen=True)
class Changes:
    """What one id's refresh replaces: per (tf, period) in primary-key order (tf byte order,
    period), the instant its rows are replaced from (None: the whole series), and the id's new
    watermark."""

    id: int
    watermark: dt.datetime | None
    cuts: dict[tuple[str, int], dt.datetime | None]

    @property
    def replaced(self) -> list[tuple[str, int, dt.datetime | None]]:
        return [(tf, p, at) for (tf, p), at in self.cuts.items()]


def find_changes(options: RefreshOptions, ident: int, inputs: Inputs) -> Changes:
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
    return Changes(ident, watermark, cuts)


def resumes(changes: Changes, inputs: Inputs) -> bool:
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
