"""Source rows -> validated daily bars (spec 02 §1). Pure: polars in, polars out.

Per source row of an id, in this order:

1. ``bar_seq`` = 1-based rank of its ``timestamp`` among *all* source rows of the id (a reject
   keeps its number, so it never renumbers later days).
2. ``time_open = COALESCE(timeopen, timestamp − 1 day + 1 ms)``,
   ``time_close = COALESCE(timeclose, timestamp)``.
3. Rejects — the first failing reason of :data:`REJECT_REASONS`, judged on the source values.
   ``duplicate_local_day`` is judged among the rows that pass the other checks: the latest
   valid row of a local day is kept (docs/decisions.md).
4. Missing extremes (NULL / non-finite high or low) -> ``max/min(open, close)``, flagged.
5. Extreme instants: NULL ``timehigh`` -> ``time_close``; a ``timehigh`` outside
   ``[time_open, time_close]`` makes the high untrustworthy -> ``max(open, close)`` at
   ``time_close`` (close ≥ open) or ``time_open``. Low symmetrically.
6. Consistency: ``high ≥ max(open, close, low)``, then ``low ≤ min(open, close, high)``.
"""

from __future__ import annotations

from typing import Mapping

import polars as pl

from ta_lab2.load.source_schema import SOURCE_SCHEMA, UTC_US

#: The fixed, documented list of reject reasons, in the order they are checked.
REJECT_REASONS: tuple[tuple[str, str], ...] = (
    ("open_not_finite", "open is NULL, NaN or infinite"),
    ("close_not_finite", "close is NULL, NaN or infinite"),
    ("non_positive_price", "a non-NULL open, high, low or close is ≤ 0"),
    ("bad_volume", "volume is negative, NaN or infinite"),
    ("time_open_after_time_close", "time_open (timeopen, or timestamp − 1 day + 1 ms) is after time_close"),
    ("duplicate_local_day", "a later valid row of the same id falls on the same local day"),
)

ONE_DAY_MINUS_MS = pl.duration(days=1) - pl.duration(milliseconds=1)

#: A bar's instants and OHLCV values, in table order (every bar table has them, contiguously).
BAR_VALUES: dict[str, pl.DataType] = {
    "time_open": UTC_US,
    "time_close": UTC_US,
    "time_high": UTC_US,
    "time_low": UTC_US,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "market_cap": pl.Float64(),
}

#: Columns of ``cmc_price_bars_1d`` (without ``ingested_at``), in table order.
BARS_1D_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "tf": pl.String(),
    "bar_seq": pl.Int32(),
    "timestamp": UTC_US,
    **BAR_VALUES,
    "is_partial_start": pl.Boolean(),
    "is_partial_end": pl.Boolean(),
    "is_missing_days": pl.Boolean(),
    "repaired_timehigh": pl.Boolean(),
    "repaired_timelow": pl.Boolean(),
    "repaired_high": pl.Boolean(),
    "repaired_low": pl.Boolean(),
    "src_name": pl.String(),
    "src_file": pl.String(),
    "src_load_ts": UTC_US,
}

#: Source columns as read for the 1D builder (the source table plus ``load_ts``).
SOURCE_READ_SCHEMA: dict[str, pl.DataType] = {**SOURCE_SCHEMA, "load_ts": UTC_US}

#: Columns of ``cmc_price_bars_1d_rejects`` (without ``rejected_at``).
REJECTS_1D_COLUMNS: tuple[str, ...] = (*SOURCE_READ_SCHEMA, "bar_seq", "reason")


def _finite(c: str) -> pl.Expr:
    return pl.col(c).is_not_null() & pl.col(c).is_finite()


def local_day(ts: pl.Expr, tz: str) -> pl.Expr:
    """The calendar date of an instant in time zone ``tz`` (spec 01 ``local_day``)."""
    return ts.dt.convert_time_zone(tz).dt.date()


def validate_days(source: pl.DataFrame, tz: str = "UTC",
                  rows_before: Mapping[int, int] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split source rows (:data:`SOURCE_READ_SCHEMA`, any ids) into accepted 1D bars
    (:data:`BARS_1D_SCHEMA`) and rejects (:data:`REJECTS_1D_COLUMNS`), both sorted by id, ts.

    ``source`` holds each id's rows from the start of a local day on (every check is per row
    or per local day); ``rows_before`` counts, per id, its source rows before them (none when
    absent), which ``bar_seq`` numbers first."""
    offset = pl.col("id").replace_strict(dict(rows_before or {}), default=0, return_dtype=pl.Int32)
    s = source.sort("id", "timestamp").with_columns(
        bar_seq=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("id") + offset,
        time_open=pl.coalesce("timeopen", pl.col("timestamp") - ONE_DAY_MINUS_MS),
        time_close=pl.coalesce("timeclose", "timestamp"),
        _day=local_day(pl.col("timestamp"), tz),
    )
    prices = ("open", "high", "low", "close")
    non_positive = pl.any_horizontal([_finite(c) & (pl.col(c) <= 0) for c in prices])
    bad_volume = pl.col("volume").is_not_null() & (pl.col("volume").is_nan() | pl.col("volume").is_infinite() | (pl.col("volume") < 0))
    checks = [
        ("open_not_finite", ~_finite("open")),
        ("close_not_finite", ~_finite("close")),
        ("non_positive_price", non_positive),
        ("bad_volume", bad_volume),
        ("time_open_after_time_close", pl.col("time_open") > pl.col("time_close")),
    ]
    reason = pl.lit(None, pl.String)
    for name, failed in reversed(checks):
        reason = pl.when(failed.fill_null(False)).then(pl.lit(name)).otherwise(reason)
    s = s.with_columns(_reason=reason)
    # Among valid rows, the latest of each local day wins.
    latest = pl.col("timestamp") == pl.col("timestamp").filter(pl.col("_reason").is_null()).max().over("id", "_day")
    s = s.with_columns(
        _reason=pl.when(pl.col("_reason").is_null() & ~latest).then(pl.lit("duplicate_local_day")).otherwise("_reason")
    )
    rejects = s.filter(pl.col("_reason").is_not_null()).select(
        *SOURCE_READ_SCHEMA, "bar_seq", pl.col("_reason").alias("reason")
    )
    return _repair(s.filter(pl.col("_reason").is_null())), rejects


def _repair(ok: pl.DataFrame) -> pl.DataFrame:
    """Steps 4–7 of spec 02 §1 on accepted rows."""
    hi_oc = pl.max_horizontal("open", "close")
    lo_oc = pl.min_horizontal("open", "close")
    out = ok.with_columns(
        repaired_high=~_finite("high"),
        repaired_low=~_finite("low"),
        high=pl.when(_finite("high")).then("high").otherwise(hi_oc),
        low=pl.when(_finite("low")).then("low").otherwise(lo_oc),
    )
    th_missing = pl.col("timehigh").is_null()
    th_outside = (pl.col("timehigh") < pl.col("time_open")) | (pl.col("timehigh") > pl.col("time_close"))
    tl_missing = pl.col("timelow").is_null()
    tl_outside = (pl.col("timelow") < pl.col("time_open")) | (pl.col("timelow") > pl.col("time_close"))
    out = out.with_columns(
        repaired_timehigh=th_missing | th_outside.fill_null(False),
        repaired_timelow=tl_missing | tl_outside.fill_null(False),
        high=pl.when(th_outside.fill_null(False)).then(hi_oc).otherwise("high"),
        time_high=pl.when(th_missing)
        .then("time_close")
        .when(th_outside)
        .then(pl.when(pl.col("close") >= pl.col("open")).then("time_close").otherwise("time_open"))
        .otherwise("timehigh"),
        low=pl.when(tl_outside.fill_null(False)).then(lo_oc).otherwise("low"),
        time_low=pl.when(tl_missing)
        .then("time_close")
        .when(tl_outside)
        .then(pl.when(pl.col("close") <= pl.col("open")).then("time_close").otherwise("time_open"))
        .otherwise("timelow"),
    )
    need_high = pl.col("high") < pl.max_horizontal("open", "close", "low")
    out = out.with_columns(
        high=pl.when(need_high).then(pl.max_horizontal("open", "close", "low")).otherwise("high"),
        repaired_high=pl.col("repaired_high") | need_high,
    )
    need_low = pl.col("low") > pl.min_horizontal("open", "close", "high")
    out = out.with_columns(
        low=pl.when(need_low).then(pl.min_horizontal("open", "close", "high")).otherwise("low"),
        repaired_low=pl.col("repaired_low") | need_low,
    )
    return out.select(
        pl.col("id").cast(pl.Int32),
        pl.lit("1D").alias("tf"),
        "bar_seq",
        "timestamp",
        "time_open",
        "time_close",
        "time_high",
        "time_low",
        "open",
        "high",
        "low",
        "close",
        "volume",
        pl.col("marketcap").alias("market_cap"),
        pl.lit(False).alias("is_partial_start"),
        pl.lit(False).alias("is_partial_end"),
        pl.lit(False).alias("is_missing_days"),
        "repaired_timehigh",
        "repaired_timelow",
        "repaired_high",
        "repaired_low",
        pl.col("name").alias("src_name"),
        pl.col("source_file").alias("src_file"),
        pl.col("load_ts").alias("src_load_ts"),
    )
