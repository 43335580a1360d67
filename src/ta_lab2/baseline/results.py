"""The frozen result objects of a comparison. Text, JSON and HTML are renderings of these;
pass/fail is decided here, never by parsing a rendering.

Instants are ISO-8601 strings (UTC offset included); series are dicts of their key columns
(``id``, ``tf``, ``period``) in key order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ta_lab2.baseline.comparison_utils import CRITICAL, SEVERITIES, WARNING


@dataclass(frozen=True)
class ColumnStats:
    """One compared column. Counts are exact over every row present on both sides;
    ``mean_abs_diff``/``std_abs_diff`` are over ``TableComparison.stats_rows`` rows."""

    column: str
    kind: str  # "float" | "exact"
    rtol: float | None
    atol: float | None
    cells_compared: int
    mismatches: int
    null_mismatches: int
    critical: int
    warning: int
    info: int
    max_abs_diff: float | None
    mean_abs_diff: float | None
    std_abs_diff: float | None
    max_rel_diff: float | None


@dataclass(frozen=True)
class Cause:
    """Why a series differs: ``kind`` is "source" (its data changed under it: see the root),
    "inherited" (a row it is computed from differs: ``parent``), "computation" (its inputs are
    identical, its output is not) or "undetermined" (its input table was not compared).
    ``root`` indexes ``CaptureResult.root_causes``."""

    kind: str
    root: int | None
    parent: dict[str, Any] | None = None  # {"table", "series", "ts"}: the first differing input row


@dataclass(frozen=True)
class SeriesDivergence:
    """A series with a failing difference (a value outside tolerance or a one-sided row)."""

    series: dict[str, Any]
    first_ts: str
    last_ts: str
    count: int  # differing rows of the series (one-sided ones included)
    persists_to_end: bool
    max_rel_diff: float | None = None  # largest finite relative difference of its close / ema
    cause: Cause | None = None


@dataclass(frozen=True)
class Difference:
    key: dict[str, Any]
    column: str
    snapshot: str | None
    rebuilt: str | None
    abs_diff: float | None
    rel_diff: float | None
    severity: str
    reason: str | None = None


@dataclass(frozen=True)
class SeriesCount:
    series: dict[str, Any]
    rows_snapshot: int
    rows_rebuilt: int
    first_ts_snapshot: str | None
    last_ts_snapshot: str | None
    first_ts_rebuilt: str | None
    last_ts_rebuilt: str | None


@dataclass(frozen=True)
class DailyChange:
    """A run of adjacent differing rows of one id in the 1D table, with what its source says
    about them: the raw material of the root causes. ``kind``: "source_revised" (the source row it was built from was loaded
    or updated after the snapshot's row was built), "source_added", "source_removed", or
    "computation" (built from the same source row, yet different)."""

    id: int
    ts: str  # the run's first instant
    kind: str
    changes: tuple[tuple[str, Any, Any], ...] = ()  # one-day runs: (column, snapshot value, rebuilt value)
    last_ts: str | None = None
    rows: int = 1  # adjacent 1D rows of the run


@dataclass(frozen=True)
class TableComparison:
    table: str
    snapshot: str
    rebuilt: str
    rows_snapshot: int
    rows_rebuilt: int
    only_in_snapshot: int
    only_in_rebuilt: int
    rows_compared: int  # rows present on both sides: every one of them is checked
    cells_compared: int
    mismatching_rows: int  # rows with a CRITICAL or WARNING cell
    severity_counts: dict[str, int]
    columns: tuple[ColumnStats, ...]
    divergences: tuple[SeriesDivergence, ...]
    top_differences: tuple[Difference, ...]
    series_count_mismatches: tuple[SeriesCount, ...]
    stats_rows: int  # rows behind mean/std of differences (all of them unless sampled)
    sampled: bool
    differing_series: int = 0  # series with any difference at all, INFO included
    daily_changes: tuple[DailyChange, ...] = ()  # 1D table only
    error: str | None = None

    @property
    def match_rate(self) -> float:
        """The share of the table's keys whose rows match, in [0, 1]: ``1 − (mismatching rows +
        one-sided rows) / (rows compared + one-sided rows)`` — a row only one side has is a
        CRITICAL difference, so a rebuild that lost rows never shows 100 % (docs/decisions.md).
        1 for two empty tables."""
        one_sided = self.only_in_snapshot + self.only_in_rebuilt
        keys = self.rows_compared + one_sided
        if keys == 0:
            return 1.0
        return max(0.0, min(1.0, 1.0 - (self.mismatching_rows + one_sided) / keys))

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.severity_counts.get(CRITICAL, 0) == 0
            and self.severity_counts.get(WARNING, 0) == 0
            and self.rows_snapshot == self.rows_rebuilt
        )

    @property
    def worst(self) -> str:
        if self.error:
            return CRITICAL
        for s in SEVERITIES:
            if self.severity_counts.get(s):
                return s
        return "OK"


def failed_comparison(table: str, snapshot: str, rebuilt: str, error: str, sampled: bool) -> TableComparison:
    """The result of a table whose comparison could not run: CRITICAL, with the error."""
    return TableComparison(table, snapshot, rebuilt, 0, 0, 0, 0, 0, 0, 0, {CRITICAL: 1, WARNING: 0, "INFO": 0},
                           (), (), (), (), 0, sampled, error=error)


def summarize_comparison(tables: Sequence[TableComparison]) -> dict[str, Any]:
    """Overall verdict and totals: PASS iff every table passed."""
    totals = {s: sum(t.severity_counts.get(s, 0) for t in tables) for s in SEVERITIES}
    return {
        "verdict": "PASS" if tables and all(t.passed for t in tables) else "FAIL",
        "tables": len(tables),
        "tables_passed": sum(t.passed for t in tables),
        "tables_failed": [t.table for t in tables if not t.passed],
        "severity_counts": totals,
        "rows_compared": sum(t.rows_compared for t in tables),
        "cells_compared": sum(t.cells_compared for t in tables),
        "one_sided_rows": sum(t.only_in_snapshot + t.only_in_rebuilt for t in tables),
        "divergent_series": sum(len(t.divergences) for t in tables),
        "sampled": any(t.sampled for t in tables),
    }


@dataclass(frozen=True)
class RootCause:
    """One change that explains divergences. ``kind``: "source_revised", "source_added",
    "source_removed" (of one id's source days) or "computation" (of one table). ``explains``:
    differing rows per table attributed to it (through inherited series too)."""

    kind: str
    table: str  # where it originates: the source table, or the table whose computation changed
    id: int | None
    first_ts: str
    last_ts: str
    days: int  # source days (source kinds) or divergent series of the table itself (computation)
    changes: tuple[tuple[str, Any, Any], ...] = ()  # one source day: (column, before, after)
    explains: dict[str, int] = field(default_factory=dict)
    series: int = 0  # divergent series attributed to it, over every table

    @property
    def rows(self) -> int:
        return sum(self.explains.values())
