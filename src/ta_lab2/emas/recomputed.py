"""The recompute path of an EMA refresh (a revision, a removal, a new series,
``--full-refresh``): read each id's whole grid, recompute the changed series over it with the
kernel (:func:`ta_lab2.emas.series.tf_arrays`) and keep their rows from the first change on."""

from __future__ import annotations

import datetime as dt
from typing import Sequence

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.reads import read_frame
from ta_lab2.db.tables import BARS_1D
from ta_lab2.emas.changes import CANON_SCHEMA, GRID_SCHEMA, Changes, Inputs, RefreshOptions
from ta_lab2.emas.registry import REFRESHERS, EmaRefresher
from ta_lab2.emas.series import Grid, TfRows, canonical_closes, canonical_mask, ids_rows_frame, tf_arrays
from ta_lab2.emas.writes import write_rows
from ta_lab2.frames import epoch_us
from ta_lab2.work.units import IdResult, by_id

#: EMA rows a batch holds in memory before it writes them (a batch of ids that all need a
#: whole recomputation is written in several steps of its one transaction).
CHUNK_ROWS = 1_000_000


def recompute(conn: psycopg.Connection, options: RefreshOptions, changed: Sequence[Changes],
               inputs: Inputs) -> dict[int, IdResult]:
    """Recompute the changed series of ``changed`` over their ids' whole grids (the kernel)
    and write them in chunks of about :data:`CHUNK_ROWS` rows."""
    refresher = REFRESHERS[options.refresher]
    s = options.schema
    id_list = [c.id for c in changed]
    grids = by_id(read_frame(conn, sql.SQL("{} WHERE id = ANY(%s)").format(sql.Identifier(s, BARS_1D)),
                             {"id": pl.Int32(), **GRID_SCHEMA}, (id_list,), small=True, order_by=("id", "timestamp")))
    bar_tfs = [t.tf for t in options.timeframes if t.tf != "1D"]
    canon: dict[int, pl.DataFrame] = {}
    if refresher.bar_table and bar_tfs:
        canon = by_id(read_frame(
            conn, sql.SQL("{} WHERE id = ANY(%s) AND tf = ANY(%s) AND NOT is_partial_end").format(
                sql.Identifier(s, refresher.bar_table)),
            {"id": pl.Int32(), **CANON_SCHEMA}, (id_list, bar_tfs), small=True, order_by=("id", "tf", "time_close")))
    results: dict[int, IdResult] = {}
    pending: list[tuple[Changes, Grid, list[TfRows]]] = []
    pending_rows = 0

    def flush() -> None:
        rows = ids_rows_frame(refresher.kind, [(g, parts) for _, g, parts in pending])
        results.update(write_rows(conn, options, [c for c, _, _ in pending], rows, inputs,
                              {c.id: g.n > 0 for c, g, _ in pending}))

    for c in changed:
        grid_frame = grids.get(c.id, pl.DataFrame(schema=GRID_SCHEMA))
        grid = Grid(c.id, grid_frame["timestamp"].dt.epoch("us").to_numpy(), grid_frame["close"].to_numpy())
        parts = _kernel_parts(refresher, options, c, grid, canon.get(c.id, pl.DataFrame(schema=CANON_SCHEMA)))
        pending.append((c, grid, parts))
        pending_rows += sum(p.row.size for p in parts)
        if pending_rows >= CHUNK_ROWS:
            flush()
            pending, pending_rows = [], 0
    if pending:
        flush()
    return results


def _kernel_parts(refresher: EmaRefresher, options: RefreshOptions, changes: Changes, grid: Grid,
                  canon: pl.DataFrame) -> list[TfRows]:
    """The kernel's rows of the changed series of one id, from their cuts on."""
    closes_by_tf = canonical_closes(canon)
    tf_days = options.tf_days
    parts: list[TfRows] = []
    by_tf: dict[str, dict[dt.datetime | None, list[int]]] = {}
    for (tf, p), at in changes.cuts.items():
        by_tf.setdefault(tf, {}).setdefault(at, []).append(p)
    for tf, groups in by_tf.items():
        mask = canonical_mask(grid, closes_by_tf, tf)
        for at, periods in groups.items():
            parts.append(tf_arrays(refresher.kind, grid, tf, tf_days[tf], mask, periods,
                                   None if at is None else epoch_us(at)))
    return parts
