"""The timeframe and period dimensions (spec 01, ``dim_timeframe`` / ``dim_period``).

:func:`seed_timeframes` produces the rows the code seeds; builders never use this list
directly — they read ``dim_timeframe`` (a user may add rows such as ``11D``).
``tf_days_min/max`` are computed from the real calendar (brute force over 1900–2399, a whole
Gregorian cycle and more), not typed in.
"""

from __future__ import annotations

import calendar
from dataclasses import asdict, dataclass
from functools import lru_cache

DEFAULT_PERIODS: tuple[int, ...] = (6, 9, 10, 12, 14, 17, 20, 21, 26, 30, 50, 52, 77, 100, 200, 252, 365)
V2_DEFAULT_PERIODS: tuple[int, ...] = (9, 10, 21, 50, 100, 200)


@dataclass(frozen=True)
class TimeframeRow:
    """One ``dim_timeframe`` row as the code seeds it (every column). The builders read the part
    they need from the table as a :class:`ta_lab2.bars.families.Timeframe`."""

    tf: str
    label: str
    family: str
    base_unit: str  # D, W, M, Y
    tf_qty: int
    tf_days_nominal: int
    calendar_scheme: str | None  # US / ISO for week timeframes, else None
    calendar_anchor: bool
    allow_partial_start: bool
    allow_partial_end: bool
    tf_days_min: int
    tf_days_max: int
    is_canonical: bool
    sort_order: int
    description: str

    def as_row(self) -> dict[str, object]:
        return asdict(self)


_CAL_YEARS = range(1900, 2400)


@lru_cache(maxsize=None)
def month_span_bounds(n: int) -> tuple[int, int]:
    """Min and max length in days of ``n`` consecutive calendar months."""
    lengths = [calendar.monthrange(y, m)[1] for y in _CAL_YEARS for m in range(1, 13)]
    spans = [sum(lengths[i : i + n]) for i in range(len(lengths) - n)]
    return min(spans), max(spans)


@lru_cache(maxsize=None)
def year_span_bounds(n: int) -> tuple[int, int]:
    """Min and max length in days of ``n`` consecutive calendar years."""
    lengths = [366 if calendar.isleap(y) else 365 for y in _CAL_YEARS]
    spans = [sum(lengths[i : i + n]) for i in range(len(lengths) - n)]
    return min(spans), max(spans)


_ROLLING_CANONICAL = (2, 3, 4, 5, 7, 10, 14, 21, 28, 30, 45, 60, 90, 180, 365)
_ROLLING_EXTRA = (15, 20, 25, 40, 42, 50, 56, 63, 70, 84, 100, 105, 120, 140, 150, 200, 252, 270, 300, 360, 500, 730, 1000)
_WEEKS = (1, 2, 3, 4, 6, 8, 10)
_CAL_MONTHS = (1, 2, 3, 6, 9, 12)
_ANCHOR_MONTHS = (1, 2, 3, 6, 12)
_YEARS = tuple(range(1, 11))
_UNIT_WORD = {"D": "day", "W": "week", "M": "month", "Y": "year"}


def _month_nominal(n: int) -> int:
    return 360 if n == 12 else 30 * n


def seed_timeframes() -> list[TimeframeRow]:
    """Every row the code seeds into ``dim_timeframe``, in ``sort_order``."""
    rows: list[TimeframeRow] = []

    def add(tf: str, family: str, unit: str, n: int, nominal: int, scheme: str | None,
            bounds: tuple[int, int], canonical: bool) -> None:
        anchor = family == "cal_anchor"
        lo, hi = bounds
        words = f"{n} {_UNIT_WORD[unit]}{'s' if n > 1 else ''}"
        kind = {
            "1d": "validated daily bar",
            "rolling": f"rolling bar of {n} consecutive observed days",
            "cal": f"calendar-aligned bar of {words}" + (f" ({scheme} weeks)" if scheme else ""),
            "cal_anchor": f"calendar-anchored bar of {words}" + (f" ({scheme} weeks)" if scheme else ""),
        }[family]
        rows.append(
            TimeframeRow(
                tf=tf, label=words, family=family, base_unit=unit, tf_qty=n, tf_days_nominal=nominal,
                calendar_scheme=scheme, calendar_anchor=anchor, allow_partial_start=anchor,
                allow_partial_end=family != "1d", tf_days_min=1 if anchor else lo, tf_days_max=hi,
                is_canonical=canonical, sort_order=len(rows) + 1, description=kind,
            )
        )

    add("1D", "1d", "D", 1, 1, None, (1, 1), True)
    for n in sorted(_ROLLING_CANONICAL + _ROLLING_EXTRA):
        add(f"{n}D", "rolling", "D", n, n, None, (n, n), n in _ROLLING_CANONICAL)
    for family, tag, months in (("cal", "CAL", _CAL_MONTHS), ("cal_anchor", "CAL_ANCHOR", _ANCHOR_MONTHS)):
        for scheme in ("US", "ISO"):
            for n in _WEEKS:
                add(f"{n}W_{tag}_{scheme}", family, "W", n, 7 * n, scheme, (7 * n, 7 * n), True)
        for n in months:
            add(f"{n}M_{tag}", family, "M", n, _month_nominal(n), None, month_span_bounds(n), True)
        for n in _YEARS:
            add(f"{n}Y_{tag}", family, "Y", n, 365 * n, None, year_span_bounds(n), n <= 5)
    return rows
