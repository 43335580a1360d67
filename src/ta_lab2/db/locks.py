"""PostgreSQL advisory locks per table family (spec 04 "Concurrency guard").

Two writers of the same tables (two refreshes, or a refresh and a baseline capture) never run
at once: the second waits up to ``wait_s`` seconds, then fails with a clear message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg

from ta_lab2.db.connect import is_idle
from ta_lab2.errors import DatabaseError

log = logging.getLogger(__name__)

#: Set by a process that holds writer locks for the programs it starts — a baseline capture
#: for the runner scripts of its rebuild: their names, comma-separated. The one thing passed
#: to a ta_lab2 process through the environment besides the URL: those programs are separate
#: executables, started exactly as a user starts them, and take no option for it.
ENV_LOCKS_HELD = "TA_LAB2_LOCKS_HELD"

SOURCE_LOCK = "ta_lab2:source"
BARS_LOCK = "ta_lab2:bars"
EMAS_LOCK = "ta_lab2:emas"

#: What each writer holds: exclusive on the tables it writes, shared on the tables it reads
#: through a watermark (a writer committing under a reader could slip below its watermark).
WRITER_LOCKS: dict[str, tuple[tuple[str, bool], ...]] = {
    "load": ((SOURCE_LOCK, False),),
    "bars": ((BARS_LOCK, False), (SOURCE_LOCK, True)),
    "emas": ((EMAS_LOCK, False), (BARS_LOCK, True)),
    # a baseline capture or restore rewrites everything: nobody else may write meanwhile
    "baseline": ((SOURCE_LOCK, False), (BARS_LOCK, False), (EMAS_LOCK, False)),
    # a compare of a snapshot with the live tables reads them all: no writer meanwhile, so its
    # passes over a table see one state of it; other readers are welcome
    "compare": ((SOURCE_LOCK, True), (BARS_LOCK, True), (EMAS_LOCK, True)),
}


def locks_held_by_caller() -> tuple[str, ...]:
    """The locks the process that started this one holds for it (:data:`ENV_LOCKS_HELD`)."""
    return tuple(n for n in os.environ.get(ENV_LOCKS_HELD, "").split(",") if n)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(conn: psycopg.Connection, name: str, wait_s: float = 0.0, *, shared: bool = False) -> Iterator[None]:
    """Hold session-level advisory lock ``name`` for the block (released on exit or disconnect).

    ``conn`` must be in autocommit mode (the pipeline's convention: every unit of work is an
    explicit ``conn.transaction()``), so taking the lock never commits someone's work.
    """
    if not conn.autocommit:
        raise ValueError("advisory_lock needs an autocommit connection")
    key = lock_key(name)
    _take(conn, "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock", name, wait_s)
    try:
        yield
    finally:
        if is_idle(conn):
            conn.execute("SELECT pg_advisory_unlock_shared(%s)" if shared else "SELECT pg_advisory_unlock(%s)", (key,))


def _take(conn: psycopg.Connection, try_fn: str, name: str, wait_s: float) -> None:
    """Take lock ``name`` with ``try_fn``, retrying for up to ``wait_s`` seconds (saying what it
    waits for), else a DatabaseError naming the lock and how to wait."""
    key = lock_key(name)
    deadline = time.monotonic() + max(wait_s, 0.0)
    waited = False
    while True:
        row = conn.execute(f"SELECT {try_fn}(%s)", (key,)).fetchone()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise DatabaseError(
                f"another ta_lab2 process is writing the {name.split(':')[-1]} tables (a load, build, refresh "
                f"or baseline capture holds advisory lock {name!r})",
                hint="wait for it to finish, or pass --wait-lock SECONDS to wait",
            )
        if not waited:
            log.warning("waiting up to %.0f s for another ta_lab2 process writing the %s tables (lock %r)",
                        wait_s, name.split(":")[-1], name)
            waited = True
        time.sleep(0.2)


def xact_lock(conn: psycopg.Connection, name: str, wait_s: float | None = None, *, shared: bool = False) -> None:
    """Lock ``name`` (exclusively, or ``shared``) until the caller's transaction ends: waiting
    without limit (``None``) or up to ``wait_s`` seconds (then a DatabaseError, see
    :func:`advisory_lock`)."""
    mode = "_shared" if shared else ""
    if wait_s is None:
        conn.execute(f"SELECT pg_advisory_xact_lock{mode}(%s)", (lock_key(name),))
    else:
        _take(conn, f"pg_try_advisory_xact_lock{mode}", name, wait_s)


@contextmanager
def lock_if_free(conn: psycopg.Connection, name: str) -> Iterator[bool]:
    """Take session-level lock ``name`` exclusively if nobody holds it, without waiting; yield
    whether it was taken, and release it on exit if so (``conn`` autocommit)."""
    key = lock_key(name)
    taken = bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
    try:
        yield taken
    finally:
        if taken and is_idle(conn):
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


@contextmanager
def writer_locks(conn: psycopg.Connection, roles: str | tuple[str, ...], wait_s: float = 0.0,
                 skip: tuple[str, ...] = ()) -> Iterator[None]:
    """Take every lock of :data:`WRITER_LOCKS` for ``roles`` except those in ``skip`` (held by a
    parent process). A lock one role needs exclusively is taken exclusively."""
    from contextlib import ExitStack

    wanted: dict[str, bool] = {}  # name -> shared
    for role in (roles,) if isinstance(roles, str) else roles:
        for name, shared in WRITER_LOCKS[role]:
            wanted[name] = wanted.get(name, True) and shared
    with ExitStack() as stack:
        for name, shared in wanted.items():
            if name not in skip:
                stack.enter_context(advisory_lock(conn, name, wait_s, shared=shared))
        yield
