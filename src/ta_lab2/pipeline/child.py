"""Shared plumbing of a runner's child process (one builder or refresher): resolve the
database, hold the family's advisory lock, run, and write a JSON summary the runner reads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import psycopg

from ta_lab2.db.connect import Target, connect, resolve_target
from ta_lab2.db.locks import writer_locks
from ta_lab2.db.schema import ensure_schema

log = logging.getLogger(__name__)

#: Set by a runner for its children: the advisory locks it holds on their behalf.
ENV_LOCKS_HELD = "TA_LAB2_LOCKS_HELD"


#: Set by a runner for its children: how many children it runs at once.
ENV_SIBLINGS = "TA_LAB2_CONCURRENT_CHILDREN"

#: Set by a runner for its children: the schema it has just made sure of (children skip the check).
ENV_SCHEMA_READY = "TA_LAB2_SCHEMA_READY"

IDS_PER_WORKER = 8


def default_workers(requested: int | None, n_ids: int) -> int:
    """``--num-processes`` or, by default, the CPU count shared among the children a runner
    runs at once — but never more workers than there are batches of :data:`IDS_PER_WORKER`
    ids: starting a worker process costs about as much as building several ids, so small
    universes run in one process (docs/decisions.md)."""
    if requested and requested > 0:
        return requested
    try:
        siblings = max(1, int(os.environ.get(ENV_SIBLINGS, "1")))
    except ValueError:
        siblings = 1
    return max(1, min((os.cpu_count() or 1) // siblings, n_ids // IDS_PER_WORKER))


def run_locked(
    db_url: str | None,
    role: str,
    wait_lock: float,
    work: Callable[[psycopg.Connection, Target], Any],
    schema: str = "public",
) -> Any:
    """Connect (autocommit), make sure the schema exists (unless the parent runner just did),
    hold ``role``'s locks, run ``work``."""
    target = resolve_target(db_url)
    if os.environ.get(ENV_SCHEMA_READY) != schema:
        with connect(target) as conn:
            ensure_schema(conn, schema)
    held = tuple(n for n in os.environ.get(ENV_LOCKS_HELD, "").split(",") if n)
    with connect(target, autocommit=True) as conn:
        # locks a parent runner holds for the whole run are not taken again
        with writer_locks(conn, role, wait_lock, skip=held):
            return work(conn, target)


def write_summary(path: Path | None, summary: dict[str, Any]) -> None:
    """The runner passes ``--summary-json PATH``; a standalone run may omit it."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, default=str, indent=2))
    tmp.replace(path)
