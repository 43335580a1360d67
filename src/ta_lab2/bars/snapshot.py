"""The snapshot engine shared by the five multi-timeframe families (spec 02 §2.1–§2.2).

Given ids' validated daily rows and a family assigner (:mod:`ta_lab2.bars.families`), it
emits one row per (bar, observed day) describing the bar as of that day's close: running
OHLCV with earliest-tie extremum instants, position/count columns, partial flags and the
missing-day diagnostics. Everything is a polars window expression over ``(id, tf, bar_seq)``;
nothing loops per row in Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
import polars as pl

from ta_lab2.bars.daily import BAR_VALUES, local_day
from ta_lab2.bars.families import ASSIGNERS, PARAM_COLUMNS, Timeframe, max_bar_days, rolling_rows, timeframe_params
from ta_lab2.frames import epoch_us
from ta_lab2.load.source_schema import UTC_US

MAX_LISTED_MISSING = 50
ONE_MS = pl.duration(milliseconds=1)
ONE_DAY = pl.duration(days=1)

#: Columns of the multi-timeframe bar tables (without ``ingested_at``), in table order.
BAR_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "tf": pl.String(),
    "tf_days": pl.Int32(),
    "bar_seq": pl.Int32(),
    **BAR_VALUES,
    "timestamp": UTC_US,
    "last_ts_half_open": UTC_US,
    "pos_in_bar": pl.Int32(),
    "is_partial_start": pl.Boolean(),
    "is_partial_end": pl.Boolean(),
    "is_missing_days": pl.Boolean(),
    "count_days": pl.Int32(),
    "count_days_remaining": pl.Int32(),
    "count_missing_days": pl.Int32(),
    "count_missing_days_start": pl.Int32(),
    "count_missing_days_end": pl.Int32(),
    "count_missing_days_interior": pl.Int32(),
    "missing_days_where": pl.String(),
    "first_missing_day": pl.Date(),
    "last_missing_day": pl.Date(),
}
ANCHORED_SCHEMA: dict[str, pl.DataType] = {**BAR_SCHEMA, "bar_anchor_offset": pl.Int32()}

#: Columns of the validated daily input the engine needs.
DAILY_COLUMNS = ("id", "timestamp", "open", "high", "low", "close", "volume", "market_cap", "time_high", "time_low")


def prepare_days(daily: pl.DataFrame, tz: str, k0: int | Mapping[int, int] = 0) -> pl.DataFrame:
    """Add ``day`` (local date), ``k`` (row index in the id's history) and ``day_open`` (spec 01
    ``day_time_open``) to ids' validated daily rows, in (id, timestamp) order.

    An id's rows may be a suffix of its history whose first row has index ``k0`` (one number
    for every id, or per id: ids absent from the mapping start at 0): that row's ``day_open``
    then lacks the day before it, so it only serves as the day before the next. One query for
    all ids: a day's refresh prepares a few rows of each of many ids."""
    d = daily.select(DAILY_COLUMNS).sort("id", "timestamp")
    if isinstance(k0, Mapping):
        first_k = pl.col("id").replace_strict(dict(k0), default=0, return_dtype=pl.Int32)
    else:
        first_k = pl.lit(k0, pl.Int32)
    ts = pl.col("timestamp")
    return d.with_columns(
        day=local_day(ts, tz),
        k=(first_k + pl.int_range(pl.len(), dtype=pl.Int32).over("id")).cast(pl.Int32),
        day_open=ts.shift(1).over("id").fill_null(ts.first().over("id") - ONE_DAY) + ONE_MS,
    )


@dataclass(frozen=True)
class SnapshotInput:
    """One id's share of a :func:`snapshot_batch` query.

    ``days``: the id's history from :func:`prepare_days`, whole or from a row before every day
    the requested bars need (its first row serves only as the day before the next; then
    ``first_day``, the id's first local day, is required). ``since`` (per tf; missing or None =
    every bar): only bars from the one holding the first day at or after that instant are built
    (the last bar if no day is that late). ``starts``: the caller's :func:`first_rows` of the
    same arguments, computed when None.

    ``seeds`` (calendar and anchored families only; :data:`SEED_SCHEMA`): per tf with a
    ``since``, the stored row of the last day before it. When that row lies in the first bar
    to build, it stands for the bar's days before ``since``: their running values are its
    columns, so those days need not be in ``days`` (``starts`` may begin at ``since``; see
    :func:`first_rows`). A seed in an earlier bar is ignored.
    """

    days: pl.DataFrame
    timeframes: Sequence[Timeframe]
    since: Mapping[str, dt.datetime | None] | None = None
    starts: Sequence[int] | None = None
    seeds: pl.DataFrame | None = None
    first_day: dt.date | None = None  # None: the first row of ``days`` is the id's first day


#: Engine input (day, timeframe) pairs up to which a snapshot query runs on polars' in-memory
#: engine (an incremental refresh's few bars) rather than the streaming one.
SMALL_QUERY_ROWS = 10_000

#: A seed: the stored bar row (of a calendar or anchored table) of the last day before a cut,
#: with ``timestamp`` its ``time_close`` and ``day`` that instant's local date.
SEED_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "tf": pl.String(),
    "timestamp": UTC_US,
    "day": pl.Date(),
    "time_open": UTC_US,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "time_high": UTC_US,
    "time_low": UTC_US,
    "volume": pl.Float64(),
    "pos_in_bar": pl.Int32(),
    "count_missing_days": pl.Int32(),
    "count_missing_days_start": pl.Int32(),
    "missing_days_where": pl.String(),
    "last_missing_day": pl.Date(),
}
#: The families whose bars a seed can stand in for: their bars cover every day from the first
#: bar on, and ``eff_start`` gives back a bar's first day from ``count_missing_days_start``.
SEEDED_FAMILIES = ("cal", "cal_anchor")


def snapshot_batch(inputs: Sequence[SnapshotInput], family: str) -> pl.DataFrame:
    """Snapshot rows for ``family`` of every id of ``inputs``, in primary-key order.

    A bar's rows depend only on its own days, on ``k``, ``day_open`` (derived from the whole
    history by :func:`prepare_days`) and on the id's first day, so rows built from a suffix of
    the history equal the same rows of a full build; only the days the requested bars can hold
    are processed.

    Every id and timeframe goes through one query (days joined to (id, timeframe) parameters):
    an incremental build recomputes a handful of bars per id, where per-query overhead, not
    data, is the cost.
    """
    schema = ANCHORED_SCHEMA if family == "cal_anchor" else BAR_SCHEMA
    assign: Callable[[pl.LazyFrame, pl.Expr], pl.LazyFrame] = ASSIGNERS[family]
    days_parts: list[pl.DataFrame] = []
    series: dict[str, list] = {"id": [], "tf": [], "_first": [], "_since": [], "_k_from": []}
    used: dict[str, Timeframe] = {}
    seed_parts: list[pl.DataFrame] = []
    work_rows = 0  # (day, timeframe) pairs the query will process
    for part in inputs:
        if part.days.is_empty() or not part.timeframes:
            continue
        starts = part.starts if part.starts is not None else first_rows(part.days, part.timeframes, family, part.since)
        k0 = int(part.days["k"][0])  # starts count rows of the whole history
        days_parts.append(part.days.slice(min(starts) - k0))
        work_rows += sum(part.days.height + k0 - k for k in starts)
        ident = part.days["id"][0]
        first = part.first_day or part.days["day"][0]
        for tf, start in zip(part.timeframes, starts):
            used.setdefault(tf.tf, tf)
            series["id"].append(ident)
            series["tf"].append(tf.tf)
            series["_first"].append(first)
            series["_since"].append((part.since or {}).get(tf.tf))
            series["_k_from"].append(start)
        if part.seeds is not None and part.seeds.height:
            if family not in SEEDED_FAMILIES:
                raise ValueError(f"seeds stand in for {' and '.join(SEEDED_FAMILIES)} bars only, not {family}")
            seed_parts.append(part.seeds)
    if not days_parts:
        return pl.DataFrame(schema=schema)
    days = pl.concat(days_parts, how="vertical")
    # per (id, tf): the timeframe's parameters (one frame for the query) and the id's own values
    params = pl.DataFrame(series, schema={"id": days.schema["id"], "tf": pl.String, "_first": pl.Date,
                                          "_since": UTC_US, "_k_from": pl.Int32}).join(
        timeframe_params(list(used.values()), family), on="tf")
    crossed = days.lazy().join(params.lazy(), on="id").filter(pl.col("k") >= pl.col("_k_from"))
    seeded = bool(seed_parts)
    if seeded:
        crossed = pl.concat([crossed.with_columns(_seed=pl.lit(False)),
                             _seed_rows(pl.concat(seed_parts, how="vertical")).join(params.lazy(), on=["id", "tf"])],
                            how="diagonal_relaxed")
    # per (id, tf) with a cut: bars from the one holding the first day at or after it (the
    # last bar when no day is that late)
    series = ("id", "tf")
    real = ~pl.col("_seed") if seeded else pl.lit(True)
    first_bar = pl.coalesce(
        pl.when(real & (pl.col("timestamp") >= pl.col("_since"))).then(pl.col("bar_seq")).min().over(series),
        pl.when(real).then(pl.col("bar_seq")).max().over(series))
    keep = pl.col("bar_seq") >= first_bar
    if seeded:
        # a seed in the first bar replaces that bar's days before the cut; one in an earlier
        # bar (the cut opens a new bar) is dropped
        seed_used = (pl.col("_seed") & (pl.col("bar_seq") == first_bar)).any().over(series)
        keep = pl.when(pl.col("_seed")).then(pl.col("bar_seq") == first_bar).otherwise(
            keep & ~(seed_used & (pl.col("timestamp") < pl.col("_since"))))
    rows = (
        assign(crossed, pl.col("_first"))
        .filter(pl.col("_since").is_null() | keep)
        .drop(*PARAM_COLUMNS, "_first", "_since", "_k_from")
    )
    # A query over a few thousand rows costs its fixed overhead, which is about half as large on
    # the in-memory engine; larger ones run faster streamed.
    engine = "in-memory" if work_rows <= SMALL_QUERY_ROWS else "auto"
    return _aggregate(rows.cache(), seeded).select([pl.col(c).cast(t) for c, t in schema.items()]).collect(
        engine=engine)


def _seed_rows(seeds: pl.DataFrame) -> pl.LazyFrame:
    """Seeds as rows of the engine's input: the running values in the day columns they feed
    (``open`` is the bar's first open, ``high``/``low`` and their instants the running
    extremes, ``volume`` the running total or NULL) and the rest in ``_s_*`` columns."""
    return seeds.lazy().select(
        "id", "tf", "timestamp", "day", "open", "high", "low", "time_high", "time_low", "volume",
        _seed=pl.lit(True),
        _s_time_open=pl.col("time_open"),
        _s_pos=pl.col("pos_in_bar"),
        _s_gap=pl.col("count_missing_days"),
        _s_cmds=pl.col("count_missing_days_start"),
        # the bar's first missing dates (all that a later row can list): the stored list
        # without its "…(+n)" tail
        _s_dates=pl.col("missing_days_where").str.replace(r",\.\.\.\(\+\d+\)$", "").str.split(",")
        .list.eval(pl.element().str.to_date("%Y-%m-%d")),
        _s_last=pl.col("last_missing_day"),
    )


def first_rows(
    days: pl.DataFrame, timeframes: Sequence[Timeframe], family: str, since: Mapping[str, dt.datetime | None] | None,
    seeded: Collection[str] = (),
) -> list[int]:
    """Per timeframe, the first row (its ``k``) of ``days`` that :func:`snapshot_batch` needs:
    the start of the bar holding that timeframe's ``since`` instant (the first row when it is
    built whole), or, for the timeframes in ``seeded`` (a seed stands for the bar's days before
    the cut), the first row the cut touches. A suffix of the history must reach back to that
    row (see :class:`SnapshotInput`)."""
    k0 = int(days["k"][0])
    out = []
    first_touched: dict[dt.datetime, int] = {}  # timeframes mostly share one cut
    # binary searches over numpy arrays: a polars search costs a query (~0.2 ms) each
    instants = days["timestamp"].dt.epoch("us").to_numpy()
    local_days = days["day"].to_physical().to_numpy()  # days since 1970-01-01
    for tf in timeframes:
        at = (since or {}).get(tf.tf)
        if at is None:
            out.append(k0)
            continue
        if at not in first_touched:  # the first row the cut touches (position in days)
            first_touched[at] = min(int(np.searchsorted(instants, epoch_us(at), "left")), days.height - 1)
        i_at = first_touched[at]
        if tf.tf in seeded:
            out.append(k0 + i_at)
        elif family == "rolling":
            out.append((k0 + i_at) // rolling_rows(tf) * rolling_rows(tf))
        else:
            out.append(k0 + int(np.searchsorted(local_days, local_days[i_at] - max_bar_days(tf), "left")))
    return out


def _aggregate(rows: pl.LazyFrame, seeded: bool = False) -> pl.LazyFrame:
    """The snapshot columns of ``rows`` (assigned days; with ``seeded``, also seed rows, which
    sort first in their bar and carry the running values of the days they stand for)."""
    rows = rows.sort("id", "tf", "bar_seq", "timestamp")
    # one integer per bar (rows are sorted by bar): a cheaper window key than (id, tf, bar_seq)
    rows = rows.with_columns(
        _bar=((pl.col("id") != pl.col("id").shift(1)) | (pl.col("tf") != pl.col("tf").shift(1))
              | (pl.col("bar_seq") != pl.col("bar_seq").shift(1)))
        .fill_null(True).cum_sum())
    bar = "_bar"
    vol_known = pl.col("volume").is_not_null().cum_sum().over(bar)
    # Extremum instants: the running max/min only moves on a strictly better value, so the
    # earliest row attaining it keeps its instant (earliest-tie rule).
    run_high = pl.col("high").cum_max().over(bar)
    run_low = pl.col("low").cum_min().over(bar)
    new_high = pl.col("high") > pl.col("high").cum_max().shift(1).over(bar).fill_null(float("-inf"))
    new_low = pl.col("low") < pl.col("low").cum_min().shift(1).over(bar).fill_null(float("inf"))
    first_day, time_open = pl.col("day"), pl.col("day_open")
    pos_in_bar = pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(bar)
    if seeded:  # a seed counts as the days it stands for
        first_day = pl.coalesce(pl.col("eff_start") + pl.duration(days=pl.col("_s_cmds")), first_day)
        time_open = pl.coalesce("_s_time_open", time_open)
        pos_in_bar = pl.coalesce("_s_pos", pl.lit(1, pl.Int32)).cum_sum().over(bar)
    out = rows.with_columns(
        first_day=first_day.first().over(bar),
        time_open=time_open.first().over(bar),
        open=pl.col("open").first().over(bar),
        high=run_high,
        low=run_low,
        time_high=pl.when(new_high).then("time_high").otherwise(None).forward_fill().over(bar),
        time_low=pl.when(new_low).then("time_low").otherwise(None).forward_fill().over(bar),
        volume=pl.when(vol_known > 0).then(pl.col("volume").fill_null(0.0).cum_sum().over(bar)).otherwise(None),
        pos_in_bar=pos_in_bar,
        prev_day=pl.col("day").shift(1).over(bar),
    )
    out = out.with_columns(eff_start=pl.coalesce("eff_start", "first_day"))
    # Missing dates revealed by each row: the run between the previous observed day of the bar
    # (or the effective start) and this day.
    gap_start = pl.coalesce(pl.col("prev_day") + pl.duration(days=1), pl.col("eff_start"))
    gap = (pl.col("day").cast(pl.Int32) - gap_start.cast(pl.Int32)).cast(pl.Int32)
    out = out.with_columns(
        _gap_from=gap_start,
        _gap=pl.coalesce("_s_gap", gap) if seeded else gap,  # a seed reveals all its days' gaps
    )
    out = out.with_columns(
        count_missing_days=pl.col("_gap").cum_sum().over(bar).cast(pl.Int32),
        count_missing_days_start=(pl.col("first_day").cast(pl.Int32) - pl.col("eff_start").cast(pl.Int32)).cast(pl.Int32),
    )
    out = _missing_lists(out, seeded)
    return out.with_columns(
        time_close=pl.col("timestamp"),
        last_ts_half_open=pl.col("timestamp") + ONE_MS,
        is_partial_end=~pl.col("canonical"),
        is_missing_days=pl.col("count_missing_days") > 0,
        count_days=pl.col("pos_in_bar"),
        count_days_remaining=pl.col("remaining"),
        count_missing_days_end=pl.lit(0, pl.Int32),
        count_missing_days_interior=pl.col("count_missing_days") - pl.col("count_missing_days_start"),
    )


def _missing_lists(out: pl.LazyFrame, seeded: bool = False) -> pl.LazyFrame:
    """``missing_days_where``, ``first_missing_day``, ``last_missing_day`` for every row.

    Only rows that reveal a gap ("events") get a value computed; later rows of the same bar
    carry it forward. Work is proportional to the number of listed dates, not rows. A seed's
    dates are the first ones its days revealed (all a later row can list) and its last date
    the last one.
    """
    bar = ["_bar"]
    dates = pl.date_ranges("_gap_from", pl.col("day") - pl.duration(days=1))
    last = pl.col("dates").list.last()
    if seeded:
        dates = pl.when(pl.col("_seed")).then(pl.col("_s_dates")).otherwise(dates)
        last = pl.coalesce("_s_last", last)
    events = out.filter(pl.col("_gap") > 0).select(
        *bar, "timestamp", "count_missing_days", *(["_s_last"] if seeded else []), dates=dates,
    )
    # The bar's missing dates in order; an event lists the first min(50, count) of them.
    listed = (
        events.select(*bar, "dates")
        .explode("dates")
        .sort(*bar, "dates")
        .with_columns(rank=pl.int_range(0, pl.len()).over(bar))
        .filter(pl.col("rank") < MAX_LISTED_MISSING)
    )
    strings = (
        events.select(*bar, "timestamp", "count_missing_days")
        .join(listed, on=bar)
        .filter(pl.col("rank") < pl.col("count_missing_days"))
        .sort(*bar, "timestamp", "rank")
        .group_by(*bar, "timestamp", maintain_order=True)
        .agg(
            _where=pl.col("dates").dt.to_string("%Y-%m-%d").str.join(","),
            _first=pl.col("dates").first(),
            _count=pl.col("count_missing_days").first(),
        )
        .with_columns(
            _where=pl.when(pl.col("_count") > MAX_LISTED_MISSING)
            .then(pl.col("_where") + pl.lit(",...(+") + (pl.col("_count") - MAX_LISTED_MISSING).cast(pl.String) + pl.lit(")"))
            .otherwise("_where")
        )
    )
    last = events.select(*bar, "timestamp", _last=last)
    joined = out.join(strings.drop("_count"), on=[*bar, "timestamp"], how="left").join(
        last, on=[*bar, "timestamp"], how="left"
    )
    return joined.sort(*bar, "timestamp").with_columns(
        missing_days_where=pl.col("_where").forward_fill().over(bar),
        first_missing_day=pl.col("_first").forward_fill().over(bar),
        last_missing_day=pl.col("_last").forward_fill().over(bar),
    )
