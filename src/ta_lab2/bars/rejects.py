"""What the 1D builder refused: the first rejects of a run, with their reasons (every reject
stays in ``cmc_price_bars_1d_rejects`` with the original values)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from psycopg import sql

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.tables import BARS_1D_REJECTS

#: the query that lists them all, for the user to run
ALL_REJECTS = f'SELECT id, "timestamp", reason FROM {BARS_1D_REJECTS} ORDER BY id, "timestamp"'


@dataclass(frozen=True)
class Reject:
    id: int
    day: dt.date
    reason: str


def rejects_since(target: Target, since: dt.datetime, limit: int = 5, schema: str = "public") -> list[Reject]:
    """The first ``limit`` source rows the 1D builder rejected at or after ``since`` (by id and
    day); a reject's ``rejected_at`` is the start of the transaction that wrote it."""
    with connect(target, autocommit=True) as conn:
        rows = conn.execute(sql.SQL(
            'SELECT id, "timestamp", reason FROM {} WHERE rejected_at >= %s ORDER BY id, "timestamp" LIMIT %s').format(
            sql.Identifier(schema, BARS_1D_REJECTS)), (since, limit)).fetchall()
    return [Reject(i, ts.astimezone(dt.timezone.utc).date(), reason) for i, ts, reason in rows]
