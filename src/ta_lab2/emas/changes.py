"""What an EMA work unit reads before deciding how to refresh each id: the state rows of the
ids' series with rows (and per id, whether every series of the refreshed grid has one) and,
through index probes, the earliest input change since each id's watermark (1D or bar rows with
a newer ``ingested_at``, or 1D rows removed); then, per id, whether it is unchanged, resumed
from its series' stored ends or recomputed (:func:`plan_changes`), and the series to replace and
from where (:class:`Changes`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
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
from ta_lab2.frames import instants, tuples_frame
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
    """What a batch read once for all its ids before deciding how to refresh each.

    Only the state rows of series with rows are read whole at first: in a young universe
    most series have none yet (95 % of a calendar EMA table's), and what the decision needs of
    those is per id — whether every series of the refreshed grid has a state row, and the
    oldest watermark. An id that is recomputed has all its state rows read
    (:func:`read_whole_state`)."""

    state: pl.DataFrame  # state rows (ends included, state_schema): series with rows, and all of the ids read whole
    state_ids: set[int]  # ids with a state row
    complete: set[int]  # ids with a state row for every series of the refreshed grid
    last_ts: dict[tuple[int, str, int], dt.datetime]  # series with rows (as their state says): their newest row
    grid_writes: dict[int, DailyWrites]
    since: dict[int, dt.datetime | None]  # None: no usable watermark, recompute every series whole
    newest_bar: dict[int, dt.datetime | None]
    bar_changes: dict[int, dict[str, dt.datetime]]
    removals: dict[int, tuple[dt.datetime | None, dt.datetime | None]]
    whole: dict[int, set[tuple[str, int]]] = field(default_factory=dict)  # ids read whole: their series with a state row

    def has_rows(self, key: tuple[int, str, int]) -> bool:
        """Whether the series has rows, as its state says (written with them; no state: no)."""
        return key in self.last_ts

    def has_state(self, key: tuple[int, str, int]) -> bool:
        """Whether the series (of the refreshed grid) has a state row."""
        if key[0] in self.whole:
            return key[1:] in self.whole[key[0]]
        return key in self.last_ts or key[0] in self.complete


def read_inputs(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> Inputs:
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    id_list = list(ids)
    states = sql.Identifier(s, state_table(refresher.table))
    state = read_frame(conn, sql.SQL("{} WHERE id = ANY(%s) AND last_ts IS NOT NULL").format(states),
                       state_schema(refresher.kind), (id_list,), small=True, order_by=("id", "tf", "period"))
    # per id: its state rows in the refreshed grid, and its oldest watermark (of any series)
    grid_tfs = sorted({t.tf for t in options.timeframes})
    grid_periods = sorted(set(options.periods))
    summary = conn.execute(
        sql.SQL("SELECT id, count(*) FILTER (WHERE tf = ANY(%s) AND period = ANY(%s)), min(watermark_ingested_at) "
                "FROM {} WHERE id = ANY(%s) GROUP BY id").format(states),
        (grid_tfs, grid_periods, id_list)).fetchall()
    grid_size = len(grid_tfs) * len(grid_periods)
    complete = {i for i, n, _ in summary if n == grid_size}
    oldest = {i: wm for i, _, wm in summary}
    keys = state.select(list(SERIES_SCHEMA)).iter_rows()
    last_ts = dict(zip(keys, instants(state["last_ts"])))
    # Where an id's changes are read from: the oldest watermark of its series that have rows
    # (of all its series when none has). A series that stayed without rows keeps its state row
    # as it was (:func:`ta_lab2.emas.writes.write_state`), so its watermark may be older than
    # the inputs its id has seen; they were seen, and left it without rows.
    with_rows = state.group_by("id").agg(pl.col("watermark_ingested_at").min())
    since_rows = dict(zip(with_rows["id"].to_list(), instants(with_rows["watermark_ingested_at"])))
    since = {i: None if options.full else (since_rows.get(i) or oldest.get(i)) for i in ids}
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
    return Inputs(state, set(oldest), complete, last_ts, grid_writes, since, newest, changes, removals)


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


@dataclass(frozen=True)
class Plan:
    """How a batch refreshes each id: ``unchanged`` ids; ``resumed`` ones, each with its changed
    series that have rows, and ``dormant``, their changed series without rows (id, tf, period,
    cut) — most series of a young universe, kept in a frame; and the ids ``recomputed``.
    ``cut_instants``: every id's new watermark and first change per timeframe
    (:func:`_cut_instants`), which :func:`find_changes` turns into cuts per series."""

    unchanged: list[int]
    resumed: list[Changes]
    dormant: pl.DataFrame
    recomputed: list[int]
    cut_instants: dict[int, tuple[dt.datetime | None, dict[str, dt.datetime | None]]]


def _cut_instants(options: RefreshOptions, ident: int,
                  inputs: Inputs) -> tuple[dt.datetime | None, dict[str, dt.datetime | None]]:
    """The id's new watermark and, per timeframe, the first instant its inputs changed since
    its watermark (None: unchanged)."""
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
    return watermark, {tf.tf: min((t for t in (grid_change, deleted, bar_changes.get(tf.tf)) if t is not None),
                                  default=None) for tf in options.timeframes}


def plan_changes(options: RefreshOptions, ids: Sequence[int], inputs: Inputs) -> Plan:
    """Per id: unchanged, resumed — every changed series continues after its stored rows (its
    first change is after its newest row, and its state holds its ends) or has no row yet —
    or recomputed (anything else: no usable watermark, a series without a state row, a change
    at or before a stored row). Per series only through frames: a batch holds hundreds of
    thousands of series, most without rows."""
    kind = REFRESHERS[options.refresher].kind
    cut_instants = {ident: _cut_instants(options, ident, inputs) for ident in ids}
    recomputed: set[int] = set()
    unchanged: list[int] = []
    changed: list[tuple[int, str, dt.datetime]] = []
    for ident, (_, firsts) in cut_instants.items():
        if inputs.since[ident] is None or ident not in inputs.complete:
            recomputed.add(ident)  # a series is replaced whole
            continue
        cuts = [(ident, tf, at) for tf, at in firsts.items() if at is not None]
        if not cuts:
            unchanged.append(ident)
        changed += cuts
    periods = sorted(set(options.periods))
    tf_cuts = tuples_frame(changed, {"id": pl.Int32(), "tf": pl.String(), "cut": UTC_US})
    ema_cols = [c for c in ends_columns(kind) if c in ("last_ema", "canon_ema", "last_ema_bar", "canon_ema_bar")]
    usable = (pl.all_horizontal(pl.col(c).is_not_null() for c in ("last_ts", "canon_ts", *ema_cols))
              & (pl.col("canon_ts") <= pl.col("last_ts")))
    with_rows = (tf_cuts.join(inputs.state.filter(pl.col("period").is_in(periods))
                              .select(*SERIES_SCHEMA, "last_ts", usable=usable), on=["id", "tf"])
                 .sort("id", "tf", "period"))
    blocked = set(with_rows.filter(~((pl.col("last_ts") < pl.col("cut")) & pl.col("usable")))["id"].to_list())
    recomputed |= blocked
    tf_cuts = tf_cuts.filter(~pl.col("id").is_in(list(blocked)))
    series = with_rows.filter(~pl.col("id").is_in(list(blocked)))
    by_series: dict[int, dict[tuple[str, int], dt.datetime | None]] = {}
    for ident, tf, period, cut in zip(series["id"].to_list(), series["tf"].to_list(), series["period"].to_list(),
                                      instants(series["cut"])):
        by_series.setdefault(ident, {})[(tf, period)] = cut
    resumed = [Changes(i, cut_instants[i][0], by_series.get(i, {})) for i in dict.fromkeys(tf_cuts["id"].to_list())]
    dormant = (tf_cuts.join(pl.DataFrame({"period": periods}, schema={"period": pl.Int32()}), how="cross")
               .join(series, on=list(SERIES_SCHEMA), how="anti")
               .select(*SERIES_SCHEMA, "cut").sort("id", "tf", "period"))
    return Plan(unchanged, resumed, dormant, [i for i in ids if i in recomputed], cut_instants)


def read_whole_state(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int], inputs: Inputs) -> None:
    """Read every state row of ``ids`` (to recompute) into ``inputs``."""
    refresher = REFRESHERS[options.refresher]
    whole = read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(
        sql.Identifier(options.schema, state_table(refresher.table))),
                       state_schema(refresher.kind), (list(ids),), small=True, order_by=("id", "tf", "period"))
    inputs.state = pl.concat([inputs.state.filter(~pl.col("id").is_in(list(ids))), whole])
    inputs.whole.update({i: set() for i in ids})
    for ident, tf, period in zip(whole["id"].to_list(), whole["tf"].to_list(), whole["period"].to_list()):
        inputs.whole[ident].add((tf, period))


def find_changes(options: RefreshOptions, ident: int, inputs: Inputs, plan: Plan) -> Changes:
    """The series of ``ident`` (read whole: :func:`read_whole_state`) whose inputs changed
    since its watermark, and from where (None: the whole series)."""
    states = inputs.whole[ident]
    since = inputs.since[ident]
    watermark, firsts = plan.cut_instants[ident]
    cuts: dict[tuple[str, int], dt.datetime | None] = {}
    # Rows go out in primary-key order (tf byte order, period, ts): a bulk rebuild's index
    # build then sorts presorted input, several times faster.
    for tf in sorted(firsts):
        for p in sorted(set(options.periods)):
            if since is None or (tf, p) not in states:
                cuts[(tf, p)] = None
            elif firsts[tf] is not None:
                cuts[(tf, p)] = firsts[tf]
    return Changes(ident, watermark, cuts)
