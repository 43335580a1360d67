"""A shadow rebuild of one multi-timeframe bar table or EMA table: writers in many sessions
(the tasks of a Dask cluster) build the new table beside the old one, then one transaction
puts it in the old one's place. Readers see the old table or the new one, never a half-built
one — what the one-transaction bulk rebuild of a single process
(:func:`ta_lab2.work.units.bulk_rebuild`) gives, for writers that cannot share a transaction.

**Each work unit fills tables of its own** (:func:`fill_unit`). In one transaction it
(re)creates the schema ``ta_lab2_shadow_<hex>_u<first id>`` holding empty unlogged copies of
the table and its state table (columns and defaults, no index) and views of the live tables it
reads (the 1D bars and their deletion log, and ``reads``), then writes its ids the way the
single-process bulk rebuild does: ``COPY … FREEZE`` into tables created in its own
transaction, so that no row goes through the WAL (whatever ``wal_level``) and no index is
maintained row by row. A unit run again (its worker died) drops and recreates its schema:
nothing is doubled, nothing half-written survives. Why unlogged: the units' tables are read
once, by the assemble, and never need to reach the disk (a logged table is flushed and
fsynced at its unit's commit: ~1 s of a two-worker full refresh of the six EMA tables). They
are safe because a server crash, which empties unlogged tables, also ends every session —
the one that would assemble them among them — so that run fails and nothing is swapped in.
Autovacuum is off for them: a vacuum of a unit's table, freshly filled, holds up the
assemble's drop of it until PostgreSQL cancels the vacuum (``deadlock_timeout``, a second
per table; 5 s of a bar table's rebuild in one bench run).

**Then one transaction assembles and swaps** (:func:`shadow_rebuild` on success): it creates
the new table and state table in ``ta_lab2_shadow_<hex>`` from the project's own DDL
(:func:`ta_lab2.db.schema.family_ddl`: the same index and constraint names), copies the
units' rows in, unit by unit in id order (``INSERT … SELECT``: again not WAL-logged, the
tables being new in this transaction), builds the indexes once from key-ordered input, then
drops the old table and its state table and moves the new ones into the schema, holding both
tables' ``ACCESS EXCLUSIVE`` lock only for that last part. An object that depends on the old
table (a user's view, a foreign key) makes the swap fail: the run fails, the old table stays
as it was, and nothing is dropped by cascade. Privileges granted on the old table are granted
again on the new one.

**Nothing is left behind.** The schema ``ta_lab2_shadow_<hex>`` exists from the start, as the
run's mark: a unit takes a shared advisory lock on it and checks that it still exists before
creating anything; an abandoned rebuild takes the lock exclusively (waiting for units still
writing), then drops it and every unit schema, so a unit that starts later finds no mark and
creates nothing. The session running the rebuild holds that lock (shared) from before the mark
exists until it is gone. A rebuild whose process was killed or lost its connection leaves
its schemas but no session holding the lock: the next shadow rebuild (:func:`sweep_abandoned`)
takes it exclusively, drops them and says so; a run still alive keeps its lock and its
schemas. So do unit schemas whose mark is gone (a unit of a finished run that a presumed-dead
worker committed late).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from ta_lab2.db.bulk import TableRef, column_types, deferred_indexes, index_statements
from ta_lab2.db.connect import is_idle
from ta_lab2.db.locks import advisory_lock, lock_if_free, xact_lock
from ta_lab2.db.schema import family_ddl
from ta_lab2.db.tables import BARS_1D, BARS_1D_DELETIONS, state_table

log = logging.getLogger(__name__)

SHADOW_PREFIX = "ta_lab2_shadow_"

#: A work unit: ``fn(conn, options, ids)``; ``options`` is a dataclass with ``schema`` and
#: ``bulk`` fields (:data:`ta_lab2.work.units.UnitFn`).
UnitFn = Callable[[psycopg.Connection, Any, Sequence[int]], list[Any]]


@dataclass(frozen=True)
class Shadow:
    """One shadow rebuild: ``name`` is its schema (the run's mark, later the new tables'),
    ``schema`` and ``table`` the live table rebuilt, ``reads`` the other live tables its units
    read. Picklable: a Dask task carries it."""

    name: str
    schema: str
    table: str
    reads: tuple[str, ...]

    @property
    def outputs(self) -> tuple[str, str]:
        return self.table, state_table(self.table)

    def unit_schema(self, ids: Sequence[int]) -> str:
        return f"{self.name}_u{ids[0]}"

    def units(self, fn: UnitFn) -> UnitFn:
        """``fn`` as a unit of this rebuild (see :func:`fill_unit`)."""
        return functools.partial(fill_unit, self, fn)


def fill_unit(shadow: Shadow, fn: UnitFn, conn: psycopg.Connection, options: Any, ids: Sequence[int]) -> list[Any]:
    """Run ``fn`` for ``ids`` into a schema of this unit's own, in one transaction (see the
    module docstring). ``conn`` must be autocommit."""
    unit = shadow.unit_schema(ids)
    ident = sql.Identifier
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        xact_lock(conn, shadow.name, shared=True)
        if conn.execute("SELECT to_regnamespace(%s)", (shadow.name,)).fetchone()[0] is None:
            raise RuntimeError(f"the shadow rebuild {shadow.name} of {shadow.table} was abandoned; unit not run")
        # the same unit run twice at once (a worker thought dead): one after the other
        xact_lock(conn, unit)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident(unit)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident(unit)))
        for name in shadow.outputs:
            conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS) WITH ("
                                 "autovacuum_enabled = false, toast.autovacuum_enabled = false)").format(
                ident(unit, name), ident(shadow.schema, name)))
        for name in dict.fromkeys((BARS_1D, BARS_1D_DELETIONS, *shadow.reads)):
            conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                ident(unit, name), ident(shadow.schema, name)))
        return fn(conn, replace(options, schema=unit, bulk=True), ids)


@contextmanager
def shadow_rebuild(conn: psycopg.Connection, schema: str, table: str, reads: Sequence[str] = ()) -> Iterator[Shadow]:
    """Mark a shadow rebuild of ``table``, yield it (run its units with
    :meth:`Shadow.units`), then assemble and swap the new table in — or, on any exception,
    drop everything the units made and leave ``table`` untouched. ``conn`` must be
    autocommit."""
    sweep_abandoned(conn)
    shadow = Shadow(f"{SHADOW_PREFIX}{uuid.uuid4().hex[:12]}", schema, table, tuple(r for r in reads if r))
    # held until the schemas are gone: what tells a later sweep that this run is alive
    with advisory_lock(conn, shadow.name, shared=True):
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shadow.name)))
        log.debug("shadow rebuild of %s.%s in schema %s", schema, table, shadow.name)
        try:
            yield shadow
            _assemble_and_swap(conn, shadow)
        except BaseException:
            drop_shadow(conn, shadow.name)
            raise


def sweep_abandoned(conn: psycopg.Connection) -> list[str]:
    """Drop what shadow rebuilds whose session has ended left behind (see the module
    docstring) with :func:`drop_shadow`, logging each; return their marks. ``conn`` must be
    autocommit."""
    swept = []
    for mark in sorted({_mark_of(n) for n in _schemas(conn, SHADOW_PREFIX)}):
        with lock_if_free(conn, mark) as free:
            if not free:
                continue  # its run is alive
            left = _schemas(conn, mark)  # none when its run ended since the listing
            if left:
                drop_shadow(conn, mark)
        if left:
            swept.append(mark)
            log.warning("dropped what an interrupted rebuild left behind: %s", ", ".join(sorted(left)))
    return swept


def _schemas(conn: psycopg.Connection, prefix: str) -> list[str]:
    rows = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)).fetchall()
    return [r[0] for r in rows]


def _mark_of(schema: str) -> str:
    """The run's mark of a shadow schema: itself, or the mark a unit schema is named after."""
    return schema.rsplit("_u", 1)[0] if "_u" in schema.removeprefix(SHADOW_PREFIX) else schema


def _unit_schemas(conn: psycopg.Connection, name: str) -> list[str]:
    """The unit schemas of the shadow rebuild ``name``, in id order."""
    return sorted(_schemas(conn, f"{name}_u"), key=lambda n: int(n.rsplit("_u", 1)[1]))


def _assemble_and_swap(conn: psycopg.Connection, shadow: Shadow) -> None:
    """One transaction: the new tables created and filled from the units' tables, their
    indexes built once; then the old tables out, the new ones in, the old tables' privileges
    granted again, the shadow and unit schemas dropped. Readers of the old tables wait only
    for the last part."""
    ident = sql.Identifier
    schema, new = shadow.schema, shadow.name
    units = _unit_schemas(conn, new)
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        # as the single-process bulk rebuild: parallel index builds measured slower on 2 cores
        conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        conn.execute(family_ddl(new, shadow.table))
        rows, state = shadow.outputs
        _fill_as_select(conn, TableRef(new, rows), units)
        with deferred_indexes(conn, [TableRef(new, state)]):
            columns = sql.SQL(", ").join(map(ident, column_types(conn, TableRef(new, state))))
            for unit in units:
                conn.execute(sql.SQL("INSERT INTO {} ({c}) SELECT {c} FROM {}").format(
                    ident(new, state), ident(unit, state), c=columns))
        grants = conn.execute(
            "SELECT c.relname, a.privilege_type, a.grantee, pg_get_userbyid(a.grantee), a.is_grantable "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.grantee <> c.relowner",
            (schema, list(shadow.outputs))).fetchall()
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(ident(schema, t) for t in shadow.outputs)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(ident(schema, t) for t in shadow.outputs)))
        for name in shadow.outputs:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(ident(new, name), ident(schema)))
        for name, privilege, oid, grantee, grantable in grants:
            conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), ident(schema, name),
                sql.SQL("PUBLIC") if oid == 0 else ident(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        for unit in (new, *units):
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(ident(unit)))


def _fill_as_select(conn: psycopg.Connection, table: TableRef, units: Sequence[str]) -> None:
    """Replace the empty ``table`` (made by the project's DDL) by one holding the rows of the
    same-named tables of the ``units`` schemas, in their order, with ``table``'s columns, NOT
    NULLs, defaults, constraints and indexes (the indexes built last, from key-ordered rows).

    Why ``CREATE TABLE … AS`` rather than ``INSERT … SELECT`` into the DDL's table: it writes
    through PostgreSQL's bulk-insert path, and the primary key then builds from its rows about
    twice as fast (1.9M EMA rows: filling 0.76 → 0.40 s, the key 1.24 → 0.68 s)."""
    ident = sql.Identifier
    attrs = conn.execute(
        "SELECT a.attname, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (table.ident.as_string(conn),)).fetchall()
    indexes = [create for _drop, create in index_statements(conn, table)]
    columns = sql.SQL(", ").join(ident(a[0]) for a in attrs)
    sources = [sql.SQL("SELECT {c} FROM {u}").format(c=columns, u=ident(unit, table.name)) for unit in units]
    filled = ident(table.schema, f"{table.name}_filled")
    # the units' rows in unit order (a parallel plan would interleave them)
    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
    conn.execute(sql.SQL("CREATE TABLE {f} AS {rows}").format(
        f=filled, rows=sql.SQL(" UNION ALL ").join(sources) if sources
        else sql.SQL("SELECT {c} FROM {t} WITH NO DATA").format(c=columns, t=table.ident)))
    conn.execute(sql.SQL("DROP TABLE {}").format(table.ident))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(filled, ident(table.name)))
    settings = [sql.SQL("ALTER COLUMN {} SET NOT NULL").format(ident(name)) for name, not_null, _ in attrs if not_null]
    settings += [sql.SQL("ALTER COLUMN {} SET DEFAULT ").format(ident(name)) + sql.SQL(default)
                 for name, _, default in attrs if default is not None]
    if settings:
        conn.execute(sql.SQL("ALTER TABLE {} ").format(table.ident) + sql.SQL(", ").join(settings))
    for statement in indexes:
        conn.execute(statement)


def drop_shadow(conn: psycopg.Connection, name: str) -> None:
    """Drop a shadow rebuild's schema and its units' (their tables and views only), once no
    unit is writing; a unit that starts afterwards finds the mark gone and creates nothing."""
    if not is_idle(conn):
        return
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        xact_lock(conn, name)
        for schema in (name, *_unit_schemas(conn, name)):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
