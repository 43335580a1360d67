"""The six EMA refreshers: full and incremental refresh, one transaction per batch of ids
(spec 03).

Per batch (:func:`refresh_batch`): read the state of the ids' series and, through index
probes, the earliest input change since each id's last refresh (1D or bar rows with a newer
``ingested_at``, or 1D rows removed), and decide per id over frames (:mod:`.changes`). Then per
id, one of two ways (docs/decisions.md, "EMA series continue from their stored ends"), and the
rows and state written (:mod:`.writes`):

* **resume** — every changed series continues after its newest stored row (a new day, the
  daily case): read only the grid rows after it and the canonical closes among them, and step
  each series from the ends its state row keeps (:mod:`.resumed`; no kernel, no numba). A
  series with no row yet stays empty unless the new rows complete its seed's
  closes; then it starts from its seed (its id is recomputed when the stepper cannot place
  the seed: a close missing in its window).
* **recompute** — anything else (a revision, a removal, a new series, ``--full-refresh``):
  read the id's whole grid, recompute the changed series over it with the kernel and replace
  only their rows from the first change on (:mod:`.recomputed`).

An EMA row depends only on inputs at or before its day, so both are bit-identical to a full
refresh.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import psycopg

from ta_lab2.db.tables import state_table
from ta_lab2.emas.changes import Changes, RefreshOptions, find_changes, plan_changes, read_inputs, read_whole_state
from ta_lab2.emas.recomputed import recompute
from ta_lab2.emas.registry import REFRESHERS, load_ema_timeframes, load_periods
from ta_lab2.emas.resumed import resumed_rows
from ta_lab2.emas.writes import write_rows
from ta_lab2.work.units import (IdResult, ProgressFn, TableResult, UnitExecutor, clear_ids, resolve_ids, run_table,
                                table_worker, work_units)

log = logging.getLogger(__name__)


def refresh(
    conn: psycopg.Connection,
    name: str,
    ids: Sequence[int] | None = None,
    *,
    full_refresh: bool = False,
    periods: tuple[int, ...] | None = None,
    include_non_canonical: bool = False,
    schema: str = "public",
    progress: ProgressFn | None = None,
    workers: int = 1,
    url: str | None = None,
    executor: UnitExecutor | None = None,
) -> TableResult:
    """Refresh one EMA table for ``ids`` (None = all); ``conn`` must be autocommit. Batches
    run in this process, over ``workers`` processes, or as tasks of an ``executor``."""
    refresher = table_worker(conn, REFRESHERS, name, "EMA refresher")
    started = time.perf_counter()
    id_list = resolve_ids(conn, ids, schema)
    tfs = load_ema_timeframes(conn, refresher, include_non_canonical, schema)
    plist = load_periods(conn, refresher, periods, schema)
    bulk = full_refresh and ids is None
    options = RefreshOptions(name, tuple(tfs), plist, full_refresh, schema, bulk)
    if full_refresh and not bulk:
        clear_ids(conn, [refresher.table, state_table(refresher.table)], id_list, schema)
    results = run_table(conn, refresher.table, refresh_batch, options, work_units(conn, id_list, schema, full=full_refresh, spread=workers),
                        bulk=bulk, workers=workers, url=url, progress=progress, schema=schema, executor=executor,
                        reads=(refresher.bar_table,))
    return TableResult(name, refresher.table, full_refresh, tuple(t.tf for t in tfs), time.perf_counter() - started,
                       tuple(results), plist)


def refresh_batch(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> list[IdResult]:
    """Refresh ``ids`` (the work unit) in one REPEATABLE READ transaction (inputs and
    watermarks from one snapshot), or as part of the caller's bulk transaction."""
    if options.bulk:
        return _refresh(conn, options, ids)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _refresh(conn, options, ids)


def _refresh(conn: psycopg.Connection, options: RefreshOptions, ids: Sequence[int]) -> list[IdResult]:
    """Per id, either resume its changed series from their stored ends (an append, the daily
    case: no grid read beyond the new rows, no kernel) or recompute them over the id's whole
    grid with the kernel and replace their rows from the first change on."""
    inputs = read_inputs(conn, options, ids)
    plan = plan_changes(options, ids, inputs)
    results = {i: IdResult(i, "unchanged") for i in plan.unchanged}
    log.debug("%s: %d ids resumed, %d recomputed, %d unchanged", options.refresher, len(plan.resumed),
              len(plan.recomputed), len(plan.unchanged))
    again: list[Changes] = []
    if plan.resumed:
        frame, stepped, again = resumed_rows(conn, options, plan.resumed, plan.dormant, inputs)
        if stepped:
            results.update(write_rows(conn, options, stepped, frame, inputs, {c.id: True for c in stepped}))
    recomputed = [*plan.recomputed, *(c.id for c in again)]
    if recomputed:
        read_whole_state(conn, options, recomputed, inputs)
        changes = [find_changes(options, i, inputs, plan) for i in recomputed]
        results.update((c.id, IdResult(c.id, "unchanged")) for c in changes if not c.cuts)
        if any(c.cuts for c in changes):
            results.update(recompute(conn, options, [c for c in changes if c.cuts], inputs))
    return [results[i] for i in ids]
