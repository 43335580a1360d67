"""Which bar a day belongs to, and what the bar expected — the only thing the five
multi-timeframe families differ in (spec 02 §2.3–§2.5). Pure polars expressions.

An assigner takes daily rows crossed with the timeframes to build (one row per (id, day,
timeframe): columns ``day`` (local date), ``k`` (0-based row index in the id's whole history)
and the timeframe's parameters from :func:`timeframe_params`), an expression for the row's id's
first day, and returns the rows that belong to a bar with these columns added:

* ``bar_seq``            int   — bar number (holes allowed for calendar families)
* ``eff_start``          date  — first date of ``expected`` (spec 02 §2.2)
* ``tf_days``            int
* ``canonical``          bool  — the row is on the bar's scheduled last day
* ``remaining``          int   — ``count_days_remaining``
* ``is_partial_start``   bool
* ``bar_anchor_offset``  int   — anchored families only (days from 1970-01-01 to window start)

All timeframes of a family are one set of column expressions (the timeframe's quantity, unit
and week scheme are columns), so building 18 timeframes costs one pass, not 18. Nothing
depends on rows other than the row itself, ``k`` and the first day, so the days may be any
suffix of the history, and of many ids at once (an incremental build passes only the bars it recomputes) and give the
same values as the whole history.

For rolling bars ``eff_start`` is the bar's first observed day, which the snapshot engine
knows; the assigner leaves it NULL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import polars as pl

EPOCH = dt.date(1970, 1, 1)
#: Reference week starts of the anchored weekly grid (spec 02 §2.5).
WEEK_REF = {"ISO": dt.date(1970, 1, 5), "US": dt.date(1970, 1, 4)}
#: polars weekday (1 = Monday … 7 = Sunday) on which a week starts.
WEEK_START_WEEKDAY = {"ISO": 1, "US": 7}
#: Base units each family understands.
UNITS = {"rolling": ("D", "W", "M", "Y"), "cal": ("W", "M", "Y"), "cal_anchor": ("W", "M", "Y")}


@dataclass(frozen=True)
class Timeframe:
    """The part of a ``dim_timeframe`` row the builders need."""

    tf: str
    family: str
    base_unit: str
    tf_qty: int
    tf_days_nominal: int
    calendar_scheme: str | None = None


def timeframe_params(timeframes: Sequence[Timeframe], family: str) -> pl.DataFrame:
    """One row per timeframe: ``tf`` and the parameters the assigners read as columns —
    ``_n`` (units per bar), ``_unit`` (W / M / Y), ``_rows`` (rows per rolling bar), ``_wsd``
    (weekday a week starts on) and ``_ref`` (the anchored weekly grid's reference day)."""
    for tf in timeframes:
        if tf.base_unit not in UNITS[family]:
            kind = {"cal": "calendar", "cal_anchor": "anchored"}.get(family, family)
            raise ValueError(f"{tf.tf}: {kind} timeframes need base unit {', '.join(UNITS[family])}, "
                             f"not {tf.base_unit!r}")
        if family == "cal_anchor" and tf.base_unit == "M" and 12 % tf.tf_qty:
            raise ValueError(f"{tf.tf}: anchored month windows need n dividing 12, not {tf.tf_qty}")
    schemes = [tf.calendar_scheme or "ISO" for tf in timeframes]
    return pl.DataFrame(
        {
            "tf": [tf.tf for tf in timeframes],
            "_n": [tf.tf_qty for tf in timeframes],
            "_unit": [tf.base_unit for tf in timeframes],
            "_rows": [rolling_rows(tf) for tf in timeframes],
            "_wsd": [WEEK_START_WEEKDAY[s] for s in schemes],
            "_ref": [(WEEK_REF[s] - EPOCH).days for s in schemes],
        },
        schema={"tf": pl.String, "_n": pl.Int32, "_unit": pl.String, "_rows": pl.Int32, "_wsd": pl.Int32,
                "_ref": pl.Int32},
    )


#: The parameter columns of :func:`timeframe_params` (dropped once bars are assigned).
PARAM_COLUMNS = ("_n", "_unit", "_rows", "_wsd", "_ref")


def _days(expr: pl.Expr) -> pl.Expr:
    """Integer days since 1970-01-01 of a date expression."""
    return expr.cast(pl.Int32)


def _date(days: pl.Expr) -> pl.Expr:
    return days.cast(pl.Int32).cast(pl.Date)


def _month_index(day: pl.Expr) -> pl.Expr:
    """Months since year 0: 12·year + month − 1."""
    return day.dt.year().cast(pl.Int32) * 12 + day.dt.month().cast(pl.Int32) - 1


def _month_start(index: pl.Expr) -> pl.Expr:
    """First day of the month with :func:`_month_index` ``index``."""
    return pl.date(index // 12, index % 12 + 1, 1)


def _week_start(day: pl.Expr) -> pl.Expr:
    """The start (weekday ``_wsd``: Monday for ISO, Sunday for US) of the week containing
    ``day``, in days."""
    back = (day.dt.weekday().cast(pl.Int32) - pl.col("_wsd")) % 7
    return _days(day) - back


def _by_unit(w: pl.Expr, m: pl.Expr, y: pl.Expr) -> pl.Expr:
    unit = pl.col("_unit")
    return pl.when(unit == "W").then(w).when(unit == "M").then(m).otherwise(y)


def rolling_rows(tf: Timeframe) -> int:
    """Observed days per rolling bar: bar ``b`` holds the id's rows ``k`` with ``k // n = b − 1``."""
    return tf.tf_qty if tf.base_unit == "D" else tf.tf_days_nominal


def assign_rolling(days: pl.LazyFrame, first: pl.Expr) -> pl.LazyFrame:
    n = pl.col("_rows")
    pos = pl.col("k") % n + 1
    return days.with_columns(
        bar_seq=(pl.col("k") // n + 1).cast(pl.Int32),
        eff_start=pl.lit(None, pl.Date),
        tf_days=n.cast(pl.Int32),
        canonical=pos == n,
        remaining=(n - pos).cast(pl.Int32),
        is_partial_start=pl.lit(False),
    )


def assign_calendar(days: pl.LazyFrame, first: pl.Expr) -> pl.LazyFrame:
    """Calendar-aligned blocks of n units from the id's first full unit (spec 02 §2.4)."""
    n = pl.col("_n")
    day = pl.col("day")
    # weeks: from the first week that starts on or after the first day
    first_ws = _week_start(first)
    anchor_w = pl.when(first_ws == _days(first)).then(first_ws).otherwise(first_ws + 7)
    idx_w = (_days(day) - anchor_w) // (7 * n)
    start_w = anchor_w + idx_w * 7 * n
    # months: from the first month that starts on or after the first day
    first_m = _month_index(first)
    anchor_m = pl.when(first.dt.day() == 1).then(first_m).otherwise(first_m + 1)
    idx_m = (_month_index(day) - anchor_m) // n
    start_mi = anchor_m + idx_m * n
    # years: from the first year that starts on or after the first day
    first_y = first.dt.year().cast(pl.Int32)
    anchor_y = pl.when((first.dt.month() == 1) & (first.dt.day() == 1)).then(first_y).otherwise(first_y + 1)
    idx_y = (day.dt.year().cast(pl.Int32) - anchor_y) // n
    start_yi = anchor_y + idx_y * n
    frame = days.with_columns(
        _idx=_by_unit(idx_w, idx_m, idx_y),
        _start=_by_unit(_date(start_w), _month_start(start_mi), pl.date(start_yi, 1, 1)),
        _end=_by_unit(_date(start_w + 7 * n - 1), _date(_days(_month_start(start_mi + n)) - 1),
                      pl.date(start_yi + n - 1, 12, 31)),
    ).filter(pl.col("_idx") >= 0)
    return frame.with_columns(
        bar_seq=(pl.col("_idx") + 1).cast(pl.Int32),
        eff_start=pl.col("_start"),
        tf_days=(_days(pl.col("_end")) - _days(pl.col("_start")) + 1).cast(pl.Int32),
        canonical=pl.col("day") == pl.col("_end"),
        remaining=(_days(pl.col("_end")) - _days(pl.col("day"))).cast(pl.Int32),
        is_partial_start=pl.lit(False),
    ).drop("_idx", "_start", "_end")


def _anchored_window(day: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(window start, window end, window index) of the global-grid window holding ``day``;
    the index grows with the day."""
    n = pl.col("_n")
    w = (_week_start(day) - pl.col("_ref")) // 7
    ws_w = pl.col("_ref") + 7 * n * (w // n)
    start_mi = day.dt.year().cast(pl.Int32) * 12 + (day.dt.month().cast(pl.Int32) - 1) // n * n
    start_yi = day.dt.year().cast(pl.Int32) // n * n
    return (
        _by_unit(_date(ws_w), _month_start(start_mi), pl.date(start_yi, 1, 1)),
        _by_unit(_date(ws_w + 7 * n - 1), _date(_days(_month_start(start_mi + n)) - 1),
                 pl.date(start_yi + n - 1, 12, 31)),
        _by_unit(w // n, start_mi // n, start_yi // n),
    )


def assign_anchored(days: pl.LazyFrame, first: pl.Expr) -> pl.LazyFrame:
    """Windows on a global grid; a window the data covers only partly is flagged (spec 02 §2.5)."""
    ws, we, widx = _anchored_window(pl.col("day"))
    first_widx = _anchored_window(first)[2]  # bar 1 is the window of the first day
    frame = days.with_columns(_ws=ws, _we=we, _widx=widx - first_widx)
    eff = pl.max_horizontal(pl.col("_ws"), first)
    return frame.with_columns(
        bar_seq=(pl.col("_widx") + 1).cast(pl.Int32),
        eff_start=eff,
        tf_days=(_days(pl.col("_we")) - _days(pl.col("_ws")) + 1).cast(pl.Int32),
        canonical=pl.col("day") == pl.col("_we"),
        remaining=(_days(pl.col("_we")) - _days(pl.col("day"))).cast(pl.Int32),
        is_partial_start=eff > pl.col("_ws"),
        bar_anchor_offset=_days(pl.col("_ws")),
    ).drop("_ws", "_we", "_widx")


def max_bar_days(tf: Timeframe) -> int:
    """An upper bound on the calendar days one bar of ``tf`` spans (rolling bars count rows,
    not days: see :func:`assign_rolling`)."""
    per_unit = {"D": 1, "W": 7, "M": 31, "Y": 366}.get(tf.base_unit, 366)
    return per_unit * tf.tf_qty


ASSIGNERS = {"rolling": assign_rolling, "cal": assign_calendar, "cal_anchor": assign_anchored}
