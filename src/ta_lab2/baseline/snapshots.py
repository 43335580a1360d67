"""Snapshots, truncation, restore and the capture registry (spec 05 phases 1–2, restore/drop).

Every step that changes data is one transaction: the snapshots are taken together under one
REPEATABLE READ snapshot (all tables show the same instant) and verified before commit;
truncation runs only after that commit; restore puts every table back or changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline.table_sql import primary_key
from ta_lab2.baseline.naming import (SUFFIX_FORMAT, aux_schema, aux_tables, constraint_name, make_suffix,
                                     snapshot_name)
from ta_lab2.db.locks import lock_if_free
from ta_lab2.db.tables import BAR_TABLES, EMA_TABLES, PIPELINE_TABLES
from ta_lab2.errors import DatabaseError, UsageError
from ta_lab2.work.units import clear_ids

log = logging.getLogger(__name__)
REGISTRY = "baseline_snapshots"
#: phases after which the live tables no longer hold what the snapshot holds
CHANGED_PHASES = frozenset({"truncating", "truncated", "rebuilding", "rebuilt", "rebuild_failed"})


def capture_lock(suffix: str) -> str:
    """The advisory lock a capture holds while it runs (released when it ends or dies)."""
    return f"ta_lab2:capture:{suffix}"


def is_running(conn: psycopg.Connection, suffix: str) -> bool:
    """Whether another session holds ``suffix``'s capture lock, i.e. the capture is running."""
    with lock_if_free(conn, capture_lock(suffix)) as free:
        return not free


def capture_instant(conn: psycopg.Connection, now: dt.datetime, schema: str = "public") -> dt.datetime:
    """The instant a capture starting at ``now`` is named after (its suffix, one-second
    resolution): ``now``, or one second after the latest capture of the registry when ``now``
    is not later — two captures within one second (or after the clock went back) would
    otherwise share a suffix, and the second's snapshot would fail. Call it under the writer
    locks, which make captures take their instants one after another."""
    latest = conn.execute(sql.SQL("SELECT max(suffix) FROM {}").format(sql.Identifier(schema, REGISTRY))).fetchone()[0]
    if latest is None or make_suffix(now) > latest:
        return now
    later = dt.datetime.strptime(latest, SUFFIX_FORMAT).replace(tzinfo=dt.timezone.utc) + dt.timedelta(seconds=1)
    if later - now > dt.timedelta(seconds=2):
        log.warning("the clock (%s) is behind the latest capture %s: this capture is named %s", make_suffix(now),
                    latest, make_suffix(later))
    return later


def capture_state(row: dict[str, Any], running: bool) -> tuple[str, str | None]:
    """(state, hint) of a registry row: "running", "interrupted", "finished", "restored" or
    "failed" (the snapshot failed: nothing changed); the hint says what to do, if anything."""
    status, suffix = row["status"], row["suffix"]
    if running:
        return "running", None
    if status == "restored":
        return "restored", None
    if status == "snapshot_failed":
        return "failed", "nothing was changed"
    if row.get("verdict") is not None:
        if status == "rebuild_failed" and not row.get("scratch_schema"):
            return "finished", f"the rebuild failed: run `ta-lab2 baseline restore {suffix}` to put the snapshot back"
        return "finished", None
    if status in CHANGED_PHASES and not row.get("scratch_schema"):
        return "interrupted", (f"interrupted after it changed the live tables: run `ta-lab2 baseline restore {suffix}` "
                               "to put the snapshot back")
    return "interrupted", f"interrupted before changing anything: `ta-lab2 baseline drop {suffix}` removes its copies"


@dataclass(frozen=True)
class SnapshotInfo:
    table: str
    snapshot: str  # schema-qualified name
    rows: int
    key: tuple[str, ...]


def _ids_clause(ids: Sequence[int] | None) -> sql.Composable:
    return sql.SQL("") if ids is None else sql.SQL(" WHERE id = ANY({})").format(sql.Literal(list(ids)))


def check_tables(conn: psycopg.Connection, tables: Sequence[str], schema: str = "public") -> None:
    missing = [t for t in [*tables, *aux_tables()] if conn.execute(
        "SELECT to_regclass(%s)", (sql.Identifier(schema, t).as_string(conn),)).fetchone()[0] is None]
    if missing:
        raise DatabaseError(f"missing table(s): {', '.join(missing)}", hint="run `ta-lab2 init`, then build the tables")


def registry_insert(conn: psycopg.Connection, suffix: str, captured_at: dt.datetime, ids: Sequence[int] | None,
                    scratch: str | None, schema: str = "public") -> None:
    with conn.transaction():
        try:
            conn.execute(
                sql.SQL("INSERT INTO {} (suffix, captured_at, status, ids, scratch_schema, aux_schema) "
                        "VALUES (%s, %s, 'started', %s, %s, %s)").format(sql.Identifier(schema, REGISTRY)),
                (suffix, captured_at, None if ids is None else list(ids), scratch, aux_schema(suffix)),
            )
        except psycopg.errors.UniqueViolation:
            raise UsageError(f"a capture with suffix {suffix} already exists; wait a second and retry") from None


def registry_update(conn: psycopg.Connection, suffix: str, schema: str = "public", **fields: Any) -> None:
    """Record progress (``status`` = the phase reached) — committed at once, so a killed capture
    leaves a registry row saying how far it got."""
    sets = [sql.SQL("updated_at = now()")]
    values: list[Any] = []
    for name, value in fields.items():
        sets.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
        values.append(json.dumps(value, default=str) if name in ("tables", "metadata") else value)
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE {} SET {} WHERE suffix = %s").format(
            sql.Identifier(schema, REGISTRY), sql.SQL(", ").join(sets)), (*values, suffix))


def registry_row(conn: psycopg.Connection, suffix: str, schema: str = "public") -> dict[str, Any]:
    cur = conn.execute(sql.SQL("SELECT * FROM {} WHERE suffix = %s").format(sql.Identifier(schema, REGISTRY)), (suffix,))
    row = cur.fetchone()
    if row is None:
        raise UsageError(f"no capture with suffix {suffix}; see `ta-lab2 baseline list`")
    return dict(zip([d.name for d in cur.description], row))


def take_snapshots(conn: psycopg.Connection, suffix: str, tables: Sequence[str], ids: Sequence[int] | None,
                   schema: str = "public", helper: psycopg.Connection | None = None) -> list[SnapshotInfo]:
    """Phase 1: copy ``tables`` (+ every state table and the 1D rejects) for ``ids`` as of ONE
    instant, add the real primary keys, verify every row count against the source at that
    instant. Raises (and creates nothing) when anything fails.

    Without ``helper``: one repeatable-read transaction. With ``helper`` (an idle autocommit
    connection): the largest tables are split between two repeatable-read transactions that
    share the first one's exported snapshot, so they see the same instant and two cores copy
    at once; the helper commits only when both sides succeeded, then the first. Only a failure
    of that last commit can leave the helper's copies behind; they are then dropped (and
    ``baseline drop`` removes any a killed process left)."""
    aux = aux_schema(suffix)
    where = _ids_clause(ids)
    copies = [_Copy(n, table, target) for n, (table, target) in enumerate(
        [*((t, sql.Identifier(schema, snapshot_name(t, suffix))) for t in tables),
         *((t, sql.Identifier(aux, t)) for t in aux_tables())], start=1)]
    shared: list[_Copy] = []
    helper_committed = False
    try:
        with conn.transaction():
            _snapshot_transaction(conn)
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(aux)))
            if helper is None:
                return [_copy(conn, c, suffix, schema, where) for c in copies]
            exported = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            theirs = set(_helper_share(conn, tables, schema))
            shared = [c for c in copies if c.table in theirs]
            mine = [c for c in copies if c.table not in theirs]
            with helper.transaction():
                _snapshot_transaction(helper, exported)
                done = _copy_both(conn, mine, helper, shared, suffix, schema, where)
            helper_committed = True  # the first transaction commits next
        return [done[c.n] for c in copies]
    except BaseException:
        if helper_committed:
            _drop_copies(helper, [c.target for c in shared])
        raise


class _Copy(NamedTuple):
    n: int  # its place in the capture (the constraint name's number)
    table: str
    target: sql.Identifier


def _copy_both(conn: psycopg.Connection, mine: Sequence[_Copy], helper: psycopg.Connection, shared: Sequence[_Copy],
               suffix: str, schema: str, where: sql.Composable) -> dict[int, SnapshotInfo]:
    """``mine`` on ``conn`` while a thread copies ``shared`` on ``helper``. A failure on either
    side cancels the other side's statement (both transactions then roll back) and is what
    this raises."""
    def other_side() -> list[SnapshotInfo]:
        try:
            return [_copy(helper, c, suffix, schema, where) for c in shared]
        except BaseException:
            conn.cancel_safe()
            raise

    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool.submit(other_side)
        try:
            own = [_copy(conn, c, suffix, schema, where) for c in mine]
        except BaseException as exc:
            helper.cancel_safe()
            cause = side.exception()
            if isinstance(exc, psycopg.errors.QueryCanceled) and cause is not None:
                raise cause from None  # cancelled because the other side failed: report why
            raise
        theirs = side.result()
    return {c.n: info for c, info in zip([*mine, *shared], [*own, *theirs])}


def _snapshot_transaction(conn: psycopg.Connection, exported: str | None = None) -> None:
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    if exported is not None:
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
    # the copies arrive in key order; a serial build from presorted rows is ~2x faster than
    # a parallel build on 2 cores (docs/performance.md)
    conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")


def _helper_share(conn: psycopg.Connection, tables: Sequence[str], schema: str) -> list[str]:
    """The tables the second transaction copies: largest first, each to the side with fewer
    bytes so far, so both sides take about as long (the small state tables stay on the first)."""
    sizes = dict(conn.execute(
        "SELECT t, pg_relation_size(to_regclass(format('%%I.%%I', %s::text, t))) FROM unnest(%s::text[]) AS t",
        (schema, list(tables))).fetchall())
    loads = [0, 0]
    share: list[str] = []
    for table in sorted(tables, key=lambda t: -(sizes.get(t) or 0)):
        side = 0 if loads[0] <= loads[1] else 1
        loads[side] += sizes.get(table) or 0
        if side == 1:
            share.append(table)
    return share


def _copy(conn: psycopg.Connection, copy: _Copy, suffix: str, schema: str, where: sql.Composable) -> SnapshotInfo:
    n, table, target = copy
    live = sql.Identifier(schema, table)
    key = primary_key(conn, live)
    # Copied in key order (an index scan of the live table, whose days were appended out of
    # key order): the primary key is then built from presorted rows, ~3x faster than sorting
    # them (7 s for 3.4M EMA rows), and the compare's joins read both sides in the same order.
    # The rowcount is the server's own count of the rows it wrote; read-only archives: no
    # autovacuum pass competing with the rebuild and compare.
    order = sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, key))) if key else sql.SQL("")
    copied = conn.execute(sql.SQL("CREATE TABLE {} WITH (autovacuum_enabled = false) AS SELECT * FROM {}").format(
        target, live) + where + order).rowcount
    if key:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            target, sql.Identifier(constraint_name(suffix, n)), sql.SQL(", ").join(map(sql.Identifier, key))))
    expected = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(live) + where).fetchone()[0]
    if copied != expected:
        raise DatabaseError(f"snapshot of {table} has {copied} rows, the table {expected}: not verified")
    return SnapshotInfo(table, target.as_string(conn), int(copied), key)


def _drop_copies(conn: psycopg.Connection, targets: Sequence[sql.Identifier]) -> None:
    try:
        with conn.transaction():
            for target in targets:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    except Exception as exc:  # noqa: BLE001 - already failing; `baseline drop` can finish this
        log.warning("could not drop the snapshot copies of a failed capture: %s", exc)


def settle(conn: psycopg.Connection, snapshots: Sequence[SnapshotInfo]) -> None:
    """Read every row of ``snapshots`` once, largest first. The first reader of freshly
    committed rows records their commit on each page (hint bits); with data checksums, as
    the embedded server has, that writes a full image of every page to the WAL (~340 MB for
    3.4M EMA rows, 1.8 s against 0.35 s for a later read). A capture does this while the
    rebuild runs, so its compare does not."""
    for info in sorted(snapshots, key=lambda i: -i.rows):
        # count(ctid) reads the heap itself (an index-only scan would not touch the pages)
        conn.execute(sql.SQL("SELECT count(ctid) FROM {}").format(sql.SQL(info.snapshot)))


def truncate(conn: psycopg.Connection, tables: Sequence[str], ids: Sequence[int] | None, schema: str = "public") -> None:
    """Phase 2: empty the selected ids of ``tables`` and their state (bars first, then EMAs);
    other ids are never touched. Then confirms that zero rows remain for those ids."""
    ordered = [t for t in (*BAR_TABLES.values(), *EMA_TABLES.values()) if t in tables]
    targets = [x for t in ordered for x in (t, f"{t}_state")]
    if BAR_TABLES["1d"] in tables:
        targets.append("cmc_price_bars_1d_rejects")
    clear_ids(conn, targets, ids, schema)
    for t in targets:
        left = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t)) + _ids_clause(ids)).fetchone()[0]
        if left:
            raise DatabaseError(f"{t} still has {left} rows for the selected ids after truncation")


def restore(conn: psycopg.Connection, suffix: str, schema: str = "public") -> dict[str, int]:
    """Put every snapshot's rows back, in ONE transaction: either every table is back or none
    changed. Only the capture's ids are replaced (all rows when it captured every id)."""
    row = registry_row(conn, suffix, schema)
    ids = row["ids"]
    tables = row["tables"] or {}
    if not tables:
        raise UsageError(f"capture {suffix} has no verified snapshots (status {row['status']}); nothing to restore")
    restored: dict[str, int] = {}
    with _not_running(conn, suffix), conn.transaction():
        for table, info in tables.items():
            live = sql.Identifier(schema, table)
            snap = sql.SQL(info["snapshot"])  # recorded by this code from Identifier.as_string
            _replace(conn, live, snap, ids)
            restored[table] = int(info["rows"])
        aux = row["aux_schema"]
        for table in aux_tables():
            if conn.execute("SELECT to_regclass(%s)", (sql.Identifier(aux, table).as_string(conn),)).fetchone()[0]:
                _replace(conn, sql.Identifier(schema, table), sql.Identifier(aux, table), ids)
        conn.execute(sql.SQL("UPDATE {} SET status = 'restored', updated_at = now() WHERE suffix = %s").format(
            sql.Identifier(schema, REGISTRY)), (suffix,))
    return restored


def _replace(conn: psycopg.Connection, live: sql.Composable, snap: sql.Composable, ids: Sequence[int] | None) -> None:
    if ids is None:
        conn.execute(sql.SQL("DELETE FROM {}").format(live))
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(live), (list(ids),))
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(live, snap))


@contextmanager
def _not_running(conn: psycopg.Connection, suffix: str) -> Iterator[None]:
    """Hold ``suffix``'s capture lock for the block (``conn`` in autocommit); a running
    capture holds it, so drop and restore are refused while it runs."""
    with lock_if_free(conn, capture_lock(suffix)) as free:
        if not free:
            raise UsageError(f"capture {suffix} is running; wait for it to finish (`ta-lab2 baseline list` shows it)")
        yield


def drop(conn: psycopg.Connection, suffix: str, schema: str = "public", *, force: bool = False) -> int:
    """Drop a capture's snapshot tables, its auxiliary schema and its registry row. Refused for
    a running capture, and — unless ``force`` — for one that changed the live tables and was
    interrupted or failed to rebuild them (its snapshot may hold the only copy of their rows)."""
    row = registry_row(conn, suffix, schema)
    dropped = 0
    with _not_running(conn, suffix):
        state, _ = capture_state(row, running=False)
        interrupted = state == "interrupted" and row["status"] in CHANGED_PHASES
        if (interrupted or row["status"] == "rebuild_failed") and not row.get("scratch_schema") and not force:
            what = "was interrupted after it truncated" if interrupted else "failed to rebuild"
            raise UsageError(
                f"capture {suffix} {what} the live tables: its snapshot may be the only copy of their rows, and "
                "dropping it would lose them",
                hint=f"run `ta-lab2 baseline restore {suffix}` first, or pass --force to drop it anyway")
        with conn.transaction():
            for table in PIPELINE_TABLES:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, snapshot_name(table, suffix))))
                dropped += 1
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(row["aux_schema"])))
            conn.execute(sql.SQL("DELETE FROM {} WHERE suffix = %s").format(sql.Identifier(schema, REGISTRY)), (suffix,))
    return dropped


def list_captures(conn: psycopg.Connection, schema: str = "public") -> list[dict[str, Any]]:
    cur = conn.execute(
        sql.SQL(
            """
            SELECT suffix, captured_at, status, ids, scratch_schema, verdict, report, tables, message,
                   (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind = 'r' AND ((n.nspname = %s AND c.relname LIKE '%%\\_snapshot\\_' || b.suffix)
                       OR n.nspname = b.aux_schema)) AS size_bytes
            FROM {} b ORDER BY suffix DESC
            """
        ).format(sql.Identifier(schema, REGISTRY)),
        (schema,),
    )
    names = [d.name for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    for row in rows:
        row["state"], row["hint"] = capture_state(row, is_running(conn, row["suffix"]))
    return rows
