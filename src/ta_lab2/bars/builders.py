"""The six bar builders: full rebuild and incremental refresh (spec 02 §1, §4). Every builder
works on batches of ids: one read of the batch's inputs, then one transaction per batch (1D)
or per chunk of the batch (multi-timeframe); a crash leaves each id's old or new rows either
way (docs/decisions.md). Computation
is delegated to the pure modules (:mod:`.daily`, :mod:`.snapshot`); this module decides
*what* to recompute and moves rows.

Incremental contract: for each id, find the earliest input change since the last run (new or
revised rows through ``load_ts`` / ``ingested_at``, rows removed from the 1D table through its
deletion log), recompute the bars from the one holding that change, and replace the id's rows
from the change on. A snapshot row depends only on its bar's days up to its own day (and on
the day before it), so every earlier row is unchanged and the table equals a full rebuild. A
change of the id's first day (backfill) or of the time zone rebuilds the id from scratch.

What an incremental run reads is bounded by what it recomputes: the 1D builder reads source
rows from the local day of the first change; the others plan from index probes, read the 1D
rows from just before the earliest day a bar to rebuild can hold, and (calendar and anchored
families) resume each bar from its stored row before the cut, a snapshot seed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Collection, Iterator, Mapping, Sequence

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.daily import BARS_1D_SCHEMA, REJECTS_1D_COLUMNS, SOURCE_READ_SCHEMA, local_day, validate_days
from ta_lab2.bars.families import Timeframe, max_bar_days, rolling_rows
from ta_lab2.bars.snapshot import (SEED_SCHEMA, SEEDED_FAMILIES, SnapshotInput, first_rows, prepare_days,
                                    snapshot_batch)
from ta_lab2.db.bulk import array_params, copy_frame, read_frame, table_ref, upsert_small
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, BARS_1D_DELETIONS, BARS_1D_REJECTS, SOURCE_TABLE, state_table
from ta_lab2.errors import UsageError
from ta_lab2.frames import tuples_frame
from ta_lab2.pipeline.work import (IdResult, ProgressFn, TableResult, bulk_rebuild, by_id, clear_ids, resolve_ids,
                                   run_units, stored_before, unit_size)
from ta_lab2.load.source_schema import UTC_US

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BarBuilder:
    """A bar table and which ``dim_timeframe`` rows feed it."""

    name: str
    table: str
    family: str  # dim_timeframe family
    scheme: str | None = None  # week calendar (US / ISO) for the calendar families

    def timeframe_filter(self) -> sql.Composable:
        if self.scheme is None:
            return sql.SQL("family = {}").format(sql.Literal(self.family))
        return sql.SQL("family = {f} AND (base_unit IN ('M', 'Y') OR calendar_scheme = {s})").format(
            f=sql.Literal(self.family), s=sql.Literal(self.scheme)
        )


BUILDERS: dict[str, BarBuilder] = {
    "1d": BarBuilder("1d", BAR_TABLES["1d"], "1d"),
    "multi_tf": BarBuilder("multi_tf", BAR_TABLES["multi_tf"], "rolling"),
    "cal_iso": BarBuilder("cal_iso", BAR_TABLES["cal_iso"], "cal", "ISO"),
    "cal_us": BarBuilder("cal_us", BAR_TABLES["cal_us"], "cal", "US"),
    "cal_anchor_iso": BarBuilder("cal_anchor_iso", BAR_TABLES["cal_anchor_iso"], "cal_anchor", "ISO"),
    "cal_anchor_us": BarBuilder("cal_anchor_us", BAR_TABLES["cal_anchor_us"], "cal_anchor", "US"),
}


# --------------------------------------------------------------------------- inputs
def load_timeframes(
    conn: psycopg.Connection, builder: BarBuilder, include_non_canonical: bool = False, schema: str = "public"
) -> list[Timeframe]:
    """The builder's timeframes from ``dim_timeframe`` (never a hard-coded list)."""
    canonical = sql.SQL("") if include_non_canonical else sql.SQL(" AND is_canonical")
    rows = conn.execute(
        sql.SQL(
            "SELECT tf, family, base_unit, tf_qty, tf_days_nominal, calendar_scheme FROM {t} "
            "WHERE {f}{c} ORDER BY sort_order NULLS LAST, tf"
        ).format(t=sql.Identifier(schema, "dim_timeframe"), f=builder.timeframe_filter(), c=canonical)
    ).fetchall()
    return [Timeframe(*r) for r in rows]


# --------------------------------------------------------------------------- building
def build(
    conn: psycopg.Connection,
    builder_name: str,
    ids: Sequence[int] | None = None,
    *,
    full_rebuild: bool = False,
    tz: str = "UTC",
    include_non_canonical: bool = False,
    schema: str = "public",
    progress: ProgressFn | None = None,
    workers: int = 1,
    url: str | None = None,
) -> TableResult:
    """Build one bar table for ``ids`` (None = all). ``conn`` must be autocommit: each batch
    (1D) or chunk of a batch of ids is one explicit transaction, so a crash leaves either the
    old or the new rows of an id.
    With ``workers > 1`` (and the ``url`` for the workers' own connections) ids are built in
    that many processes."""
    if builder_name not in BUILDERS:
        raise UsageError(f"unknown bar builder {builder_name!r}; choose from {', '.join(BUILDERS)}")
    if not conn.autocommit:
        raise ValueError("build() needs an autocommit connection (it opens its own transactions)")
    builder = BUILDERS[builder_name]
    started = time.perf_counter()
    id_list = resolve_ids(conn, ids, schema)
    tfs = [] if builder.name == "1d" else load_timeframes(conn, builder, include_non_canonical, schema)
    bulk = full_rebuild and ids is None and builder.name != "1d"
    options = BuildOptions(builder.name, tuple(tfs), tz, full_rebuild, schema, bulk)
    if bulk:
        # every id in one transaction, indexes built once at the end (workers cannot share it)
        with bulk_rebuild(conn, [builder.table], [state_table(builder.table)], schema):
            results = run_units(conn, build_batch, options, id_list, progress=progress)
    else:
        if full_rebuild:
            if builder.name == "1d":
                with conn.transaction():
                    first = conn.execute(
                        sql.SQL('SELECT id, min("timestamp") FROM {} WHERE id = ANY(%s) GROUP BY id').format(
                            _ident(schema, BARS_1D)), (id_list,)).fetchall()
                    log_deletions(conn, schema, first)
            extra = [BARS_1D_REJECTS] if builder.name == "1d" else []
            clear_ids(conn, [builder.table, state_table(builder.table), *extra], None if ids is None else id_list, schema)
        # a 1D id's work is one bar per source day, light even in a full rebuild: batched like
        # an incremental run (one id per unit cost ~2x in per-id reads, COPYs and commits)
        results = run_units(conn, build_batch, options, id_list,
                            batch_size=unit_size(full_rebuild and builder.name != "1d"),
                            workers=workers, url=url, progress=progress)
    return TableResult(builder.name, builder.table, full_rebuild, tuple(t.tf for t in tfs),
                       time.perf_counter() - started, tuple(results))


@dataclass(frozen=True)
class BuildOptions:
    """Everything a worker needs to build one id (picklable)."""

    builder: str
    timeframes: tuple[Timeframe, ...]
    tz: str
    full: bool
    schema: str
    bulk: bool = False  # inside bulk_rebuild(): one transaction, empty unindexed table


def log_deletions(conn: psycopg.Connection, schema: str, removed: Sequence[tuple[int, dt.datetime]]) -> None:
    """Record, in the caller's transaction, that rows of the 1D table were removed from
    ``(id, from_ts)`` on, and drop entries a newer one makes redundant (a reader that sees an
    entry also sees every newer one, so an older entry starting at or after a newer one's
    ``from_ts`` can never lower a reader's cut)."""
    if not removed:
        return
    table = _ident(schema, BARS_1D_DELETIONS)
    ids = [r[0] for r in removed]
    conn.execute(
        sql.SQL("INSERT INTO {} (id, from_ts) SELECT * FROM unnest(%s::int[], %s::timestamptz[]) "
                "ON CONFLICT (id, deleted_at) DO UPDATE SET from_ts = least({}.from_ts, EXCLUDED.from_ts)").format(
            table, sql.Identifier(BARS_1D_DELETIONS)),
        (ids, [r[1] for r in removed]),
    )
    conn.execute(
        sql.SQL("DELETE FROM {t} o WHERE o.id = ANY(%s) AND EXISTS (SELECT 1 FROM {t} n WHERE n.id = o.id "
                "AND n.deleted_at > o.deleted_at AND n.from_ts <= o.from_ts)").format(t=table),
        (ids,),
    )


def deletions_since(conn: psycopg.Connection, schema: str,
                    since: Mapping[int, dt.datetime | None]) -> dict[int, tuple[dt.datetime | None, dt.datetime | None]]:
    """Per id of ``since``: (earliest 1D instant removed after ``since[id]``, newest removal
    time); ids with no logged removal are absent."""
    rows = conn.execute(
        sql.SQL("SELECT d.id, min(d.from_ts) FILTER (WHERE u.since IS NULL OR d.deleted_at > u.since), "
                "max(d.deleted_at) FROM unnest(%s::int[], %s::timestamptz[]) AS u(id, since) "
                "JOIN {} d ON d.id = u.id GROUP BY d.id").format(_ident(schema, BARS_1D_DELETIONS)),
        (list(since), list(since.values())),
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@dataclass(frozen=True)
class DailyWrites:
    """What the 1D table says of one id without its rows being read."""

    first_ts: dt.datetime | None  # its first instant
    newest: dt.datetime | None  # its newest ingested_at
    after: dict[dt.datetime, dt.datetime | None]  # watermark -> first instant written after it


def daily_writes(conn: psycopg.Connection, schema: str,
                 watermarks: Mapping[int, Collection[dt.datetime]]) -> dict[int, DailyWrites]:
    """Per id of ``watermarks``: its :class:`DailyWrites` for those watermarks — index probes:
    the primary key's first entry, the (id, ingested_at) index's last entry and its entries
    after each watermark (OFFSET 0 keeps that a range of the index: otherwise the planner walks
    the primary key in time order, filtering every row)."""
    pairs = [(i, wm) for i, wms in watermarks.items() for wm in (sorted(set(wms)) or [None])]
    rows = conn.execute(
        sql.SQL("SELECT u.id, u.wm, (SELECT min(\"timestamp\") FROM {d} WHERE id = u.id), "
                "(SELECT max(ingested_at) FROM {d} WHERE id = u.id), "
                "(SELECT min(\"timestamp\") FROM (SELECT \"timestamp\" FROM {d} WHERE id = u.id AND ingested_at > u.wm "
                "OFFSET 0) x) "
                "FROM unnest(%s::int[], %s::timestamptz[]) AS u(id, wm)").format(d=_ident(schema, BARS_1D)),
        ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
    after: dict[int, dict[dt.datetime, dt.datetime | None]] = {i: {} for i in watermarks}
    ends: dict[int, tuple[dt.datetime | None, dt.datetime | None]] = {}
    for ident, wm, first_ts, newest, first_after in rows:
        if wm is not None:
            after[ident][wm] = first_after
        ends[ident] = (first_ts, newest)
    return {i: DailyWrites(*ends.get(i, (None, None)), after[i]) for i in watermarks}


def rows_from(conn: psycopg.Connection, table: sql.Identifier, read_schema: Mapping[str, pl.DataType],
               starts: pl.DataFrame) -> tuple[pl.DataFrame, dict[int, int]]:
    """Each id's rows of ``table`` (keyed by (id, "timestamp")) from its ``from_ts`` on (NULL:
    all), in key order, and how many of its rows precede them (an index-only count). Each id
    is one primary-key range probe (OFFSET 0 keeps it one: joined, the planner hashed the
    whole table to read a day's tail — 9 ms instead of 0.3 ms for 7 ids of ``upstream``)."""
    params = array_params(conn, starts.select("id", "from_ts"), ("int4", "timestamptz"))
    rows = read_frame(
        conn, sql.SQL("(SELECT t.* FROM unnest(%b, %b) AS c(id, from_ts) CROSS JOIN LATERAL (SELECT * FROM {t} "
                      "WHERE id = c.id AND \"timestamp\" >= coalesce(c.from_ts, '-infinity') OFFSET 0) t) r").format(t=table),
        read_schema, params, small=True, order_by=("id", "timestamp"))
    before = dict(conn.execute(
        sql.SQL("SELECT c.id, (SELECT count(*) FROM {t} WHERE id = c.id AND \"timestamp\" < c.from_ts)::int "
                "FROM unnest(%b, %b) AS c(id, from_ts)").format(t=table), params).fetchall())
    return rows, before


#: Snapshot rows (days × timeframes the engine processes) one transaction of a batch computes at
#: most: a batch of ids that all need a full build is split to bound memory.
CHUNK_ROWS = 300_000


def build_batch(conn: psycopg.Connection, options: BuildOptions, ids: Sequence[int]) -> list[IdResult]:
    """Build ``ids`` (the work unit; any executor may call it): the batch's inputs in one read,
    written in one transaction (1D) or one per chunk of ids (multi-timeframe); a crash leaves
    each id's old or new rows."""
    builder = BUILDERS[options.builder]
    if builder.name == "1d":
        return _build_1d(conn, ids, options.tz, options.full, options.schema)
    return _build_multi(conn, builder, options.timeframes, ids, options.tz, options.full, options.schema,
                        options.bulk)


def _ident(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def _build_1d(conn: psycopg.Connection, ids: Sequence[int], tz: str, full: bool, schema: str) -> list[IdResult]:
    """Build the 1D rows of ``ids``: find each id's first change, read its source rows from
    there on, then one transaction that replaces each changed id's rows from the start of the
    local day of its first change (all of them when it has no state, another tz or ``full``).
    Validation is per row and per local day, and ``bar_seq`` counts the source rows before,
    so the rows from a local day's start on are all an incremental build reads."""
    source_t, bars_t, rejects_t = (_ident(schema, t) for t in (SOURCE_TABLE, BARS_1D, BARS_1D_REJECTS))
    states = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        sql.SQL("SELECT id, tz, watermark_load_ts, source_rows FROM {} WHERE id = ANY(%s)").format(
            _ident(schema, state_table(BARS_1D))), (list(ids),)).fetchall()}
    # id -> None (replace everything of the id) or the instant rows are replaced from
    cuts: dict[int, dt.datetime | None] = {}
    incremental = [i for i in ids if not full and i in states and states[i][0] == tz]
    for ident in ids:
        if ident not in incremental:
            cuts[ident] = None
    if incremental:
        # per id: its first source row loaded since the watermark, how many were, and its row
        # count (index probes: (id, load_ts), then the primary key)
        changed: dict[int, dt.datetime | None] = {}
        suspects = []  # ids that may have lost source rows
        for ident, first, n_changed, n_rows in conn.execute(
            sql.SQL("SELECT u.id, min(x.\"timestamp\"), count(x.\"timestamp\"), "
                    "(SELECT count(*) FROM {s} WHERE id = u.id) FROM unnest(%s::int[], %s::timestamptz[]) AS u(id, wm) "
                    "LEFT JOIN LATERAL (SELECT \"timestamp\" FROM {s} WHERE id = u.id AND load_ts > u.wm OFFSET 0) x "
                    "ON true GROUP BY u.id").format(s=source_t),
                (incremental, [states[i][1] for i in incremental])).fetchall():
            changed[ident] = first
            # rows loaded since are new or revised: when the count grew by all of them, none
            # was revised and none removed (source_rows is the count at the last build)
            if states[ident][2] is None or n_rows != states[ident][2] + n_changed:
                suspects.append(ident)
        # rows of the 1D or rejects table whose source row is gone
        deleted = dict(conn.execute(
            sql.SQL(
                """
                SELECT t.id, min(t."timestamp") FROM (
                    SELECT id, "timestamp" FROM {b} WHERE id = ANY(%(ids)s)
                    UNION ALL SELECT id, "timestamp" FROM {r} WHERE id = ANY(%(ids)s)) t
                WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id AND s."timestamp" = t."timestamp")
                GROUP BY t.id
                """
            ).format(b=bars_t, r=rejects_t, s=source_t),
            {"ids": suspects},
        ).fetchall()) if suspects else {}
        for ident in incremental:
            first = min((t for t in (changed.get(ident), deleted.get(ident)) if t is not None), default=None)
            if first is not None:
                # Start of the local day of the first change: a change can flip
                # duplicate_local_day for earlier rows of the same day.
                local = first.astimezone(_zone(tz)).date()
                cuts[ident] = dt.datetime.combine(local, dt.time(), tzinfo=_zone(tz)).astimezone(dt.timezone.utc)
    work = [i for i in ids if i in cuts]
    results = {i: IdResult(i, "unchanged") for i in ids if i not in cuts}
    if work:
        cut_frame = pl.DataFrame({"id": work, "_cut": [cuts[i] for i in work]}, schema={"id": pl.Int32, "_cut": UTC_US})
        tail, before = rows_from(conn, source_t, SOURCE_READ_SCHEMA, cut_frame.rename({"_cut": "from_ts"}))
        accepted, rejects = validate_days(tail, tz, before)
        with conn.transaction():
            removed = _delete_from_cuts(conn, bars_t, cut_frame, returning=True)
            log_deletions(conn, schema, [(i, r[1]) for i, r in removed.items()])
            _delete_from_cuts(conn, rejects_t, cut_frame)
            copy_frame(conn, table_ref(BARS_1D, schema), accepted.select(list(BARS_1D_SCHEMA)))
            copy_frame(conn, table_ref(BARS_1D_REJECTS, schema), rejects.select(list(REJECTS_1D_COLUMNS)))
            _write_1d_state(conn, schema, work, tz)
        read = dict(tail.group_by("id").len().iter_rows())
        sources = {i: before.get(i, 0) + read.get(i, 0) for i in work}
        inserted = dict(accepted.group_by("id").len().iter_rows())
        rejected = dict(rejects.group_by("id").len().iter_rows())
        for i in work:
            mode = "full" if cuts[i] is None else "incremental"
            results[i] = IdResult(i, mode if sources.get(i) else "empty", inserted.get(i, 0),
                                  removed.get(i, (0, None))[0], rejected.get(i, 0))
    return [results[i] for i in ids]


def _delete_from_cuts(conn: psycopg.Connection, table: sql.Composable, cuts: pl.DataFrame,
                      returning: bool = False) -> dict[int, tuple[int, dt.datetime]]:
    """Delete the rows of each id of ``cuts`` at or after its ``_cut`` (all when NULL): one
    primary-key range probe per id (OFFSET 0 keeps the planner from turning the probes into a
    join over every row). With ``returning``: per id, (rows deleted, earliest instant deleted)."""
    stmt = sql.SQL(
        "WITH d AS (DELETE FROM {t} e WHERE e.ctid = ANY(ARRAY("
        "SELECT x.ctid FROM unnest(%b, %b) AS c(id, cut) CROSS JOIN LATERAL (SELECT ctid FROM {t} "
        "WHERE id = c.id AND \"timestamp\" >= coalesce(c.cut, '-infinity') OFFSET 0) x)) "
        "RETURNING e.id, e.\"timestamp\") SELECT id, count(*), min(\"timestamp\") FROM d GROUP BY id").format(t=table)
    rows = conn.execute(stmt, array_params(conn, cuts.select("id", "_cut"), ("int4", "timestamptz"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows} if returning else {}


def _write_1d_state(conn: psycopg.Connection, schema: str, ids: Sequence[int], tz: str) -> None:
    """Upsert the 1D state of ``ids`` from the source and the 1D table as they now are."""
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {st} (id, tz, watermark_load_ts, source_rows, first_day, last_day, last_bar_seq,
                              last_time_close, updated_at)
            SELECT u.id, %(tz)s, (SELECT max(load_ts) FROM {s} WHERE id = u.id),
                   (SELECT count(*) FROM {s} WHERE id = u.id),
                   ((SELECT min("timestamp") FROM {b} WHERE id = u.id) AT TIME ZONE %(tz)s)::date,
                   ((SELECT max("timestamp") FROM {b} WHERE id = u.id) AT TIME ZONE %(tz)s)::date,
                   (SELECT max(bar_seq) FROM {b} WHERE id = u.id),
                   (SELECT max(time_close) FROM {b} WHERE id = u.id), now()
            FROM unnest(%(ids)s::int[]) AS u(id)
            ON CONFLICT (id) DO UPDATE SET tz = EXCLUDED.tz, watermark_load_ts = EXCLUDED.watermark_load_ts,
                source_rows = EXCLUDED.source_rows, first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day,
                last_bar_seq = EXCLUDED.last_bar_seq, last_time_close = EXCLUDED.last_time_close,
                updated_at = EXCLUDED.updated_at
            """
        ).format(st=_ident(schema, state_table(BARS_1D)), b=_ident(schema, BARS_1D), s=_ident(schema, SOURCE_TABLE)),
        {"ids": list(ids), "tz": tz},
    )


def _zone(tz: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)


DAILY_READ_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "timestamp": UTC_US,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "market_cap": pl.Float64(),
    "time_high": UTC_US,
    "time_low": UTC_US,
}


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
    days: pl.DataFrame = field(default_factory=pl.DataFrame)  # prepare_days() of the days it needs (see _read_days)
    starts: list[int] = field(default_factory=list)  # per timeframe of work, the first day row (k) the engine needs

    @property
    def seeded(self) -> set[str]:
        """The timeframes a seed stands in for (see _read_seeds)."""
        return set(self.seeds["tf"].to_list()) if self.seeds is not None else set()

    @property
    def rows(self) -> int:
        """Snapshot rows the engine will process (the memory bound of a chunk)."""
        k0 = int(self.days["k"][0]) if self.days.height else 0
        return sum(self.days.height + k0 - k for k in self.starts)


def _build_multi(
    conn: psycopg.Connection,
    builder: BarBuilder,
    tfs: Sequence[Timeframe],
    ids: Sequence[int],
    tz: str,
    full: bool,
    schema: str,
    bulk: bool = False,
) -> list[IdResult]:
    state_t = _ident(schema, state_table(builder.table))
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
    first_day = summary.first_ts.astimezone(_zone(tz)).date() if summary.first_ts is not None else None
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
                day = at.astimezone(_zone(tz)).date() - dt.timedelta(days=max_bar_days(tf))
                needs.append(dt.datetime.combine(day, dt.time(), tzinfo=_zone(tz)).astimezone(dt.timezone.utc))
        bounds.append(min(needs))
        back.append(max(rolling_rows(tf) for tf in p.work) if builder.family == "rolling" else 0)
    frame = pl.DataFrame({"id": [p.id for p in plans], "bound": bounds, "back": back},
                         schema={"id": pl.Int32, "bound": UTC_US, "back": pl.Int32})
    daily_t = _ident(schema, BARS_1D)
    # from: the back-th row before the bound (NULL: every row)
    starts = tuples_frame(conn.execute(
        sql.SQL("SELECT c.id, (SELECT \"timestamp\" FROM {d} WHERE id = c.id AND \"timestamp\" < c.bound "
                "ORDER BY \"timestamp\" DESC OFFSET c.back LIMIT 1) FROM unnest(%b, %b, %b) AS c(id, bound, back)")
        .format(d=daily_t), array_params(conn, frame, ("int4", "timestamptz", "int4"))).fetchall(),
        {"id": pl.Int32, "from_ts": UTC_US})
    daily_all, k0 = rows_from(conn, daily_t, DAILY_READ_SCHEMA, starts)
    dailies = by_id(daily_all)
    return {p.id: prepare_days(dailies.get(p.id, daily_all.clear()), tz, k0[p.id]) for p in plans}


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
    ).format(cols=columns, t=_ident(schema, builder.table))
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
    table = _ident(schema, builder.table)
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
