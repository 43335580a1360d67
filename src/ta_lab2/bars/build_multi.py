"""The multi-timeframe builders' work unit (spec 02 §2–§4): per id, plan which timeframes to
recompute and from where (:func:`plan`), read the 1D rows and snapshot seeds that needs, compute
the snapshot rows (:mod:`ta_lab2.bars.snapshot`) and replace the rows from each cut on, with
the state, in chunks of at most :data:`CHUNK_ROWS`."""

from __future__ import annotations

import datetime as dt
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.changes import DailyWrites, daily_writes, deletions_since, rows_from
from ta_lab2.bars.daily import BARS_1D_SCHEMA, local_day
from ta_lab2.bars.families import Timeframe, max_bar_days, rolling_rows
from ta_lab2.bars.registry import BarBuilder
from ta_lab2.bars.snapshot import SEED_SCHEMA, SEEDED_FAMILIES, SnapshotInput, first_rows, prepare_days, snapshot_batch
from ta_lab2.db.bulk import array_params, copy_frame, table_ref, upsert_small
from ta_lab2.db.reads import read_frame
from ta_lab2.db.tables import BARS_1D, state_table
from ta_lab2.frames import tuples_frame
from ta_lab2.load.source_schema import UTC_US
from ta_lab2.work.units import IdResult, by_id, stored_before

#: Snapshot rows (days × timeframes the engine processes) one transaction of a batch computes at
#: most: a batch of ids that all need a full build is split to bound memory.
CHUNK_ROWS = 300_000


#: The 1D columns the multi-timeframe engine reads (:func:`ta_lab2.bars.snapshot.prepare_days`).
DAILY_READ_SCHEMA: dict[str, pl.DataType] = {
    c: BARS_1D_SCHEMA[c] for c in ("id", "timestamp", "open", "high", "low", "close", "volume", "market_cap",
                                   "time_high", "time_low")}


@dataclass
class _Plan:
    """One id's part of a batch: per timeframe to rebuild, where from; then the days the engine
    needs and the snapshot seeds."""

    id: int
    first_day: dt.date | None
    watermark: dt.datetime | None
    change_at: dict[str, dt.datetime | None]  # tf -> None (whole) or the changed instant
    work: list[Timeframe]
    stored_until: dict[str, dt.datetime | None]  # tf -> the state's newest time_close (None: unknown)
    seeds: pl.DataFrame | None = None  # per timeframe with a cut, the stored row before it (snapshot seeds)
    seeded: set[str] = field(default_factory=set)  # the timeframes a seed stands in for (see _read_seeds)
    days: pl.DataFrame = field(default_factory=pl.DataFrame)  # prepare_days() of the days it needs (see _read_days)
    starts: list[int] = field(default_factory=list)  # per timeframe of work, the first day row (k) the engine needs

    @property
    def rows(self) -> int:
        """Snapshot rows the engine will process (the memory bound of a chunk)."""
        k0 = int(self.days["k"][0]) if self.days.height else 0
        return sum(self.days.height + k0 - k for k in self.starts)


def build_multi(
    conn: psycopg.Connection,
    builder: BarBuilder,
    tfs: Sequence[Timeframe],
    ids: Sequence[int],
    tz: str,
    full: bool,
    schema: str,
    bulk: bool = False,
) -> list[IdResult]:
    state_t = sql.Identifier(schema, state_table(builder.table))
    states: dict[int, dict[str, tuple[dt.datetime | None, dt.date | None, dt.datetime | None]]] = {i: {} for i in ids}
    for r in conn.execute(
        sql.SQL("SELECT id, tf, watermark_ingested_at, first_day, last_time_close FROM {} WHERE id = ANY(%s)")
        .format(state_t), (list(ids),),
    ).fetchall():
        states[r[0]][r[1]] = (r[2], r[3], r[4])
    since = {i: min((st[0] for st in states[i].values() if st[0] is not None), default=None) for i in ids}
    removals = deletions_since(conn, schema, since)
    summaries = daily_writes(conn, schema, {i: [st[0] for st in states[i].values() if st[0] is not None] for i in ids})
    results: dict[int, IdResult] = {}
    plans: list[_Plan] = []
    for ident in ids:
        plan = _plan(tfs, ident, summaries[ident], tz, full, states[ident], removals.get(ident, (None, None)))
        if plan is None:
            results[ident] = IdResult(ident, "unchanged")
        else:
            plans.append(plan)
    seeds = _read_seeds(conn, builder, schema, tz, plans) if builder.family in SEEDED_FAMILIES else {}
    for plan in plans:
        plan.seeds = seeds.get(plan.id)
        plan.seeded = set(plan.seeds["tf"].to_list()) if plan.seeds is not None else set()
    days = _read_days(conn, builder, schema, tz, plans) if plans else {}
    for plan in plans:
        plan.days = days[plan.id]
        plan.starts = first_rows(plan.days, plan.work, builder.family, plan.change_at, plan.seeded) \
            if plan.days.height else []
    for chunk in _chunks(plans):
        # bulk: already inside the rebuild's one transaction, and COPY FREEZE allows no savepoint
        with nullcontext() if bulk else conn.transaction():
            for result in _write_chunk(conn, builder, schema, chunk, bulk):
                results[result.id] = result
    return [results[i] for i in ids]


def _plan(tfs: Sequence[Timeframe], ident: int, summary: DailyWrites, tz: str, full: bool,
          states: Mapping[str, tuple[dt.datetime | None, dt.date | None, dt.datetime | None]],
          removal: tuple[dt.datetime | None, dt.datetime | None]) -> _Plan | None:
    """What to rebuild for one id, or None when nothing changed."""
    first_day = summary.first_ts.astimezone(ZoneInfo(tz)).date() if summary.first_ts is not None else None
    watermark = summary.newest
    deleted_from, last_removal = removal
    if full or not states:
        deleted_from = None
    if last_removal is not None and (watermark is None or last_removal > watermark):
        watermark = last_removal  # a removal is input too: do not see it again next time
    # Per timeframe: None = replace all rows; a datetime = recompute from the bar holding it and
    # replace rows from it on; absent = unchanged.
    change_at: dict[str, dt.datetime | None] = {}
    for tf in tfs:
        st = states.get(tf.tf)
        if full or st is None or st[1] != first_day:
            change_at[tf.tf] = None
            continue
        changed = summary.after.get(st[0]) if st[0] is not None else None
        first = min((t for t in (changed, deleted_from) if t is not None), default=None)
        if first is not None:
            change_at[tf.tf] = first
    if not change_at:
        return None
    work = [tf for tf in tfs if tf.tf in change_at]
    # the state's last_time_close is the (id, tf)'s newest stored row when it is not NULL: the
    # state is written with the rows, from the recomputed rows, which end with the newest one
    stored_until = {tf: states[tf][2] if tf in states else None for tf in change_at}
    return _Plan(ident, first_day, watermark, change_at, work, stored_until)


def _read_days(conn: psycopg.Connection, builder: BarBuilder, schema: str, tz: str,
               plans: Sequence[_Plan]) -> dict[int, pl.DataFrame]:
    """Per plan, :func:`prepare_days` of the 1D rows its bars need: every row when a timeframe
    is rebuilt whole, else from one row before the earliest day any bar to rebuild can hold
    (the cut for a seeded timeframe; the start of the bar's longest span before it for another
    calendar one; the rolling bar's rows before it), with ``k`` counted from the id's first
    row. One query finds where each id's read starts, then :func:`rows_from` reads."""
    bounds: list[dt.datetime | None] = []
    back: list[int] = []
    for p in plans:
        if any(at is None for at in p.change_at.values()):
            bounds.append(None)  # read everything
            back.append(0)
            continue
        needs = []
        for tf in p.work:
            at = p.change_at[tf.tf]
            assert at is not None
            if tf.tf in p.seeded or builder.family == "rolling":
                needs.append(at)
            else:  # days from the longest span a bar of tf can have before the cut's day
                day = at.astimezone(ZoneInfo(tz)).date() - dt.timedelta(days=max_bar_days(tf))
                needs.append(dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(tz)).astimezone(dt.timezone.utc))
        bounds.append(min(needs))
        back.append(max(rolling_rows(tf) for tf in p.work) if builder.family == "rolling" else 0)
    frame = pl.DataFrame({"id": [p.id for p in plans], "bound": bounds, "back": back},
                         schema={"id": pl.Int32, "bound": UTC_US, "back": pl.Int32})
    daily_t = sql.Identifier(schema, BARS_1D)
    # from: the back-th row before the bound (NULL: every row)
    starts = tuples_frame(conn.execute(
        sql.SQL("SELECT c.id, (SELECT \"timestamp\" FROM {d} WHERE id = c.id AND \"timestamp\" < c.bound "
                "ORDER BY \"timestamp\" DESC OFFSET c.back LIMIT 1) FROM unnest(%b, %b, %b) AS c(id, bound, back)")
        .format(d=daily_t), array_params(conn, frame, ("int4", "timestamptz", "int4"))).fetchall(),
        {"id": pl.Int32, "from_ts": UTC_US})
    daily_all, k0 = rows_from(conn, daily_t, DAILY_READ_SCHEMA, starts)
    prepared = prepare_days(daily_all, tz, k0)
    dailies = by_id(prepared)
    return {p.id: dailies.get(p.id, prepared.clear()) for p in plans}


def _read_seeds(conn: psycopg.Connection, builder: BarBuilder, schema: str, tz: str,
                plans: Sequence[_Plan]) -> dict[int, pl.DataFrame]:
    """Per id, the snapshot seeds of its timeframes with a cut: the stored row of the last day
    before the cut (rows before a cut are unchanged). With them the engine recomputes a bar
    from the cut instead of from the bar's first day. One short backward probe of the primary
    key per (id, tf); OFFSET 0 keeps each probe a probe."""
    cuts = tuples_frame([(p.id, tf, at) for p in plans for tf, at in p.change_at.items() if at is not None],
                      {"id": pl.Int32, "tf": pl.String, "cut": UTC_US})
    if not cuts.height:
        return {}
    stored = {c: t for c, t in SEED_SCHEMA.items() if c != "day"}
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in stored if c not in ("id", "tf", "timestamp"))
    source = sql.SQL(
        "(SELECT c.id, c.tf, r.* FROM unnest(%b, %b, %b) AS c(id, tf, cut) CROSS JOIN LATERAL ("
        "SELECT time_close AS \"timestamp\", {cols} FROM {t} WHERE id = c.id AND tf = c.tf AND time_close < c.cut "
        "ORDER BY bar_seq DESC, time_close DESC LIMIT 1 OFFSET 0) r) s"
    ).format(cols=columns, t=sql.Identifier(schema, builder.table))
    seeds = read_frame(conn, source, stored, array_params(conn, cuts, ("int4", "text", "timestamptz")), small=True,
                       order_by=("id", "tf"))
    return by_id(seeds.with_columns(day=local_day(pl.col("timestamp"), tz)).select(list(SEED_SCHEMA)))


def _chunks(plans: Sequence[_Plan]) -> Iterator[list[_Plan]]:
    """Consecutive plans whose snapshot rows add up to at most :data:`CHUNK_ROWS` (at least one)."""
    chunk: list[_Plan] = []
    total = 0
    for plan in plans:
        if chunk and total + plan.rows > CHUNK_ROWS:
            yield chunk
            chunk, total = [], 0
        chunk.append(plan)
        total += plan.rows
    if chunk:
        yield chunk


def _write_chunk(conn: psycopg.Connection, builder: BarBuilder, schema: str, chunk: Sequence[_Plan],
                 bulk: bool) -> list[IdResult]:
    """Compute and write the plans of ``chunk`` inside the caller's transaction."""
    table = sql.Identifier(schema, builder.table)
    rows = snapshot_batch([SnapshotInput(p.days, p.work, p.change_at, p.starts, p.seeds, p.first_day) for p in chunk],
                          builder.family)
    # A snapshot row depends only on the days of its bar up to its own day (and on the day
    # before it, through day_open), so rows before the first changed instant are unchanged even
    # inside the bar that holds it: replace from that instant on (docs/decisions.md).
    cuts = pl.DataFrame(
        {"id": [p.id for p in chunk for _ in p.change_at], "tf": [tf for p in chunk for tf in p.change_at],
         "_cut": [at for p in chunk for at in p.change_at.values()]},
        schema={"id": pl.Int32, "tf": pl.String, "_cut": UTC_US})
    # rows are in primary-key order; the join keeps it (a bulk rebuild's index build then
    # sorts presorted input)
    new_rows = rows.join(cuts, on=["id", "tf"], how="left", maintain_order="left").filter(
        pl.col("_cut").is_null() | (pl.col("time_close") >= pl.col("_cut"))
    ).drop("_cut")
    deleted: dict[int, int] = {}
    # an (id, tf) whose newest stored row is before its cut has nothing to delete (a new day)
    probes = cuts.filter(~pl.Series([stored_before(p.stored_until[tf], at)
                                     for p in chunk for tf, at in p.change_at.items()], dtype=pl.Boolean))
    if probes.height and not bulk:
        # Every stored row at or after a cut lies in a bar numbered at least like the last
        # stored row before the cut (bars are numbered in time order, and the rows before the
        # cut are unchanged; the first recomputed bar is no bound: when the cut's own day was
        # removed, its bar may keep older rows after the cut). So each (id, tf) is a short
        # backward probe for that bar, then one primary-key range probe over the last bars (a
        # whole (id, tf) when it is rebuilt whole); OFFSET 0 keeps the probes from being pulled
        # up into a join that walks every row of the ids (docs/decisions.md).
        deleted = dict(conn.execute(
            sql.SQL(
                "WITH d AS (DELETE FROM {t} e WHERE e.ctid = ANY(ARRAY("
                "SELECT x.ctid FROM unnest(%b, %b, %b) AS c(id, tf, cut) "
                "CROSS JOIN LATERAL (SELECT ctid FROM {t} WHERE id = c.id AND tf = c.tf "
                "AND bar_seq >= coalesce((SELECT b.bar_seq FROM {t} b WHERE b.id = c.id AND b.tf = c.tf "
                "AND b.time_close < c.cut ORDER BY b.bar_seq DESC, b.time_close DESC LIMIT 1), 0) "
                "AND time_close >= coalesce(c.cut, '-infinity') OFFSET 0) x)) "
                "RETURNING e.id) SELECT id, count(*) FROM d GROUP BY id"
            ).format(t=table),
            array_params(conn, probes, ("int4", "text", "timestamptz")),
        ).fetchall())
    copy_frame(conn, table_ref(builder.table, schema), new_rows, freeze=bulk)
    _write_state(conn, chunk, rows, schema, builder.table, bulk)
    inserted = dict(new_rows.group_by("id").len().iter_rows())
    results = []
    for p in chunk:
        full_tfs = sum(at is None for at in p.change_at.values())
        mode = "full" if full_tfs == len(p.work) else "incremental"
        results.append(IdResult(p.id, mode if p.days.height else "empty", inserted.get(p.id, 0), deleted.get(p.id, 0)))
    return results


def _write_state(conn: psycopg.Connection, chunk: Sequence[_Plan], rows: pl.DataFrame, schema: str, table: str,
                 bulk: bool = False) -> None:
    """Upsert the state of every (id, tf) the plans of ``chunk`` rebuilt, from their new ``rows``."""
    plans = pl.DataFrame(
        {"id": [p.id for p in chunk for _ in p.work], "tf": [tf.tf for p in chunk for tf in p.work],
         "watermark_ingested_at": [p.watermark for p in chunk for _ in p.work],
         "first_day": [p.first_day for p in chunk for _ in p.work]},
        schema={"id": pl.Int32, "tf": pl.String, "watermark_ingested_at": UTC_US, "first_day": pl.Date},
    )
    summary = (
        plans.join(
            rows.group_by("id", "tf").agg(
                last_day=pl.col("time_close").max(),
                last_bar_seq=pl.col("bar_seq").max(),
                last_time_close=pl.col("time_close").max(),
            ),
            on=["id", "tf"],
            how="left",
            maintain_order="left",
        )
        .with_columns(last_day=pl.col("last_day").dt.date())
        .select("id", "tf", "watermark_ingested_at", "first_day", "last_day", "last_bar_seq", "last_time_close")
    )
    if bulk:  # the state table was truncated in this transaction: nothing to upsert against
        copy_frame(conn, table_ref(state_table(table), schema), summary, freeze=True)
        return
    upsert_small(conn, table_ref(state_table(table), schema), summary, ("id", "tf"), now_columns=("updated_at",))
