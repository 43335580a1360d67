"""Writing an EMA work unit's rows and state: one DELETE, one COPY and one state update per
batch of ids, whatever the number of series. A state row keeps its series' watermark, newest
row and ends (docs/decisions.md, "EMA series continue from their stored ends"), the values the resume path steps from."""

from __future__ import annotations

import datetime as dt
from typing import Mapping, Sequence

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.bulk import array_params, copy_frame, table_ref
from ta_lab2.db.tables import state_table
from ta_lab2.emas.changes import SERIES_SCHEMA, Changes, Inputs, RefreshOptions, ends_columns, state_schema
from ta_lab2.emas.registry import REFRESHERS, EmaRefresher
from ta_lab2.frames import tuples_frame
from ta_lab2.load.source_schema import UTC_US
from ta_lab2.work.units import IdResult, stored_before


def write_rows(conn: psycopg.Connection, options: RefreshOptions, changed: Sequence[Changes], rows: pl.DataFrame,
           inputs: Inputs, has_grid: Mapping[int, bool]) -> dict[int, IdResult]:
    """One DELETE, one COPY and one state upsert for the ``changed`` ids, whose replaced series'
    new rows are ``rows``, whatever the number of series. Rows are located by one primary-key
    range probe per series and deleted by their ctid (OFFSET 0 keeps each probe a nested loop:
    pulled up into a join, the planner hashes every row of the ids — 170 ms instead of 1 ms
    per id)."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    table = sql.Identifier(s, refresher.table)
    series = [(c.id, tf, period, at) for c in changed for tf, period, at in c.replaced]
    # Nothing to delete in a bulk rebuild's empty table, nor for a series whose newest stored
    # row (its state's last_ts, written with its rows) is before its cut — a new day usually
    # adds a row to every series — or whose state says it has no row.
    probed = [] if options.bulk else [
        r for r in series if not stored_before(inputs.last_ts.get(r[:3]), r[3])
        and (inputs.has_rows(r[:3]) or not inputs.has_state(r[:3]))]
    deleted: dict[int, int] = {}
    if probed:
        deleted = dict(conn.execute(
            sql.SQL(
                "WITH d AS (DELETE FROM {t} e WHERE e.ctid = ANY(ARRAY("
                "SELECT x.ctid FROM unnest(%b, %b, %b, %b) AS c(id, tf, period, cut) "
                "CROSS JOIN LATERAL (SELECT ctid FROM {t} WHERE id = c.id AND tf = c.tf AND period = c.period "
                "AND ts >= coalesce(c.cut, '-infinity') OFFSET 0) x)) RETURNING e.id) "
                "SELECT id, count(*) FROM d GROUP BY id"
            ).format(t=table),
            array_params(conn, tuples_frame(probed, {**SERIES_SCHEMA, "cut": UTC_US}),
                         ("int4", "text", "int4", "timestamptz")),
        ).fetchall())
    if rows.height:
        copy_frame(conn, table_ref(refresher.table, s), rows, freeze=options.bulk)
    write_state(conn, refresher, s, [(c.id, tf, period, at, c.watermark) for c in changed
                                      for tf, period, at in c.replaced], rows, inputs.state, options.bulk)
    counts = dict(rows.group_by("id").len().iter_rows()) if rows.height else {}
    out = {}
    for c in changed:
        mode = "full" if options.full or c.id not in inputs.state_ids else "incremental"
        out[c.id] = IdResult(c.id, mode if has_grid.get(c.id, True) else "empty", counts.get(c.id, 0),
                             deleted.get(c.id, 0))
    return out


def write_state(conn: psycopg.Connection, refresher: EmaRefresher, schema: str,
                 series: list[tuple[int, str, int, dt.datetime | None, dt.datetime | None]], rows: pl.DataFrame,
                 old: pl.DataFrame, bulk: bool = False) -> None:
    """Upsert the state of ``series`` (id, tf, period, cut, watermark), whose rows from their
    cut (None: all) to their end are ``rows`` (in time order within a series), with the
    series' newest row and ends (:data:`ta_lab2.db.schema.EMA_ENDS`).

    Those come from its newest row in ``rows`` and its newest canonical row there. A series
    with no canonical row there keeps its old canonical end when that is before the cut; one
    with no row there keeps its old newest row and ends when they are before the cut. Where
    neither settles them (rows removed from the end), the table is probed for them — so every
    series with rows leaves with usable ends."""
    kind = refresher.kind
    ends = ends_columns(kind)
    values = [c for c in ends if c != "canon_ts"]
    key = list(SERIES_SCHEMA)
    frame = tuples_frame(series, {**SERIES_SCHEMA, "cut": UTC_US, "watermark_ingested_at": UTC_US})
    source = {c: c.removeprefix("last_").removeprefix("canon_") for c in values}
    if rows.height:
        canonical = ~pl.col("roll")
        new = rows.group_by(key).agg(
            pl.col("ts").last().alias("last_ts"),
            *(pl.col(source[c]).last().alias(c) for c in values if c.startswith("last_")),
            pl.col("ts").filter(canonical).last().alias("canon_ts"),
            *(pl.col(source[c]).filter(canonical).last().alias(c) for c in values if c.startswith("canon_")),
        )
    else:
        new = pl.DataFrame(schema={k: v for k, v in state_schema(kind).items() if k != "watermark_ingested_at"})
    was = old.select(*key, *(pl.col(c).alias(f"old_{c}") for c in ("last_ts", *ends)), old_present=pl.lit(True))
    frame = frame.join(new, on=key, how="left", maintain_order="left").join(was, on=key, how="left",
                                                                             maintain_order="left")
    cut = pl.col("cut")
    written = pl.col("last_ts").is_not_null()
    # nothing written: the old ends stand when the old rows end before the cut (none removed)
    keep_last = (~written & cut.is_not_null() & (pl.col("old_last_ts") < cut)).fill_null(False)
    probe_last = (~written & cut.is_not_null() & (pl.col("old_last_ts") >= cut)).fill_null(False)
    old_canon_kept = (cut.is_not_null() & (pl.col("old_canon_ts") < cut)).fill_null(False)
    no_canon = written & pl.col("canon_ts").is_null()
    frame = frame.with_columns(
        *(pl.when(keep_last).then(pl.col(f"old_{c}")).otherwise(pl.col(c)).alias(c)
          for c in ("last_ts", *ends) if c.startswith("last_")),
        *(pl.when(keep_last | (no_canon & old_canon_kept)).then(pl.col(f"old_{c}")).otherwise(pl.col(c)).alias(c)
          for c in ends if c.startswith("canon_")),
        probe_last.alias("probe_last"),
        (probe_last | (no_canon & ~old_canon_kept)).alias("probe_canon"),
    )
    columns = [*key, "watermark_ingested_at", "last_ts", *ends]
    pg_types = ["int4", "text", "int4", "timestamptz", "timestamptz",
                *("timestamptz" if c == "canon_ts" else "float8" for c in ends)]
    state_ref = table_ref(state_table(refresher.table), schema)
    if bulk:  # the state table was truncated in this transaction: nothing to upsert against
        copy_frame(conn, state_ref, frame.select(columns).with_columns(
            updated_at=pl.lit(dt.datetime.now(dt.timezone.utc), UTC_US)), freeze=True)
        return
    ident = sql.Identifier
    last_cols = ["last_ts", *(c for c in ends if c.startswith("last_"))]
    canon_cols = [c for c in ends if c.startswith("canon_")]

    def probed(alias: str, cols: list[str], prefix: str) -> sql.Composable:
        # the probe's column for each state column (canon_ts <- ts, last_d1_roll <- d1_roll, ...)
        return sql.SQL(", ").join(
            sql.SQL("CASE WHEN u.{flag} THEN {a}.{src} ELSE u.{c} END").format(
                flag=ident(f"probe_{prefix}"), a=ident(alias), src=ident(c.removeprefix(f"{prefix}_")), c=ident(c))
            for c in cols)

    def lateral(cols: list[str], prefix: str, extra: str) -> sql.Composable:
        # gated inside the subquery: a one-time filter, so unflagged series cost no index probe
        return sql.SQL("(SELECT {cols} FROM {t} e WHERE u.{flag} AND e.id = u.id AND e.tf = u.tf "
                       "AND e.period = u.period" + extra + " ORDER BY e.ts DESC LIMIT 1)").format(
            cols=sql.SQL(", ").join(ident(c.removeprefix(f"{prefix}_")) for c in cols),
            t=ident(schema, refresher.table), flag=ident(f"probe_{prefix}"))

    target = [*key, "watermark_ingested_at", *last_cols, *canon_cols]
    source = sql.SQL(
        "(SELECT u.id, u.tf, u.period, u.watermark_ingested_at, {last}, {canon} "
        "FROM unnest({params}) AS u({names}, probe_last, probe_canon) "
        "LEFT JOIN LATERAL {l} l ON true LEFT JOIN LATERAL {k} k ON true) AS v ({target})"
    ).format(names=sql.SQL(", ").join(ident(c) for c in columns), target=sql.SQL(", ").join(map(ident, target)),
             last=probed("l", last_cols, "last"), canon=probed("k", canon_cols, "canon"),
             params=sql.SQL(", ").join(sql.SQL("%b") for _ in range(len(columns) + 2)),
             l=lateral(last_cols, "last", ""), k=lateral(canon_cols, "canon", " AND NOT e.roll"))
    # A series that had no row and still has none keeps its state row as it is: in a young
    # universe most series are such (95 % of a calendar EMA table's on 100 assets of ~190
    # days), and rewriting them every day was most of the state's cost. Its watermark stays
    # behind; its id's changes are read from its other series' (changes.read_inputs).
    frame = frame.filter(~(pl.col("old_present").fill_null(False) & pl.col("old_last_ts").is_null()
                           & pl.col("last_ts").is_null()))
    # Existing state rows are updated in place (cheaper than INSERT … ON CONFLICT, whose
    # speculative insertion probes the key first); a new series' row is inserted.
    present = pl.col("old_present").fill_null(False)
    for part, statement in ((frame.filter(present), sql.SQL(
            "UPDATE {st} s SET {sets}, updated_at = now() FROM {source} "
            "WHERE s.id = v.id AND s.tf = v.tf AND s.period = v.period").format(
                st=state_ref.ident, source=source,
                sets=sql.SQL(", ").join(sql.SQL("{c} = v.{c}").format(c=ident(c)) for c in target[3:]))),
            (frame.filter(~present), sql.SQL(
            "INSERT INTO {st} ({target}, updated_at) SELECT v.*, now() FROM {source} "
            "ON CONFLICT (id, tf, period) DO UPDATE SET {updates}, updated_at = EXCLUDED.updated_at").format(
                st=state_ref.ident, source=source, target=sql.SQL(", ").join(map(ident, target)),
                updates=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=ident(c)) for c in target[3:])))):
        if part.height:
            conn.execute(statement, array_params(conn, part.select(*columns, "probe_last", "probe_canon"),
                                                 [*pg_types, "bool", "bool"]))
