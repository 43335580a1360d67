"""Independent reference implementation ("oracle") of the bar tables of spec 02.

Written from the spec text only (02-bars.md §1–§3, 01-data-model.md "Time conventions" and
``dim_timeframe``). It shares no code with ``ta_lab2.bars`` and imports nothing from the
package: the point is to have a second, deliberately naive implementation that the builders can
be compared against. It is written for obviousness, not speed: plain Python loops over rows and
calendar days, one bar at a time.

Value conventions of every frame this module returns:

* instants are ``pandas.Timestamp`` in UTC (``datetime64[ns, UTC]`` columns; NULL is ``NaT``);
* dates (``first_missing_day``, …) are ``datetime.date`` objects, NULL is ``None``;
* nullable floats (``volume``, ``market_cap``) are object columns holding ``float`` or ``None``
  (SQL NULL and an IEEE NaN stay distinguishable);
* text columns hold ``str`` or ``None``.

Input conventions: SQL NULL is ``None`` / ``pandas.NA`` / ``NaT``. A float ``NaN`` is the IEEE
value NaN, *not* NULL — so build source frames with ``dtype=object`` columns when NULL and NaN
must be told apart (a float64 column would turn ``None`` into ``NaN``; for ``volume`` that
changes the outcome: NULL volume is fine, NaN volume is ``bad_volume``).

Interpretations taken where the spec leaves room are listed in ``INTERPRETATIONS`` below and
in the docstrings of the functions that apply them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Iterable

import pandas as pd

__all__ = [
    "BARS_1D_COLUMNS",
    "FAMILIES",
    "INTERPRETATIONS",
    "MULTI_TF_COLUMNS",
    "REJECT_COLUMNS",
    "REJECT_REASONS",
    "columns_for",
    "oracle_1d",
    "oracle_bars",
]

ONE_MS = pd.Timedelta(milliseconds=1)
ONE_DAY_INSTANT = pd.Timedelta(days=1)  # "− 1 day" on instants: 24 h (the DB session runs in UTC)
ONE_DAY = dt.timedelta(days=1)  # one calendar day on local dates
EPOCH = dt.date(1970, 1, 1)
ISO_WEEK_REF = dt.date(1970, 1, 5)  # a Monday (spec 02 §2.5)
US_WEEK_REF = dt.date(1970, 1, 4)  # a Sunday
MAX_MISSING_LISTED = 50

#: Reject reasons of the 1D builder, in the order they are checked (first failing wins).
REJECT_REASONS: tuple[str, ...] = (
    "open_not_finite",
    "close_not_finite",
    "non_positive_price",
    "bad_volume",
    "time_open_after_time_close",
    "duplicate_local_day",
)

FAMILIES: tuple[str, ...] = ("rolling", "cal_iso", "cal_us", "cal_anchor_iso", "cal_anchor_us")
ANCHORED_FAMILIES = frozenset({"cal_anchor_iso", "cal_anchor_us"})

INTERPRETATIONS: tuple[str, ...] = (
    "1D: is_partial_start = is_partial_end = is_missing_days = FALSE on every accepted row.",
    "1D: 'ts − 1 day + 1 ms' subtracts 24 h from the instant (not one local calendar day).",
    "1D: non_positive_price looks at non-NULL *finite* open/high/low/close only; a non-finite "
    "high/low (±inf, NaN) is repaired by step 4, never rejected.",
    "1D: duplicate_local_day is judged among rows that passed every other check; of those, the "
    "latest timestamp of the (id, local day) is accepted.",
    "1D: step 5 (timehigh outside the candle) replaces high but sets only repaired_timehigh; "
    "repaired_high is set only by step 4 or step 6 (likewise for low).",
    "1D: the candle interval of step 5 is closed: time_open <= timehigh <= time_close is inside.",
    "1D: step 6 changes prices only, never time_high / time_low.",
    "1D: volume / market_cap are copied as given (NULL stays NULL); a NaN market cap is not a "
    "reject reason and passes through as NaN.",
    "bars: the 1D table's time_open (COALESCE(timeopen, …)) is not used; bars use day_time_open.",
    "bars: time_open = day_time_open(F), computed over the id's accepted 1D series (rows before "
    "a calendar family's anchor_start still count as 'previous accepted row').",
    "bars: volume = left-to-right float sum in time order over W, NULLs skipped.",
    "bars: ties for max high / min low resolve to the earliest row of W (strict comparison).",
    "bars: missing_days_where lists at most 50 dates; with K > 0 more it ends with ',...(+K)'.",
    "cal: anchor_start is the first unit boundary on or after the id's first accepted day "
    "(an id whose first day is itself a boundary starts there).",
    "cal_anchor months require n | 12 (1, 2, 3, 6, 12); other n raise ValueError.",
    "cal_anchor years: windows start at years divisible by n (year 0 grid), e.g. 3Y: 2022–2024.",
)

BARS_1D_COLUMNS: tuple[str, ...] = (
    "id", "tf", "bar_seq", "timestamp", "time_open", "time_close", "time_high", "time_low",
    "open", "high", "low", "close", "volume", "market_cap",
    "is_partial_start", "is_partial_end", "is_missing_days",
    "repaired_timehigh", "repaired_timelow", "repaired_high", "repaired_low",
    "src_name", "src_file", "src_load_ts",
)  # fmt: skip
REJECT_COLUMNS: tuple[str, ...] = ("id", "timestamp", "bar_seq", "reason")
MULTI_TF_COLUMNS: tuple[str, ...] = (
    "id", "tf", "tf_days", "bar_seq", "time_open", "time_close", "time_high", "time_low",
    "open", "high", "low", "close", "volume", "market_cap", "timestamp", "last_ts_half_open",
    "pos_in_bar", "is_partial_start", "is_partial_end", "is_missing_days",
    "count_days", "count_days_remaining", "count_missing_days", "count_missing_days_start",
    "count_missing_days_end", "count_missing_days_interior",
    "missing_days_where", "first_missing_day", "last_missing_day",
)  # fmt: skip

# Column kinds, used to give the returned frames honest dtypes.
_KIND: dict[str, str] = {
    **{c: "int" for c in ("id", "bar_seq", "tf_days", "pos_in_bar", "count_days",
                          "count_days_remaining", "count_missing_days", "count_missing_days_start",
                          "count_missing_days_end", "count_missing_days_interior",
                          "bar_anchor_offset")},
    **{c: "instant" for c in ("timestamp", "time_open", "time_close", "time_high", "time_low",
                              "last_ts_half_open", "src_load_ts")},
    **{c: "float" for c in ("open", "high", "low", "close")},
    **{c: "float_null" for c in ("volume", "market_cap")},
    **{c: "bool" for c in ("is_partial_start", "is_partial_end", "is_missing_days",
                           "repaired_timehigh", "repaired_timelow", "repaired_high",
                           "repaired_low")},
    **{c: "date" for c in ("first_missing_day", "last_missing_day")},
    **{c: "text" for c in ("tf", "reason", "src_name", "src_file", "missing_days_where")},
}  # fmt: skip


def columns_for(family: str) -> tuple[str, ...]:
    """Columns of the multi-timeframe table of ``family`` (without ``ingested_at``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    return MULTI_TF_COLUMNS + (("bar_anchor_offset",) if family in ANCHORED_FAMILIES else ())


# --------------------------------------------------------------------------- value helpers
def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT


def _float(value: Any) -> float | None:
    """SQL double: None for NULL, else a Python float (NaN / ±inf preserved)."""
    return None if _is_null(value) else float(value)


def _instant(value: Any) -> pd.Timestamp | None:
    if _is_null(value):
        return None
    ts = pd.Timestamp(value)
    if ts is pd.NaT:
        return None
    if ts.tzinfo is None:
        raise ValueError(f"naive instant {value!r}: every instant must be tz-aware")
    return ts.tz_convert("UTC")


def _text(value: Any) -> str | None:
    if _is_null(value) or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def local_day(ts: pd.Timestamp, tz: str) -> dt.date:
    """Spec 01: the date of the instant in the configured timezone."""
    return ts.tz_convert(tz).date()


def _frame(records: list[dict[str, Any]], columns: Iterable[str]) -> pd.DataFrame:
    data: dict[str, pd.Series] = {}
    for col in columns:
        values = [r[col] for r in records]
        kind = _KIND[col]
        if kind == "int":
            data[col] = pd.Series(values, dtype="int64")
        elif kind == "bool":
            data[col] = pd.Series(values, dtype="bool")
        elif kind == "float":
            data[col] = pd.Series(values, dtype="float64")
        elif kind == "instant":
            data[col] = pd.Series(pd.to_datetime(values, utc=True), dtype="datetime64[ns, UTC]")
        else:  # float_null, date, text: keep Python objects (None = NULL)
            data[col] = pd.Series(values, dtype="object")
    return pd.DataFrame(data)


# --------------------------------------------------------------------------- 1D (spec 02 §1)
def _first_failing_reason(
    open_: float | None,
    high: float | None,
    low: float | None,
    close: float | None,
    volume: float | None,
    time_open: pd.Timestamp,
    time_close: pd.Timestamp,
) -> str | None:
    """The first failing check of spec 02 §1 step 3, except duplicate_local_day."""
    if not _finite(open_):
        return "open_not_finite"
    if not _finite(close):
        return "close_not_finite"
    for price in (open_, high, low, close):
        if _finite(price) and price <= 0:
            return "non_positive_price"
    if volume is not None and (not math.isfinite(volume) or volume < 0):
        return "bad_volume"
    if time_open > time_close:
        return "time_open_after_time_close"
    return None


def _repair(rec: dict[str, Any], time_open: pd.Timestamp, time_close: pd.Timestamp) -> dict[str, Any]:
    """Steps 4–7 of spec 02 §1 on an accepted row; returns the 1D columns that depend on them."""
    o = _float(rec["open"])
    c = _float(rec["close"])
    h = _float(rec["high"])
    lo = _float(rec["low"])
    assert o is not None and c is not None
    repaired_high = repaired_low = repaired_timehigh = repaired_timelow = False

    # Step 4: missing extremes.
    if not _finite(h):
        h = max(o, c)
        repaired_high = True
    if not _finite(lo):
        lo = min(o, c)
        repaired_low = True

    # Step 5: extreme instants.
    timehigh = _instant(rec["timehigh"])
    if timehigh is None:
        time_high = time_close
        repaired_timehigh = True
    elif timehigh < time_open or timehigh > time_close:
        h = max(o, c)
        time_high = time_close if c >= o else time_open
        repaired_timehigh = True
    else:
        time_high = timehigh

    timelow = _instant(rec["timelow"])
    if timelow is None:
        time_low = time_close
        repaired_timelow = True
    elif timelow < time_open or timelow > time_close:
        lo = min(o, c)
        time_low = time_close if c <= o else time_open
        repaired_timelow = True
    else:
        time_low = timelow

    # Step 6: consistency (high first, then low against the possibly repaired high).
    if h < max(o, c, lo):
        h = max(o, c, lo)
        repaired_high = True
    if lo > min(o, c, h):
        lo = min(o, c, h)
        repaired_low = True

    return {
        "time_high": time_high,
        "time_low": time_low,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "repaired_timehigh": repaired_timehigh,
        "repaired_timelow": repaired_timelow,
        "repaired_high": repaired_high,
        "repaired_low": repaired_low,
    }


@dataclass
class _SourceRow:
    rec: dict[str, Any]
    bar_seq: int
    ts: pd.Timestamp
    day: dt.date
    time_open: pd.Timestamp
    time_close: pd.Timestamp
    reason: str | None


def oracle_1d(source: pd.DataFrame, tz: str = "UTC") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference ``cmc_price_bars_1d`` (spec 02 §1) from ``cmc_price_histories7`` rows.

    Returns ``(accepted, rejects)``: ``accepted`` has :data:`BARS_1D_COLUMNS` (every column of the
    table but ``ingested_at``), sorted by ``(id, timestamp)``; ``rejects`` has
    :data:`REJECT_COLUMNS` ``(id, timestamp, bar_seq, reason)``, sorted the same way.

    Reasons are checked in :data:`REJECT_REASONS` order; ``duplicate_local_day`` is decided
    among the rows that passed every other check (project decision): per (id, local day) the
    one with the latest ``timestamp`` is accepted.
    """
    by_id: dict[int, list[dict[str, Any]]] = {}
    for rec in source.to_dict("records"):
        by_id.setdefault(int(rec["id"]), []).append(rec)

    accepted: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for ident in sorted(by_id):
        recs = sorted(by_id[ident], key=lambda r: _instant(r["timestamp"]))
        rows: list[_SourceRow] = []
        for k, rec in enumerate(recs):
            ts = _instant(rec["timestamp"])
            if ts is None:
                raise ValueError(f"source row of id {ident} without timestamp")
            # Step 1: rank among ALL source rows of the id (rejects keep their number).
            bar_seq = k + 1
            # Step 2.
            time_open = _instant(rec["timeopen"])
            if time_open is None:
                time_open = ts - ONE_DAY_INSTANT + ONE_MS
            time_close = _instant(rec["timeclose"])
            if time_close is None:
                time_close = ts
            # Step 3 (all reasons but duplicate_local_day).
            reason = _first_failing_reason(
                _float(rec["open"]), _float(rec["high"]), _float(rec["low"]), _float(rec["close"]),
                _float(rec["volume"]), time_open, time_close,
            )  # fmt: skip
            rows.append(_SourceRow(rec, bar_seq, ts, local_day(ts, tz), time_open, time_close, reason))

        # duplicate_local_day, among the rows still valid: the latest timestamp of a day wins.
        latest_of_day: dict[dt.date, pd.Timestamp] = {}
        for row in rows:
            if row.reason is None:
                if row.day not in latest_of_day or row.ts > latest_of_day[row.day]:
                    latest_of_day[row.day] = row.ts
        for row in rows:
            if row.reason is None and row.ts != latest_of_day[row.day]:
                row.reason = "duplicate_local_day"

        for row in rows:
            if row.reason is not None:
                rejects.append({"id": ident, "timestamp": row.ts, "bar_seq": row.bar_seq, "reason": row.reason})
                continue
            rec = row.rec
            accepted.append(
                {
                    "id": ident,
                    "tf": "1D",
                    "bar_seq": row.bar_seq,
                    "timestamp": row.ts,
                    "time_open": row.time_open,
                    "time_close": row.time_close,
                    **_repair(rec, row.time_open, row.time_close),
                    "volume": _float(rec["volume"]),
                    "market_cap": _float(rec["marketcap"]),
                    "is_partial_start": False,
                    "is_partial_end": False,
                    "is_missing_days": False,
                    "src_name": _text(rec.get("name")),
                    "src_file": _text(rec.get("source_file")),
                    "src_load_ts": _instant(rec.get("load_ts")),
                }
            )
    return _frame(accepted, BARS_1D_COLUMNS), _frame(rejects, REJECT_COLUMNS)


# --------------------------------------------------------------------------- calendar helpers
def _week_start_weekday(scheme: str) -> int:
    """Python weekday (Mon = 0 … Sun = 6) on which a week starts: ISO Monday, US Sunday."""
    return {"ISO": 0, "US": 6}[scheme]


def _is_unit_boundary(d: dt.date, unit: str, scheme: str) -> bool:
    if unit == "W":
        return d.weekday() == _week_start_weekday(scheme)
    if unit == "M":
        return d.day == 1
    if unit == "Y":
        return d.month == 1 and d.day == 1
    raise ValueError(f"not a calendar unit: {unit!r}")


def _first_month_after(d: dt.date, months: int) -> dt.date:
    """The 1st of the month ``months`` months after the month of ``d``."""
    index = d.year * 12 + (d.month - 1) + months
    return dt.date(index // 12, index % 12 + 1, 1)


def _block_end(start: dt.date, unit: str, n: int) -> dt.date:
    """Last day of the block of ``n`` units beginning on the unit boundary ``start``."""
    if unit == "W":
        return start + dt.timedelta(days=7 * n - 1)
    if unit == "M":
        return _first_month_after(start, n) - ONE_DAY
    if unit == "Y":
        return dt.date(start.year + n, 1, 1) - ONE_DAY
    raise ValueError(f"not a calendar unit: {unit!r}")


def _consecutive_blocks(first_start: dt.date, unit: str, n: int, last_day: dt.date) -> list[tuple[dt.date, dt.date]]:
    """Blocks of ``n`` units, back to back, the first beginning on ``first_start``, until one
    contains ``last_day``."""
    blocks = []
    start = first_start
    while start <= last_day:
        end = _block_end(start, unit, n)
        blocks.append((start, end))
        start = end + ONE_DAY
    return blocks


def _anchored_first_window_start(first_day: dt.date, unit: str, n: int, scheme: str) -> dt.date:
    """Start of the global-grid window (spec 02 §2.5) that contains ``first_day``, by search."""
    if unit == "W":
        ref = ISO_WEEK_REF if scheme == "ISO" else US_WEEK_REF
        step = dt.timedelta(days=7 * n)
        start = ref
        while start > first_day:
            start -= step
        while start + step <= first_day:
            start += step
        return start
    if unit == "M":
        if 12 % n != 0:
            raise ValueError(f"anchored month windows need n dividing 12, got n={n}")
        for month in range(1, 13, n):
            start = dt.date(first_day.year, month, 1)
            if start <= first_day <= _block_end(start, "M", n):
                return start
        raise AssertionError("unreachable")
    if unit == "Y":
        year = first_day.year
        while year % n != 0:
            year -= 1
        return dt.date(year, 1, 1)
    raise ValueError(f"not a calendar unit: {unit!r}")


# --------------------------------------------------------------------------- pandas cross-checks
def _resample_labels(start: dt.date, last: dt.date, rule: str, **kwargs: Any) -> dict[dt.date, dt.date]:
    """Every date of [start, last] -> the label (a date) of its pandas resample bin."""
    index = pd.date_range(pd.Timestamp(start), pd.Timestamp(last), freq="D")
    labels: dict[dt.date, dt.date] = {}
    for label, group in pd.Series(0, index=index).resample(rule, **kwargs):
        for ts in group.index:
            labels[ts.date()] = label.date()
    return labels


def _pandas_crosscheck(
    family: str,
    unit: str,
    n: int,
    scheme: str,
    first_day: dt.date,
    last_day: dt.date,
    blocks: list[tuple[dt.date, dt.date]],
) -> None:
    """Re-derive the windows with pandas (resample / offsets / periods) and assert they agree
    with the loop-built ``blocks``. Raises AssertionError on any disagreement (an oracle bug)."""
    if not blocks:
        return
    anchored = family in ANCHORED_FAMILIES
    span_start = first_day if anchored else blocks[0][0]
    if span_start > last_day:
        return
    window_of: dict[dt.date, tuple[dt.date, dt.date]] = {}
    for ws, we in blocks:
        d = ws
        while d <= we:
            window_of[d] = (ws, we)
            d += ONE_DAY

    expected: dict[dt.date, dt.date] | None = None  # date -> pandas' label
    label_is_end = False
    if not anchored:
        roll = {
            "W": pd.offsets.Week(weekday=_week_start_weekday(scheme)),
            "M": pd.offsets.MonthBegin(),
            "Y": pd.offsets.YearBegin(),
        }[unit]
        anchor_start = roll.rollforward(pd.Timestamp(first_day)).date()
        assert anchor_start == blocks[0][0], (family, unit, n, first_day, anchor_start, blocks[0])
    if unit == "W" and n == 1:
        expected = _resample_labels(span_start, last_day, "W-SUN" if scheme == "ISO" else "W-SAT")
        label_is_end = True
    elif unit == "W":
        origin = ISO_WEEK_REF if scheme == "ISO" else US_WEEK_REF
        if not anchored:
            origin = blocks[0][0]
        expected = _resample_labels(span_start, last_day, f"{7 * n}D", origin=pd.Timestamp(origin))
    elif unit == "M" and not anchored:
        expected = _resample_labels(span_start, last_day, f"{n}MS")
    elif unit == "Y" and not anchored:
        expected = _resample_labels(span_start, last_day, f"{n}YS")
    elif unit == "M" and n in (1, 3, 12):
        expected = _resample_labels(span_start, last_day, {1: "MS", 3: "QS", 12: "YS"}[n])
    elif unit == "M":  # 2M, 6M on the global grid: month ordinal (months since 1970-01) // n
        expected = {}
        d = span_start
        while d <= last_day:
            ordinal = pd.Period(d, freq="M").ordinal
            expected[d] = pd.Period(ordinal=(ordinal // n) * n, freq="M").start_time.date()
            d += ONE_DAY
    elif unit == "Y" and n == 1:
        expected = _resample_labels(span_start, last_day, "YS")
    if expected is None:
        return  # nY_CAL_ANCHOR with n > 1: no independent pandas rule; loops only
    for d, label in expected.items():
        ws, we = window_of[d]
        got = we if label_is_end else ws
        assert got == label, f"oracle/pandas disagree for {family} {n}{unit} on {d}: {got} vs {label}"


# --------------------------------------------------------------------------- windows per family
@dataclass(frozen=True)
class _Window:
    bar_seq: int
    expected_start: dt.date | None  # first date of `expected`; None = the day of F (rolling)
    scheduled_end: dt.date | None  # the bar's scheduled last day; None = rolling (by count)
    tf_days: int
    is_partial_start: bool
    bar_anchor_offset: int | None


def _assign_windows(days: list[dt.date], family: str, tf: dict[str, Any]) -> list[_Window | None]:
    """The window (bar) of each observed day of one id, or None when the day is in no bar."""
    unit = tf["base_unit"]
    n = int(tf["tf_qty"])
    if family == "rolling":
        if unit != "D":
            raise ValueError(f"rolling tf {tf['tf']!r} must have base_unit 'D', got {unit!r}")
        size = int(tf["tf_days_nominal"])
        return [_Window(k // size + 1, None, None, size, False, None) for k in range(len(days))]

    if unit not in ("W", "M", "Y"):
        raise ValueError(f"calendar tf {tf['tf']!r} must have base_unit W, M or Y, got {unit!r}")
    scheme = "ISO" if family.endswith("_iso") else "US"
    first_day, last_day = days[0], days[-1]
    anchored = family in ANCHORED_FAMILIES
    if anchored:
        first_start = _anchored_first_window_start(first_day, unit, n, scheme)
    else:
        first_start = first_day
        while not _is_unit_boundary(first_start, unit, scheme):
            first_start += ONE_DAY
    blocks = _consecutive_blocks(first_start, unit, n, last_day)
    _pandas_crosscheck(family, unit, n, scheme, first_day, last_day, blocks)

    windows: list[_Window | None] = []
    b = 0
    for d in days:
        if d < first_start:
            windows.append(None)  # before the id's first full unit (cal only)
            continue
        while blocks[b][1] < d:
            b += 1
        ws, we = blocks[b]
        assert ws <= d <= we
        if anchored:
            eff = max(ws, first_day)
            windows.append(_Window(b + 1, eff, we, (we - ws).days + 1, eff > ws, (ws - EPOCH).days))
        else:
            windows.append(_Window(b + 1, ws, we, (we - ws).days + 1, False, None))
    return windows


# --------------------------------------------------------------------------- snapshots (§2.2)
@dataclass(frozen=True)
class _Day:
    ts: pd.Timestamp
    day: dt.date
    time_open: pd.Timestamp  # day_time_open of this row (spec 01)
    time_high: pd.Timestamp
    time_low: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float | None
    market_cap: float | None


def _missing_text(missing: list[dt.date]) -> str | None:
    if not missing:
        return None
    text = ",".join(d.isoformat() for d in missing[:MAX_MISSING_LISTED])  # YYYY-MM-DD
    extra = len(missing) - MAX_MISSING_LISTED
    if extra > 0:
        text += f",...(+{extra})"
    return text


def _bar_snapshots(ident: int, tf: str, window: _Window, rows: list[_Day], anchored: bool) -> list[dict[str, Any]]:
    """One snapshot row per observed day of one bar (spec 02 §2.2).

    Aggregates are carried forward row by row (the same values as recomputing them over
    W = rows[:pos]): max/min keep the earliest row on ties, volume is summed left to right.
    """
    first = rows[0]
    start = window.expected_start if window.expected_start is not None else first.day
    out: list[dict[str, Any]] = []
    high = low = None
    time_high = time_low = None
    volume: float | None = None
    missing: list[dt.date] = []
    previous_day = start - ONE_DAY
    missing_text: str | None = None  # = _missing_text(missing), recomputed when `missing` grows
    missing_text_len = 0
    for pos, r in enumerate(rows, start=1):
        if high is None or r.high > high:
            high, time_high = r.high, r.time_high
        if low is None or r.low < low:
            low, time_low = r.low, r.time_low
        if r.volume is not None:
            volume = r.volume if volume is None else volume + r.volume
        d = previous_day + ONE_DAY
        while d < r.day:  # every date skipped since the previous observed day is missing
            missing.append(d)
            d += ONE_DAY
        previous_day = r.day
        if len(missing) != missing_text_len:  # the text only depends on the list, which only grows
            missing_text, missing_text_len = _missing_text(missing), len(missing)

        expected_size = (r.day - start).days + 1
        assert pos + len(missing) == expected_size
        run_at_start = 0
        while run_at_start < len(missing) and missing[run_at_start] == start + dt.timedelta(days=run_at_start):
            run_at_start += 1
        if window.scheduled_end is None:  # rolling: by count
            remaining = window.tf_days - pos
            canonical = pos == window.tf_days
        else:
            remaining = (window.scheduled_end - r.day).days
            canonical = r.day == window.scheduled_end
        row = {
            "id": ident,
            "tf": tf,
            "tf_days": window.tf_days,
            "bar_seq": window.bar_seq,
            "time_open": first.time_open,
            "time_close": r.ts,
            "time_high": time_high,
            "time_low": time_low,
            "open": first.open,
            "high": high,
            "low": low,
            "close": r.close,
            "volume": volume,
            "market_cap": r.market_cap,
            "timestamp": r.ts,
            "last_ts_half_open": r.ts + ONE_MS,
            "pos_in_bar": pos,
            "is_partial_start": window.is_partial_start,
            "is_partial_end": not canonical,
            "is_missing_days": len(missing) > 0,
            "count_days": pos,
            "count_days_remaining": remaining,
            "count_missing_days": len(missing),
            "count_missing_days_start": run_at_start,
            "count_missing_days_end": 0,
            "count_missing_days_interior": len(missing) - run_at_start,
            "missing_days_where": missing_text,
            "first_missing_day": missing[0] if missing else None,
            "last_missing_day": missing[-1] if missing else None,
        }
        if anchored:
            row["bar_anchor_offset"] = window.bar_anchor_offset
        out.append(row)
    return out


def _daily_series(daily_1d: pd.DataFrame, tz: str) -> dict[int, list[_Day]]:
    """Accepted 1D rows per id, in time order, with day_time_open (spec 01)."""
    by_id: dict[int, list[dict[str, Any]]] = {}
    for rec in daily_1d.to_dict("records"):
        by_id.setdefault(int(rec["id"]), []).append(rec)
    series: dict[int, list[_Day]] = {}
    for ident, recs in by_id.items():
        recs.sort(key=lambda r: _instant(r["timestamp"]))
        days: list[_Day] = []
        previous_ts: pd.Timestamp | None = None
        for rec in recs:
            ts = _instant(rec["timestamp"])
            day_time_open = (ts - ONE_DAY_INSTANT if previous_ts is None else previous_ts) + ONE_MS
            days.append(
                _Day(
                    ts=ts,
                    day=local_day(ts, tz),
                    time_open=day_time_open,
                    time_high=_instant(rec["time_high"]),
                    time_low=_instant(rec["time_low"]),
                    open=float(rec["open"]),
                    high=float(rec["high"]),
                    low=float(rec["low"]),
                    close=float(rec["close"]),
                    volume=_float(rec["volume"]),
                    market_cap=_float(rec["market_cap"]),
                )
            )
            previous_ts = ts
        local_days = [d.day for d in days]
        if len(set(local_days)) != len(local_days):
            raise ValueError(f"id {ident}: several 1D rows on one local day ({tz}); not a valid 1D table")
        series[ident] = days
    return series


def oracle_bars(
    daily_1d: pd.DataFrame, family: str, tf_rows: list[dict[str, Any]], tz: str = "UTC"
) -> pd.DataFrame:
    """Reference snapshot rows of one multi-timeframe table (spec 02 §2) from accepted 1D rows.

    ``daily_1d`` needs the columns id, timestamp, time_high, time_low, open, high, low, close,
    volume, market_cap (e.g. the first frame of :func:`oracle_1d`). ``family`` is one of
    :data:`FAMILIES`; ``tf_rows`` are dicts with ``tf, base_unit, tf_qty, tf_days_nominal``
    (the caller selects the rows of the table). Returns :func:`columns_for` ``(family)``, sorted
    by ``(id, tf, bar_seq, time_close)``.
    """
    columns = columns_for(family)
    anchored = family in ANCHORED_FAMILIES
    series = _daily_series(daily_1d, tz)
    records: list[dict[str, Any]] = []
    for ident in sorted(series):
        days = series[ident]
        for tf in tf_rows:
            windows = _assign_windows([d.day for d in days], family, tf)
            bars: dict[int, tuple[_Window, list[_Day]]] = {}
            for day, window in zip(days, windows):
                if window is None:
                    continue
                if window.bar_seq not in bars:
                    bars[window.bar_seq] = (window, [])
                assert bars[window.bar_seq][0] == window
                bars[window.bar_seq][1].append(day)
            for bar_seq in sorted(bars):
                window, rows = bars[bar_seq]
                records.extend(_bar_snapshots(ident, str(tf["tf"]), window, rows, anchored))
    records.sort(key=lambda r: (r["id"], r["tf"], r["bar_seq"], r["time_close"]))
    return _frame(records, columns)
