"""The six bar builders: which table each writes and which ``dim_timeframe`` rows feed it."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ta_lab2.bars.families import Timeframe
from ta_lab2.db.tables import BAR_TABLES


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
