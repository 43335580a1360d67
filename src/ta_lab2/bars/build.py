"""The six bar builders: full rebuild and incremental refresh (spec 02 §1, §4). Every builder
works on batches of ids: one read of the batch's inputs, then one transaction per batch (1D)
or per chunk of the batch (multi-timeframe); a crash leaves each id's old or new rows either
way (docs/decisions.md). This module is the entry (:func:`build`: which ids, full or
incremental, bulk or in units) and the work unit's dispatch (:func:`build_batch`); the units
(:mod:`.build_1d`, :mod:`.build_multi`) decide *what* to recompute and move rows, and the
computation is the pure modules' (:mod:`.daily`, :mod:`.snapshot`).

Incremental contract: for each id, find the earliest input change since the last run (new or
revised rows through ``load_ts`` / ``ingested_at``, rows removed from the 1D table through its
deletion log), recompute the bars from the one holding that change, and replace the id's rows
from the change on. A snapshot row depends only on its bar's days up to its own day (and on
the day before it), so every earlier row is unchanged and the table equals a full rebuild. A
change of the id's first day (backfill) or of the time zone rebuilds the id from scratch.

What an incremental run reads is bounded by what it recomputes: the 1D builder reads source
rows from the local day of the first change; the others plan from index probes, read the 1D
rows from just before the earliest day a bar to rebuild can hold, and (calendar and anchored
families) resume each bar from its stored row before the cut, a snapshot seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import psycopg
from psycopg import sql

from ta_lab2.bars.build_1d import build_1d
from ta_lab2.bars.build_multi import build_multi
from ta_lab2.bars.changes import log_deletions
from ta_lab2.bars.families import Timeframe
from ta_lab2.bars.registry import BUILDERS, load_timeframes
from ta_lab2.db.tables import BARS_1D, BARS_1D_REJECTS, state_table
from ta_lab2.work.units import (IdResult, ProgressFn, TableResult, UnitExecutor, clear_ids, resolve_ids, run_table,
                                table_worker, work_units)


def build(
    conn: psycopg.Connection,
    builder_name: str,
    ids: Sequence[int] | None = None,
    *,
    full_rebuild: bool = False,
    tz: str = "UTC",
    include_non_canonical: bool = False,
    schema: str = "public",
    progress: ProgressFn | None = None,
    workers: int = 1,
    url: str | None = None,
    executor: UnitExecutor | None = None,
) -> TableResult:
    """Build one bar table for ``ids`` (None = all). ``conn`` must be autocommit: each batch
    (1D) or chunk of a batch of ids is one explicit transaction, so a crash leaves either the
    old or the new rows of an id.
    With ``workers > 1`` (and the ``url`` for the workers' own connections) ids are built in
    that many processes; with an ``executor``, each batch is one of its tasks."""
    builder = table_worker(conn, BUILDERS, builder_name, "bar builder")
    started = time.perf_counter()
    id_list = resolve_ids(conn, ids, schema)
    tfs = [] if builder.name == "1d" else load_timeframes(conn, builder, include_non_canonical, schema)
    bulk = full_rebuild and ids is None and builder.name != "1d"
    options = BuildOptions(builder.name, tuple(tfs), tz, full_rebuild, schema, bulk)
    if full_rebuild and not bulk:
        if builder.name == "1d":
            with conn.transaction():
                first = conn.execute(
                    sql.SQL('SELECT id, min("timestamp") FROM {} WHERE id = ANY(%s) GROUP BY id').format(
                        sql.Identifier(schema, BARS_1D)), (id_list,)).fetchall()
                log_deletions(conn, schema, first)
        extra = [BARS_1D_REJECTS] if builder.name == "1d" else []
        clear_ids(conn, [builder.table, state_table(builder.table), *extra], None if ids is None else id_list, schema)
    # a 1D id's work is one bar per source day, light even in a full rebuild: batched like an
    # incremental run (its input, the source table, is not the 1D table the sizes come from)
    units = work_units(conn, id_list, schema, full=full_rebuild and builder.name != "1d", spread=workers)
    results = run_table(conn, builder.table, build_batch, options, units, bulk=bulk, workers=workers, url=url,
                        progress=progress, schema=schema, executor=executor)
    return TableResult(builder.name, builder.table, full_rebuild, tuple(t.tf for t in tfs),
                       time.perf_counter() - started, tuple(results))


@dataclass(frozen=True)
class BuildOptions:
    """Everything a worker needs to build one id (picklable)."""

    builder: str
    timeframes: tuple[Timeframe, ...]
    tz: str
    full: bool
    schema: str
    bulk: bool = False  # inside bulk_rebuild(): one transaction, empty unindexed table


def build_batch(conn: psycopg.Connection, options: BuildOptions, ids: Sequence[int]) -> list[IdResult]:
    """Build ``ids`` (the work unit; any executor may call it): the batch's inputs in one read,
    written in one transaction (1D) or one per chunk of ids (multi-timeframe); a crash leaves
    each id's old or new rows."""
    builder = BUILDERS[options.builder]
    if builder.name == "1d":
        return build_1d(conn, ids, options.tz, options.full, options.schema)
    return build_multi(conn, builder, options.timeframes, ids, options.tz, options.full, options.schema,
                        options.bulk)
