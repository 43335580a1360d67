"""Per-id work units shared by the bar builders and EMA refreshers: id resolution, the
result objects, and running units sequentially or spread over worker processes.

A unit is ``fn(conn, options, ids) -> [IdResult, …]`` for a batch of ids — a module-level
function and a picklable options object — so the same builder code runs in-process, in a
process pool, or in any other executor that can hand it a connection. Batching amortises what
every id would otherwise pay on its own (queries, a transaction, a COPY, a polars query):
an incremental refresh of a day per id is mostly that.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

import psycopg
from psycopg import sql

from ta_lab2.db.tables import BARS_1D, SOURCE_TABLE, state_table
from ta_lab2.errors import UsageError

if TYPE_CHECKING:
    import polars as pl

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class IdResult:
    id: int
    mode: str  # "full", "incremental", "unchanged", "empty"
    rows_inserted: int = 0
    rows_deleted: int = 0
    rejects: int = 0


@dataclass(frozen=True)
class TableResult:
    """What one builder/refresher did to its table."""

    name: str
    table: str
    full: bool
    timeframes: tuple[str, ...]
    duration_s: float
    ids: tuple[IdResult, ...] = field(default_factory=tuple)
    periods: tuple[int, ...] = ()

    @property
    def rows_inserted(self) -> int:
        return sum(r.rows_inserted for r in self.ids)

    @property
    def rows_deleted(self) -> int:
        return sum(r.rows_deleted for r in self.ids)

    @property
    def rejects(self) -> int:
        return sum(r.rejects for r in self.ids)

    @property
    def ids_processed(self) -> int:
        return sum(r.mode != "unchanged" for r in self.ids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "table": self.table,
            "full": self.full,
            "timeframes": list(self.timeframes),
            "periods": list(self.periods),
            "duration_s": round(self.duration_s, 3),
            "ids": len(self.ids),
            "ids_processed": self.ids_processed,
            "rows_inserted": self.rows_inserted,
            "rows_deleted": self.rows_deleted,
            "rejects": self.rejects,
            "rows_per_s": round(self.rows_inserted / self.duration_s, 1) if self.duration_s > 0 else None,
        }


def resolve_ids(conn: psycopg.Connection, ids: Sequence[int] | None, schema: str = "public") -> list[int]:
    """``None`` = every id of ``dim_assets`` that has source rows; unknown ids are a usage error."""
    if ids is None:
        rows = conn.execute(
            sql.SQL("SELECT a.id FROM {a} a WHERE EXISTS (SELECT 1 FROM {s} s WHERE s.id = a.id) ORDER BY a.id").format(
                a=sql.Identifier(schema, "dim_assets"), s=sql.Identifier(schema, SOURCE_TABLE)
            )
        ).fetchall()
        return [r[0] for r in rows]
    known = {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT id FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, "dim_assets")), (list(ids),)
        ).fetchall()
    }
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise UsageError(
            f"--ids: unknown id(s) {', '.join(map(str, unknown))} (not in dim_assets)",
            hint="`ta-lab2 status` lists the loaded ids; load the asset first",
        )
    return list(ids)


def clear_ids(conn: psycopg.Connection, tables: Sequence[str], ids: Sequence[int] | None, schema: str = "public") -> None:
    """A full rebuild's first step, in one transaction: every row of ``tables`` for ``ids``
    (``TRUNCATE`` when ``ids`` is None, i.e. all ids; other ids are never touched)."""
    with conn.transaction():
        if ids is None:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)))
        else:
            for t in tables:
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, t)), (list(ids),))


@contextmanager
def bulk_rebuild(conn: psycopg.Connection, tables: Sequence[str], state_tables: Sequence[str],
                 schema: str = "public") -> Iterator[None]:
    """The all-ids full rebuild as ONE transaction: ``TRUNCATE`` ``tables`` and
    ``state_tables``, drop the indexes of ``tables``, let the caller write every id, then
    build the indexes once.

    Why: building a B-tree from sorted input once is several times cheaper than maintaining it
    row by row, and with ``wal_level = minimal`` rows written into a table truncated in the
    same transaction are not WAL-logged at all. A crash (or any exception) rolls everything
    back, so readers see either the old tables or the new ones. Other sessions wait on the
    ``TRUNCATE``'s lock until commit. The caller must not DELETE per id (the table is empty and
    unindexed), should write with ``copy_frame(..., freeze=True)`` (rows land frozen, so the
    autovacuum that follows a bulk load has nothing to do) and therefore must not open
    savepoints; rows in primary-key order make the final index build several times faster.
    """
    from ta_lab2.db.bulk import TableRef, deferred_indexes

    with conn.transaction():
        # READ COMMITTED: COPY FREEZE refuses to run under an older registered snapshot; the
        # advisory locks already keep every writer of the inputs out.
        # The runners already keep every core busy with several children; parallel index
        # builds on top of that measured ~2x slower on 2 cores.
        conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        conn.execute(sql.SQL("TRUNCATE {}").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in (*tables, *state_tables))))
        with deferred_indexes(conn, [TableRef(schema, t) for t in tables]):
            yield


UnitFn = Callable[[psycopg.Connection, Any, Sequence[int]], list[IdResult]]


class UnitExecutor(Protocol):
    """Runs work units somewhere else than this process (``--executor dask``:
    :class:`ta_lab2.cluster.units.DaskUnits`): each unit opens its own connection there."""

    def map(self, fn: UnitFn, options: Any, units: Sequence[Sequence[int]], label: str,
            progress: ProgressFn | None = None) -> list[IdResult]:
        """``fn(conn, options, unit)`` for every unit; the results in unit order."""
        ...


#: Ids a full rebuild's unit handles together: a unit's fixed costs (its reads, COPYs, polars
#: queries and commit, ~30 ms) are shared by its ids.
IDS_PER_BATCH = 16
#: A full rebuild's unit also stops before its ids' 1D rows pass this many: an id with a long
#: history is a unit of its own (its work is large, and so is its memory), while the many
#: young ids of a market-shaped universe share units (one id per unit cost a universe of
#: short histories about twice its compute). Units stay many enough to spread over workers.
UNIT_DAYS = 2_000
#: Ids an incremental run's unit handles together. A day's refresh is a few rows per id, so a
#: unit's fixed costs are most of it: 100 ids of the universe refreshed in 3.1 s in units of
#: 100 against 5.0 s in units of 16; 500 ids in ~5.5 s in units of 512 against ~6.4 s in units
#: of 128 (docs/performance.md). Memory stays bounded: the builders write a unit in chunks
#: (``CHUNK_ROWS``) when its ids need whole histories rebuilt.
INCREMENTAL_IDS = 512


def work_units(conn: psycopg.Connection, ids: Sequence[int], schema: str, *, full: bool,
               spread: int = 1) -> list[list[int]]:
    """``ids`` in order, cut into work units. An incremental run: at most
    :data:`INCREMENTAL_IDS` ids each, and at least ``spread`` units (the worker processes that
    share them) when there are that many ids. A full rebuild: at most :data:`IDS_PER_BATCH` ids
    and :data:`UNIT_DAYS` 1D rows (read from the 1D table; an id with more is alone)."""
    if not full:
        return batches(ids, min(INCREMENTAL_IDS, -(-len(ids) // max(1, spread))))
    days = dict(conn.execute(
        sql.SQL("SELECT id, count(*) FROM {} WHERE id = ANY(%s) GROUP BY id").format(sql.Identifier(schema, BARS_1D)),
        (list(ids),)).fetchall())
    units: list[list[int]] = []
    total = 0
    for ident in ids:
        n = days.get(ident, 0)
        if not units or len(units[-1]) >= IDS_PER_BATCH or total + n > UNIT_DAYS:
            units.append([])
            total = 0
        units[-1].append(ident)
        total += n
    return units


def stored_before(last: Any, cut: Any) -> bool:
    """Whether every stored row of a series is before ``cut`` (None: the whole series is
    replaced), as far as its state's newest row instant ``last`` tells (None: unknown). The
    state is written in the same transaction as the rows, so a series it places before its
    cut has nothing to delete there (docs/decisions.md)."""
    return last is not None and cut is not None and last < cut


def by_id(frame: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """``frame``'s rows split by their ``id`` column (each part keeps the rows' order)."""
    return {key[0]: part for key, part in frame.partition_by("id", as_dict=True).items()}


def batches(ids: Sequence[int], size: int) -> list[list[int]]:
    """``ids`` in order, cut into lists of at most ``size``."""
    size = max(1, size)
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


def run_units(
    conn: psycopg.Connection,
    fn: UnitFn,
    options: Any,
    units: Sequence[Sequence[int]],
    *,
    workers: int = 1,
    url: str | None = None,
    progress: ProgressFn | None = None,
    executor: UnitExecutor | None = None,
    label: str = "units",
) -> list[IdResult]:
    """Run ``fn`` over every unit (a list of ids): on ``executor`` (each unit a task named after
    ``label``), else in this process or over ``workers`` processes; results sorted by id (in
    this process or on an executor: in the units' order)."""
    if executor is not None:
        return executor.map(fn, options, units, label, progress)
    if workers <= 1 or len(units) <= 1 or url is None:
        results: list[IdResult] = []
        for unit in units:
            results.extend(fn(conn, options, unit))
            if progress:
                progress(len(unit))
        return results
    return sorted(_parallel(url, fn, options, units, workers, progress), key=lambda r: r.id)


T = TypeVar("T")


def table_worker(conn: psycopg.Connection, registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]`` (a builder or refresher), once ``name`` is known (else a usage error
    naming the choices) and ``conn`` is autocommit (the work units open their own transactions)."""
    if name not in registry:
        raise UsageError(f"unknown {what} {name!r}; choose from {', '.join(registry)}")
    if not conn.autocommit:
        raise ValueError(f"the {what} needs an autocommit connection (it opens its own transactions)")
    return registry[name]


def run_table(conn: psycopg.Connection, table: str, fn: UnitFn, options: Any, units: Sequence[Sequence[int]], *,
              bulk: bool, workers: int, url: str | None, progress: ProgressFn | None,
              schema: str = "public", executor: UnitExecutor | None = None,
              reads: Sequence[str] = ()) -> list[IdResult]:
    """Run ``fn`` over ``units`` (:func:`work_units`) for ``table``: with ``bulk`` (an all-ids
    full rebuild) every unit in this process inside one :func:`bulk_rebuild` of the table and
    its state (workers cannot share its transaction) — or, on an ``executor``, every unit a task writing into a shadow
    copy of the table that one transaction then swaps in (:func:`ta_lab2.db.shadow.shadow_rebuild`;
    ``reads``: the other pipeline tables the units read); else as :func:`run_units` does.
    ``options`` is a dataclass with ``schema`` and ``bulk`` fields."""
    if bulk and executor is not None:
        from ta_lab2.db.shadow import shadow_rebuild

        with shadow_rebuild(conn, schema, table, reads) as shadow:
            return run_units(conn, shadow.units(fn), options, units, progress=progress, executor=executor, label=table)
    if bulk:
        with bulk_rebuild(conn, [table], [state_table(table)], schema):
            return run_units(conn, fn, options, units, progress=progress)
    return run_units(conn, fn, options, units, workers=workers, url=url, progress=progress, executor=executor,
                     label=table)


def _worker(url: str, fn: UnitFn, options: Any, units: list[list[int]]) -> list[IdResult]:
    from ta_lab2.db.connect import Target, connect

    with connect(Target(url, "worker"), autocommit=True) as conn:
        return [r for unit in units for r in fn(conn, options, unit)]


def _parallel(url: str, fn: UnitFn, options: Any, units: list[list[int]], workers: int,
              progress: ProgressFn | None) -> list[IdResult]:
    """Each worker gets a polars pool of one thread: the workers (and the PostgreSQL backends
    they feed) are the parallelism; oversubscribing the cores is slower."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[IdResult] = []
    saved = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, url, fn, options, units[i::workers]) for i in range(workers)]
            for fut in as_completed(futures):
                done = fut.result()
                results.extend(done)
                if progress:
                    progress(len(done))
    finally:
        if saved is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = saved
    return results
