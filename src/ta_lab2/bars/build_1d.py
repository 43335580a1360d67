"""The 1D builder's work unit: validate source rows into daily bars and rejects (spec 02 §1),
replacing each changed id's rows from the local day of its first change."""

from __future__ import annotations

import datetime as dt
from typing import Sequence
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.bars.changes import log_deletions, rows_from
from ta_lab2.bars.daily import BARS_1D_SCHEMA, REJECTS_1D_COLUMNS, SOURCE_READ_SCHEMA, validate_days
from ta_lab2.db.bulk import array_params, copy_frame, table_ref
from ta_lab2.db.tables import BARS_1D, BARS_1D_REJECTS, SOURCE_TABLE, state_table
from ta_lab2.load.source_schema import UTC_US
from ta_lab2.work.units import IdResult


def build_1d(conn: psycopg.Connection, ids: Sequence[int], tz: str, full: bool, schema: str) -> list[IdResult]:
    """Build the 1D rows of ``ids``: find each id's first change, read its source rows from
    there on, then one transaction that replaces each changed id's rows from the start of the
    local day of its first change (all of them when it has no state, another tz or ``full``).
    Validation is per row and per local day, and ``bar_seq`` counts the source rows before,
    so the rows from a local day's start on are all an incremental build reads."""
    source_t, bars_t, rejects_t = (sql.Identifier(schema, t) for t in (SOURCE_TABLE, BARS_1D, BARS_1D_REJECTS))
    states = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        sql.SQL("SELECT id, tz, watermark_load_ts, source_rows FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(schema, state_table(BARS_1D))), (list(ids),)).fetchall()}
    # id -> None (replace everything of the id) or the instant rows are replaced from
    cuts: dict[int, dt.datetime | None] = {}
    incremental = [i for i in ids if not full and i in states and states[i][0] == tz]
    for ident in ids:
        if ident not in incremental:
            cuts[ident] = None
    if incremental:
        # per id: its first source row loaded since the watermark, how many were, and its row
        # count (index probes: (id, load_ts), then the primary key)
        changed: dict[int, dt.datetime | None] = {}
        suspects = []  # ids that may have lost source rows
        for ident, first, n_changed, n_rows in conn.execute(
            sql.SQL("SELECT u.id, min(x.\"timestamp\"), count(x.\"timestamp\"), "
                    "(SELECT count(*) FROM {s} WHERE id = u.id) FROM unnest(%s::int[], %s::timestamptz[]) AS u(id, wm) "
                    "LEFT JOIN LATERAL (SELECT \"timestamp\" FROM {s} WHERE id = u.id AND load_ts > u.wm OFFSET 0) x "
                    "ON true GROUP BY u.id").format(s=source_t),
                (incremental, [states[i][1] for i in incremental])).fetchall():
            changed[ident] = first
            # rows loaded since are new or revised: when the count grew by all of them, none
            # was revised and none removed (source_rows is the count at the last build)
            if states[ident][2] is None or n_rows != states[ident][2] + n_changed:
                suspects.append(ident)
        # rows of the 1D or rejects table whose source row is gone
        deleted = dict(conn.execute(
            sql.SQL(
                """
                SELECT t.id, min(t."timestamp") FROM (
                    SELECT id, "timestamp" FROM {b} WHERE id = ANY(%(ids)s)
                    UNION ALL SELECT id, "timestamp" FROM {r} WHERE id = ANY(%(ids)s)) t
                WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE s.id = t.id AND s."timestamp" = t."timestamp")
                GROUP BY t.id
                """
            ).format(b=bars_t, r=rejects_t, s=source_t),
            {"ids": suspects},
        ).fetchall()) if suspects else {}
        for ident in incremental:
            first = min((t for t in (changed.get(ident), deleted.get(ident)) if t is not None), default=None)
            if first is not None:
                # Start of the local day of the first change: a change can flip
                # duplicate_local_day for earlier rows of the same day.
                local = first.astimezone(ZoneInfo(tz)).date()
                cuts[ident] = dt.datetime.combine(local, dt.time(), tzinfo=ZoneInfo(tz)).astimezone(dt.timezone.utc)
    work = [i for i in ids if i in cuts]
    results = {i: IdResult(i, "unchanged") for i in ids if i not in cuts}
    if work:
        cut_frame = pl.DataFrame({"id": work, "_cut": [cuts[i] for i in work]}, schema={"id": pl.Int32, "_cut": UTC_US})
        tail, before = rows_from(conn, source_t, SOURCE_READ_SCHEMA, cut_frame.rename({"_cut": "from_ts"}))
        accepted, rejects = validate_days(tail, tz, before)
        with conn.transaction():
            removed = _delete_from_cuts(conn, bars_t, cut_frame, returning=True)
            log_deletions(conn, schema, [(i, r[1]) for i, r in removed.items()])
            _delete_from_cuts(conn, rejects_t, cut_frame)
            copy_frame(conn, table_ref(BARS_1D, schema), accepted.select(list(BARS_1D_SCHEMA)))
            copy_frame(conn, table_ref(BARS_1D_REJECTS, schema), rejects.select(list(REJECTS_1D_COLUMNS)))
            _write_1d_state(conn, schema, work, tz)
        read = dict(tail.group_by("id").len().iter_rows())
        sources = {i: before.get(i, 0) + read.get(i, 0) for i in work}
        inserted = dict(accepted.group_by("id").len().iter_rows())
        rejected = dict(rejects.group_by("id").len().iter_rows())
        for i in work:
            mode = "full" if cuts[i] is None else "incremental"
            results[i] = IdResult(i, mode if sources.get(i) else "empty", inserted.get(i, 0),
                                  removed.get(i, (0, None))[0], rejected.get(i, 0))
    return [results[i] for i in ids]


def _delete_from_cuts(conn: psycopg.Connection, table: sql.Composable, cuts: pl.DataFrame,
                      returning: bool = False) -> dict[int, tuple[int, dt.datetime]]:
    """Delete the rows of each id of ``cuts`` at or after its ``_cut`` (all when NULL): one
    primary-key range probe per id (OFFSET 0 keeps the planner from turning the probes into a
    join over every row). With ``returning``: per id, (rows deleted, earliest instant deleted)."""
    stmt = sql.SQL(
        "WITH d AS (DELETE FROM {t} e WHERE e.ctid = ANY(ARRAY("
        "SELECT x.ctid FROM unnest(%b, %b) AS c(id, cut) CROSS JOIN LATERAL (SELECT ctid FROM {t} "
        "WHERE id = c.id AND \"timestamp\" >= coalesce(c.cut, '-infinity') OFFSET 0) x)) "
        "RETURNING e.id, e.\"timestamp\") SELECT id, count(*), min(\"timestamp\") FROM d GROUP BY id").format(t=table)
    rows = conn.execute(stmt, array_params(conn, cuts.select("id", "_cut"), ("int4", "timestamptz"))).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows} if returning else {}


def _write_1d_state(conn: psycopg.Connection, schema: str, ids: Sequence[int], tz: str) -> None:
    """Upsert the 1D state of ``ids`` from the source and the 1D table as they now are."""
    conn.execute(
        sql.SQL(
            """
            INSERT INTO {st} (id, tz, watermark_load_ts, source_rows, first_day, last_day, last_bar_seq,
                              last_time_close, updated_at)
            SELECT u.id, %(tz)s, (SELECT max(load_ts) FROM {s} WHERE id = u.id),
                   (SELECT count(*) FROM {s} WHERE id = u.id),
                   ((SELECT min("timestamp") FROM {b} WHERE id = u.id) AT TIME ZONE %(tz)s)::date,
                   ((SELECT max("timestamp") FROM {b} WHERE id = u.id) AT TIME ZONE %(tz)s)::date,
                   (SELECT max(bar_seq) FROM {b} WHERE id = u.id),
                   (SELECT max(time_close) FROM {b} WHERE id = u.id), now()
            FROM unnest(%(ids)s::int[]) AS u(id)
            ON CONFLICT (id) DO UPDATE SET tz = EXCLUDED.tz, watermark_load_ts = EXCLUDED.watermark_load_ts,
                source_rows = EXCLUDED.source_rows, first_day = EXCLUDED.first_day, last_day = EXCLUDED.last_day,
                last_bar_seq = EXCLUDED.last_bar_seq, last_time_close = EXCLUDED.last_time_close,
                updated_at = EXCLUDED.updated_at
            """
        ).format(st=sql.Identifier(schema, state_table(BARS_1D)), b=sql.Identifier(schema, BARS_1D), s=sql.Identifier(schema, SOURCE_TABLE)),
        {"ids": list(ids), "tz": tz},
    )
