"""Work units as Dask tasks: :class:`DaskUnits` runs ``fn(conn, options, ids)`` for each batch
of ids as one task, and :func:`run_unit` is that task on a worker.

A task's key, function and arguments are the unit's function (pickled by reference), its
options (schema, timeframes, periods, flags) and its ids — never the database URL, which each
worker reads from its own environment (:mod:`.client`). Each task opens its own connection
and the unit writes each id in one transaction, so a task Dask runs again after its worker
died (before or after its commit) leaves no duplicate and no half-written id: the second run
replaces what the first wrote, or finds nothing left to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.url import resolve_url
from ta_lab2.errors import ConfigError

Unit = Callable[[Any, Any, Sequence[int]], list[Any]]


def run_unit(fn: Unit, options: Any, ids: Sequence[int]) -> list[Any]:
    """On a worker: connect (autocommit) with the worker's own URL and run the unit."""
    resolved = resolve_url(None)
    if resolved.url is None:
        raise ConfigError("this Dask worker has no database URL",
                          hint="start the worker with TA_LAB2_DB_URL in its environment (docs/scale.md)")
    with connect(Target(resolved.url, resolved.source), autocommit=True) as conn:
        return fn(conn, options, ids)


class DaskUnits:
    """Runs the units of one table on a Dask client (see :meth:`map`)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def map(self, fn: Unit, options: Any, units: Sequence[Sequence[int]], label: str,
            progress: Callable[[int], None] | None = None) -> list[Any]:
        """Run ``fn`` over ``units`` as tasks keyed ``<label>-<run>-<n>``; return their results
        in unit order, calling ``progress(len(unit))`` as each finishes. When a unit fails,
        the others still run to their end (none may be writing once this returns: the
        caller's locks end with it), then the first failure in unit order is raised."""
        from distributed import as_completed

        run = uuid.uuid4().hex[:8]
        futures = [self.client.submit(run_unit, fn, options, list(unit), key=f"{label}-{run}-{n}", pure=False)
                   for n, unit in enumerate(units)]
        sizes = {f.key: len(u) for f, u in zip(futures, units)}
        for future in as_completed(futures, loop=self.client.loop):
            if progress is not None and future.status == "finished":
                progress(sizes[future.key])
        failed = [f for f in futures if f.status != "finished"]
        if failed:
            failed[0].result()  # raises the task's exception
        return [r for results in self.client.gather(futures) for r in results]
