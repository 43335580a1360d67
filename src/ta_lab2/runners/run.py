"""Running the runners: ``run_all_bar_builders``, ``run_all_ema_refreshes`` and
``run_daily_refresh``.

A runner plans one child per builder/refresher (:mod:`.plan`), validates the ids, holds its
families' advisory locks for the whole run and tells its children so (a
:class:`~ta_lab2.work.command.ParentRun` argument), and runs them through
:func:`ta_lab2.launch.schedule.run_children`, several at once (``RunOptions.max_parallel``,
default the CPU count) as the dependencies allow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
from dataclasses import replace
from typing import Iterator, Sequence

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import WRITER_LOCKS, locks_held_by_caller, writer_locks
from ta_lab2.db.schema import ensure_schema
from ta_lab2.errors import UsageError
from ta_lab2.launch.process import Launcher
from ta_lab2.launch.results import RunSummary
from ta_lab2.launch.schedule import ChildSpec, default_parallel, run_children
from ta_lab2.runners.plan import (BUILDER_ORDER, REFRESHER_ORDER, RunOptions, bar_specs, ema_specs, preload,
                                  within_run, worker_preload)
from ta_lab2.work.command import ParentRun
from ta_lab2.work.units import resolve_ids


def held_locks(*roles: str) -> tuple[str, ...]:
    """The advisory lock names the ``roles`` take (see :data:`ta_lab2.db.locks.WRITER_LOCKS`)."""
    return tuple(dict.fromkeys(name for role in roles for name, _ in WRITER_LOCKS[role]))


def run_family(runner: str, target: Target, options: RunOptions, specs: list[ChildSpec],
               roles: tuple[str, ...]) -> RunSummary:
    """Validate ids, hold the roles' locks for the whole run, run ``specs`` (in dependency
    order, up to ``options.max_parallel`` at once). The fork server starts first, so its
    imports overlap the schema check, the id check and the locks."""
    specs = within_run(specs)
    env = target.child_env()
    if options.dry_run:
        with connect(target, autocommit=True) as conn:
            if options.ids is not None:
                if conn.execute("SELECT to_regclass(%s)", (f'"{options.schema}".dim_assets',)).fetchone()[0] is None:
                    raise UsageError(f"--ids: schema {options.schema!r} has no ta_lab2 tables yet, so no id is known",
                                     hint="run `ta-lab2 init`, or load data with `ta-lab2 load`")
                resolve_ids(conn, options.ids, options.schema)
        return run_children(runner, specs, env=env, dry_run=True)
    dask = options.executor == "dask"
    # a Dask run's children as many as a local run's: more at once (every ready child) measured
    # slower — their shadow tables' index builds and swaps then all meet at the end
    parallel = options.max_parallel or default_parallel()
    # a full refresh recomputes every EMA series with the kernel; an incremental one mostly
    # resumes them without it
    kernel = options.full and "emas" in roles
    imports = preload(roles, kernel=kernel, verbose=options.verbose, dask=dask)
    with Launcher(imports) as launcher, _cluster(target, options, worker_preload(roles, kernel=kernel)) as address, \
            connect(target, autocommit=True) as conn:
        if address is not None:
            specs = [replace(s, args=(*s.args, "--scheduler", address)) for s in specs]
        ensure_schema(conn, options.schema)
        if options.ids is not None:
            resolve_ids(conn, options.ids, options.schema)
        inherited = locks_held_by_caller()
        parent = ParentRun(locks_held=tuple(dict.fromkeys([*inherited, *held_locks(*roles)])),
                           schema_ready=options.schema, cpus=max(1, (os.cpu_count() or 1) // parallel))
        specs = [replace(s, entry=functools.partial(s.entry, parent=parent)) for s in specs]
        with writer_locks(conn, roles, options.wait_lock, skip=inherited):
            return run_children(runner, specs, env=env, timeout_s=options.timeout_s,
                                continue_on_error=options.continue_on_error, verbose=options.verbose,
                                max_parallel=parallel, launcher=launcher)


@contextlib.contextmanager
def _cluster(target: Target, options: RunOptions, preload: Sequence[str]) -> Iterator[str | None]:
    """For a Dask run without a scheduler: a cluster of this machine for the whole run (its
    workers get the URL in their environment and import ``preload`` as they start), yielding
    its address; else None. A Dask run without ``distributed`` fails here, before any child
    starts."""
    if options.executor != "dask":
        yield None
        return
    from ta_lab2.cluster.client import import_distributed, local_cluster

    import_distributed()
    if options.scheduler is not None:
        yield None
        return

    with local_cluster(target.url, preload=preload) as address:
        yield address


def run_bar_builders(target: Target, options: RunOptions, builders: Sequence[str] = BUILDER_ORDER) -> RunSummary:
    return run_family("run_all_bar_builders", target, options, bar_specs(options, builders), ("bars",))


def run_ema_refreshes(target: Target, options: RunOptions, refreshers: Sequence[str] = REFRESHER_ORDER) -> RunSummary:
    return run_family("run_all_ema_refreshes", target, options, ema_specs(options, refreshers), ("emas",))


def stale_ids(target: Target, ids: Sequence[int] | None, hours: float,
              schema: str = "public") -> tuple[list[int], list[int], str | None]:
    """(fresh, stale, newest): an id is fresh when its last source day is within ``hours`` of
    the newest source day of any id (the universe, not the wall clock: a historical data set
    refreshes whole); ``newest`` is that day's instant (ISO), None without any source row."""
    from psycopg import sql

    with connect(target, autocommit=True) as conn:
        id_list = resolve_ids(conn, ids, schema)
        # one index probe per asset (the primary key ends in "timestamp"), not a scan
        last = dict(conn.execute(sql.SQL(
            "SELECT a.id, m.last FROM {a} a CROSS JOIN LATERAL "
            "(SELECT max(\"timestamp\") AS last FROM {s} s WHERE s.id = a.id) m WHERE m.last IS NOT NULL").format(
            a=sql.Identifier(schema, "dim_assets"), s=sql.Identifier(schema, "cmc_price_histories7"))).fetchall())
    if not last:
        return list(id_list), [], None
    newest = max(last.values())
    cut = newest - dt.timedelta(hours=hours)
    fresh = [i for i in id_list if i in last and last[i] >= cut]
    return fresh, [i for i in id_list if i not in fresh], newest.isoformat()


def run_daily_refresh(
    target: Target, options: RunOptions, *, bars: bool, emas: bool, skip_stale_check: bool, staleness_hours: float
) -> RunSummary:
    """Bars for the ids, then EMAs for the ids whose source data is fresh; stale ids are listed."""
    specs: list[ChildSpec] = bar_specs(options, BUILDER_ORDER) if bars else []
    stale: list[int] = []
    newest: str | None = None
    if emas:
        if skip_stale_check:
            ema_ids = options.ids
        else:
            fresh, stale, newest = stale_ids(target, options.ids, staleness_hours, options.schema)
            ema_ids = fresh
        if ema_ids is None or ema_ids:
            specs += ema_specs(replace(options, ids=ema_ids), REFRESHER_ORDER)
    roles = tuple(r for r, on in (("bars", bars), ("emas", emas)) if on)
    if not specs:
        summary = run_children("run_daily_refresh", [], env=target.child_env(), dry_run=options.dry_run)
    else:
        summary = run_family("run_daily_refresh", target, options, specs, roles)
    return replace(summary, extra={
        "stale_ids": stale,
        "staleness_hours": staleness_hours,
        "stale_check": not skip_stale_check,
        "newest_source_day": newest,
    })
