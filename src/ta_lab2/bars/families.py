"""Which bar a day belongs to, and what the bar expected — the only thing the five
multi-timeframe families differ in (spec 02 §2.3–§2.5). Pure polars expressions.

Every assigner takes the daily frame of ONE id (columns ``day`` (local date) and ``k``
(0-based row index), sorted by time) and one timeframe, and returns the rows that belong to a
bar with these columns added:

* ``bar_seq``            int   — bar number (holes allowed for calendar families)
* ``eff_start``          date  — first date of ``expected`` (spec 02 §2.2)
* ``tf_days``            int
* ``canonical``          bool  — the row is on the bar's scheduled last day
* ``remaining``          int   — ``count_days_remaining``
* ``is_partial_start``   bool
* ``bar_anchor_offset``  int   — anchored families only (days from 1970-01-01 to window start)

For rolling bars ``eff_start`` is the bar's first observed day, which the snapshot engine
knows; the assigner leaves it NULL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

EPOCH = dt.date(1970, 1, 1)
#: Reference week starts of the anchored weekly grid (spec 02 §2.5).
WEEK_REF = {"ISO": dt.date(1970, 1, 5), "US": dt.date(1970, 1, 4)}
#: polars weekday (1 = Monday … 7 = Sunday) on which a week starts.
WEEK_START_WEEKDAY = {"ISO": 1, "US": 7}


@dataclass(frozen=True)
class Timeframe:
    """The part of a ``dim_timeframe`` row the builders need."""

    tf: str
    family: str
    base_unit: str
    tf_qty: int
    tf_days_nominal: int
    calendar_scheme: str | None = None


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


def _week_start(day: pl.Expr, scheme: str) -> pl.Expr:
    """The start (Monday for ISO, Sunday for US) of the week containing ``day``, in days."""
    back = (day.dt.weekday().cast(pl.Int32) - WEEK_START_WEEKDAY[scheme]) % 7
    return _days(day) - back


def assign_rolling(days: pl.DataFrame, tf: Timeframe) -> pl.DataFrame:
    n = tf.tf_qty if tf.base_unit == "D" else tf.tf_days_nominal
    pos = pl.col("k") % n + 1
    return days.with_columns(
        bar_seq=(pl.col("k") // n + 1).cast(pl.Int32),
        eff_start=pl.lit(None, pl.Date),
        tf_days=pl.lit(n, pl.Int32),
        canonical=pos == n,
        remaining=(n - pos).cast(pl.Int32),
        is_partial_start=pl.lit(False),
    )


def assign_calendar(days: pl.DataFrame, tf: Timeframe) -> pl.DataFrame:
    """Calendar-aligned blocks of n units from the id's first full unit (spec 02 §2.4)."""
    n, unit = tf.tf_qty, tf.base_unit
    day = pl.col("day")
    first = day.min()
    if unit == "W":
        scheme = tf.calendar_scheme or "ISO"
        first_ws = _week_start(first, scheme)
        anchor = pl.when(first_ws == _days(first)).then(first_ws).otherwise(first_ws + 7)
        offset = _days(day) - anchor
        idx = offset // (7 * n)
        start = anchor + idx * 7 * n
        frame = days.with_columns(_idx=idx, _start=_date(start), _end=_date(start + 7 * n - 1))
    elif unit == "M":
        first_m = _month_index(first)
        anchor = pl.when(first.dt.day() == 1).then(first_m).otherwise(first_m + 1)
        idx = (_month_index(day) - anchor) // n
        start_m = anchor + idx * n
        frame = days.with_columns(
            _idx=idx, _start=_month_start(start_m), _end=_date(_days(_month_start(start_m + n)) - 1)
        )
    elif unit == "Y":
        first_y = first.dt.year().cast(pl.Int32)
        anchor = pl.when((first.dt.month() == 1) & (first.dt.day() == 1)).then(first_y).otherwise(first_y + 1)
        idx = (day.dt.year().cast(pl.Int32) - anchor) // n
        start_y = anchor + idx * n
        frame = days.with_columns(_idx=idx, _start=pl.date(start_y, 1, 1), _end=pl.date(start_y + n - 1, 12, 31))
    else:
        raise ValueError(f"{tf.tf}: calendar timeframes need base unit W, M or Y, not {unit!r}")
    frame = frame.filter(pl.col("_idx") >= 0)
    return frame.with_columns(
        bar_seq=(pl.col("_idx") + 1).cast(pl.Int32),
        eff_start=pl.col("_start"),
        tf_days=(_days(pl.col("_end")) - _days(pl.col("_start")) + 1).cast(pl.Int32),
        canonical=pl.col("day") == pl.col("_end"),
        remaining=(_days(pl.col("_end")) - _days(pl.col("day"))).cast(pl.Int32),
        is_partial_start=pl.lit(False),
    ).drop("_idx", "_start", "_end")


def assign_anchored(days: pl.DataFrame, tf: Timeframe) -> pl.DataFrame:
    """Windows on a global grid; a window the data covers only partly is flagged (spec 02 §2.5)."""
    n, unit = tf.tf_qty, tf.base_unit
    day = pl.col("day")
    if unit == "W":
        scheme = tf.calendar_scheme or "ISO"
        ref = (WEEK_REF[scheme] - EPOCH).days
        w = (_week_start(day, scheme) - ref) // 7
        ws = ref + 7 * n * (w // n)
        frame = days.with_columns(_ws=_date(ws), _we=_date(ws + 7 * n - 1), _widx=w // n)
    elif unit == "M":
        if 12 % n:
            raise ValueError(f"{tf.tf}: anchored month windows need n dividing 12, not {n}")
        start_m = day.dt.year().cast(pl.Int32) * 12 + (day.dt.month().cast(pl.Int32) - 1) // n * n
        frame = days.with_columns(
            _ws=_month_start(start_m), _we=_date(_days(_month_start(start_m + n)) - 1), _widx=start_m // n
        )
    elif unit == "Y":
        start_y = day.dt.year().cast(pl.Int32) // n * n
        frame = days.with_columns(_ws=pl.date(start_y, 1, 1), _we=pl.date(start_y + n - 1, 12, 31), _widx=start_y // n)
    else:
        raise ValueError(f"{tf.tf}: anchored timeframes need base unit W, M or Y, not {unit!r}")
    first_day = pl.col("day").min()
    eff = pl.max_horizontal(pl.col("_ws"), first_day)
    return frame.with_columns(
        bar_seq=(pl.col("_widx") - pl.col("_widx").min() + 1).cast(pl.Int32),
        eff_start=eff,
        tf_days=(_days(pl.col("_we")) - _days(pl.col("_ws")) + 1).cast(pl.Int32),
        canonical=pl.col("day") == pl.col("_we"),
        remaining=(_days(pl.col("_we")) - _days(pl.col("day"))).cast(pl.Int32),
        is_partial_start=eff > pl.col("_ws"),
        bar_anchor_offset=_days(pl.col("_ws")),
    ).drop("_ws", "_we", "_widx")


ASSIGNERS = {"rolling": assign_rolling, "cal": assign_calendar, "cal_anchor": assign_anchored}
