"""The six EMA refreshers: which table each writes, from which timeframes, periods and bar table."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ta_lab2.bars.families import Timeframe
from ta_lab2.db.tables import BAR_TABLES, EMA_TABLES
from ta_lab2.timeframes import V2_DEFAULT_PERIODS


@dataclass(frozen=True)
class EmaRefresher:
    name: str
    table: str
    kind: str  # "bar" (multi_tf), "v2", "dual" (cal / cal_anchor)
    tf_filter: str  # SQL over dim_timeframe columns
    bar_table: str | None  # canonical closes of the non-1D timeframes
    default_periods: tuple[int, ...] | None = None  # None: every dim_period row


def _cal_filter(family: str, scheme: str) -> str:
    return f"family = '{family}' AND (base_unit IN ('M', 'Y') OR calendar_scheme = '{scheme}')"


_DAILY = "family IN ('1d', 'rolling')"
REFRESHERS: dict[str, EmaRefresher] = {
    "multi_tf": EmaRefresher("multi_tf", EMA_TABLES["multi_tf"], "bar", _DAILY, BAR_TABLES["multi_tf"]),
    "v2": EmaRefresher("v2", EMA_TABLES["v2"], "v2", _DAILY, None, V2_DEFAULT_PERIODS),
    "cal_us": EmaRefresher("cal_us", EMA_TABLES["cal_us"], "dual", _cal_filter("cal", "US"), BAR_TABLES["cal_us"]),
    "cal_iso": EmaRefresher("cal_iso", EMA_TABLES["cal_iso"], "dual", _cal_filter("cal", "ISO"), BAR_TABLES["cal_iso"]),
    "cal_anchor_us": EmaRefresher("cal_anchor_us", EMA_TABLES["cal_anchor_us"], "dual",
                                  _cal_filter("cal_anchor", "US"), BAR_TABLES["cal_anchor_us"]),
    "cal_anchor_iso": EmaRefresher("cal_anchor_iso", EMA_TABLES["cal_anchor_iso"], "dual",
                                   _cal_filter("cal_anchor", "ISO"), BAR_TABLES["cal_anchor_iso"]),
}


def load_periods(conn: psycopg.Connection, refresher: EmaRefresher, periods: tuple[int, ...] | None,
                 schema: str = "public") -> tuple[int, ...]:
    if periods:
        return periods
    if periods is None and refresher.default_periods:
        return refresher.default_periods
    rows = conn.execute(sql.SQL("SELECT period FROM {} ORDER BY period").format(sql.Identifier(schema, "dim_period")))
    return tuple(r[0] for r in rows.fetchall())


def load_ema_timeframes(conn: psycopg.Connection, refresher: EmaRefresher, include_non_canonical: bool,
                        schema: str = "public") -> list[Timeframe]:
    canonical = "" if include_non_canonical else " AND is_canonical"
    rows = conn.execute(
        sql.SQL("SELECT tf, family, base_unit, tf_qty, tf_days_nominal, calendar_scheme FROM {t} WHERE "
                + refresher.tf_filter + canonical + " ORDER BY sort_order NULLS LAST, tf").format(
            t=sql.Identifier(schema, "dim_timeframe"))
    ).fetchall()
    return [Timeframe(*r) for r in rows]
