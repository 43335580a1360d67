"""A shadow rebuild of one multi-timeframe bar table or EMA table: writers in many sessions
(the tasks of a Dask cluster) fill an empty copy of the table in a schema of its own, then one
transaction puts the copy in the real table's place. Readers see the old table or the new
one, never a half-built one — what the one-transaction bulk rebuild of a single process
(:func:`ta_lab2.work.units.bulk_rebuild`) gives, for writers that cannot share a transaction.

The shadow schema (``ta_lab2_shadow_<hex>``) holds the new table and its state table, built
from the project's own DDL (:func:`ta_lab2.db.schema.family_ddl`: the same index and
constraint names; filled with the primary key only, their other indexes built once just
before the swap), and a view of each table the writers read, so that a work unit given the
shadow schema as its ``schema`` reads its inputs from the real tables and writes into the
copy. The other multi-timeframe and EMA tables get no view: another writer of the same run
may swap them meanwhile, and a view would pin the old table (``reads`` names the ones that
are inputs; their writers have finished before this rebuild starts).

The swap drops the old table and its state table and moves the new ones into the schema, in
one transaction holding both tables' ``ACCESS EXCLUSIVE`` lock for milliseconds. An object
that depends on the old table (a user's view, a foreign key) makes the swap fail: the run
fails, the old table stays as it was, and nothing is dropped by cascade. Privileges granted
on the old table are granted again on the new one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql

from ta_lab2.db.schema import family_ddl
from ta_lab2.db.tables import BAR_TABLES, EMA_TABLES, state_table

log = logging.getLogger(__name__)

SHADOW_PREFIX = "ta_lab2_shadow_"

#: Tables a shadow schema never views unless they are named inputs: the ones a writer of the
#: same run may swap while the shadow exists.
_SWAPPABLE = frozenset(t for table in (*list(BAR_TABLES.values())[1:], *EMA_TABLES.values())
                       for t in (table, state_table(table)))


@contextmanager
def shadow_rebuild(conn: psycopg.Connection, schema: str, table: str, reads: Sequence[str] = ()) -> Iterator[str]:
    """Create the shadow schema of ``table`` (an empty copy of it and of its state table,
    views of what the writers read), yield its name, then swap the copy in — or, on any
    exception, drop the shadow and leave ``table`` untouched. ``conn`` must be autocommit."""
    shadow = f"{SHADOW_PREFIX}{uuid.uuid4().hex[:12]}"
    outputs = (table, state_table(table))
    readable = {t for name in reads for t in (name, state_table(name))}
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shadow)))
        conn.execute(family_ddl(shadow, table))
        deferred = _keys_only(conn, shadow, outputs)
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY 1", (schema,)).fetchall()]
        for name in names:
            if name in outputs or (name in _SWAPPABLE and name not in readable):
                continue
            conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                sql.Identifier(shadow, name), sql.Identifier(schema, name)))
    log.debug("shadow rebuild of %s.%s in schema %s", schema, table, shadow)
    try:
        yield shadow
    except BaseException:
        drop_shadow(conn, shadow)
        raise
    try:
        _swap(conn, schema, shadow, outputs, deferred)
    except BaseException:
        drop_shadow(conn, shadow)
        raise


def _keys_only(conn: psycopg.Connection, shadow: str, outputs: Sequence[str]) -> list[str]:
    """Make the shadow copies cheaper to fill: drop the indexes that back no constraint (kept:
    the primary key, which the units' replace-by-key deletes and state probes use). Returns
    the dropped indexes' definitions, to build once the copies are full. (Filling them
    ``UNLOGGED`` and ``SET LOGGED`` before the swap measured slower: that rewrites the table.)"""
    saved = []
    for name in outputs:
        table = sql.Identifier(shadow, name)
        for index, definition in conn.execute(
                "SELECT ic.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class ic ON ic.oid = i.indexrelid "
                "WHERE i.indrelid = %s::regclass "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
                (table.as_string(conn),)).fetchall():
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(shadow, index)))
            saved.append(definition)
    return saved


def _swap(conn: psycopg.Connection, schema: str, shadow: str, outputs: Sequence[str], deferred: Sequence[str]) -> None:
    """One transaction: the copies' other indexes built, each once; then the old tables out,
    the copies in, the old tables' privileges granted again, the shadow schema dropped.
    Readers of the old tables wait only for the last part."""
    with conn.transaction():
        # as the single-process bulk rebuild: parallel index builds measured slower on 2 cores
        conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        for definition in deferred:
            conn.execute(definition)
        grants = conn.execute(
            "SELECT c.relname, a.privilege_type, a.grantee, pg_get_userbyid(a.grantee), a.is_grantable "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a "
            "WHERE n.nspname = %s AND c.relname = ANY(%s) AND a.grantee <> c.relowner",
            (schema, list(outputs))).fetchall()
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in outputs)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(sql.Identifier(schema, t) for t in outputs)))
        for name in outputs:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(shadow, name),
                                                                        sql.Identifier(schema)))
        for name, privilege, oid, grantee, grantable in grants:
            conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), sql.Identifier(schema, name),
                sql.SQL("PUBLIC") if oid == 0 else sql.Identifier(grantee),
                sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(shadow)))


def drop_shadow(conn: psycopg.Connection, shadow: str) -> None:
    """Drop a shadow schema and everything in it (its copies and views only)."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return
    with conn.transaction():
        conn.execute("SET LOCAL client_min_messages = warning")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
