"""Bulk writes from polars frames to PostgreSQL: the only way this project writes rows.

* :func:`copy_frame` writes a frame with ``COPY … FROM STDIN (FORMAT BINARY)`` (encoded by
  :mod:`ta_lab2.db.binary`) in batches of ``batch_rows`` so memory stays bounded;
* :func:`upsert_small` upserts a small frame in one statement, its columns as binary arrays;
* :func:`staged` stages a large frame in a temporary table; :func:`deferred_indexes` drops and
  rebuilds a table's indexes around a bulk load.

Target column types are read from the catalog; the frame is cast to them, so a frame column
of the wrong type is an error here rather than garbage in the table. Reading is
:mod:`ta_lab2.db.reads`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.binary import PG_TYPES, array_params, encode_binary_copy

DEFAULT_BATCH_ROWS = 200_000


@dataclass(frozen=True)
class TableRef:
    """A validated ``schema.table`` name, rendered with :func:`psycopg.sql.Identifier`."""

    schema: str
    name: str

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def table_ref(name: str, schema: str = "public") -> TableRef:
    if "." in name:
        schema, name = name.split(".", 1)
    return TableRef(schema, name)


def column_types(conn: psycopg.Connection, table: TableRef) -> dict[str, str]:
    """Column name -> PostgreSQL type name (``typname``) in table order; empty if no such table."""
    qualified = sql.Identifier(table.schema, table.name).as_string(conn)
    rows = conn.execute(
        """
        SELECT a.attname, t.typname
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (qualified,),
    ).fetchall()
    return {name: typ for name, typ in rows}



def copy_frame(
    conn: psycopg.Connection,
    table: TableRef,
    frame: pl.DataFrame,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    freeze: bool = False,
) -> int:
    """Append ``frame``'s rows to ``table`` with binary COPY; returns the number of rows written.

    Columns are matched by name (the frame may omit columns that have defaults or are NULL);
    a frame column the table does not have is an error. Runs inside the caller's transaction.
    ``freeze``: ``COPY … FREEZE`` — only for a table created or truncated in the caller's
    current (sub)transaction.
    """
    types = column_types(conn, table)
    if not types:
        raise ValueError(f"table {table} does not exist")
    unknown = [c for c in frame.columns if c not in types]
    if unknown:
        raise ValueError(f"table {table} has no column(s) {unknown}")
    unsupported = {c: types[c] for c in frame.columns if types[c] not in PG_TYPES}
    if unsupported:
        raise ValueError(f"binary COPY does not handle column types {unsupported} of {table}")
    columns = list(frame.columns)
    pg_types = [types[c] for c in columns]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", FREEZE" if freeze else "")
    )
    with conn.cursor().copy(stmt) as copy:
        for piece in encode_binary_copy(frame, pg_types, batch_rows):
            copy.write(piece)
    return frame.height


@contextmanager
def staged(conn: psycopg.Connection, like: TableRef, frame: pl.DataFrame, name: str = "_stage") -> Iterator[sql.Identifier]:
    """COPY ``frame`` into a temporary table shaped like ``like``'s columns of the same names
    (no constraints, no defaults) and yield its identifier; the table is dropped afterwards,
    also when the caller's transaction is a savepoint inside a longer one."""
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(ident))
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {st} AS SELECT {cols} FROM {t} WITH NO DATA").format(
            st=ident, t=like.ident, cols=sql.SQL(", ").join(map(sql.Identifier, frame.columns))
        )
    )
    try:
        copy_frame(conn, TableRef("pg_temp", name), frame)
        yield ident
    finally:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(ident))


def upsert_small(
    conn: psycopg.Connection,
    table: TableRef,
    frame: pl.DataFrame,
    key: Sequence[str],
    *,
    now_columns: Sequence[str] = (),
) -> int:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` of a small frame (state rows: tens to hundreds)
    in one statement: each column travels as one binary array (:func:`array_params`) through
    ``unnest``, so there is no temporary table to create and drop (:func:`staged` is for large
    frames). ``now_columns`` are set to ``now()``. Returns the number of rows written."""
    if not frame.height:
        return 0
    types = column_types(conn, table)
    unknown = [c for c in [*frame.columns, *now_columns] if c not in types]
    if unknown:
        raise ValueError(f"table {table} has no column(s) {unknown}")
    cols = list(frame.columns)
    names = sql.SQL(", ").join(map(sql.Identifier, [*cols, *now_columns]))
    arrays = sql.SQL(", ").join(sql.SQL("%b") for _ in cols)
    values = sql.SQL(", ").join([*(sql.Identifier("u", c) for c in cols), *(sql.SQL("now()") for _ in now_columns)])
    update = [c for c in [*cols, *now_columns] if c not in key]
    stmt = sql.SQL("INSERT INTO {t} ({names}) SELECT {values} FROM unnest({arrays}) AS u({cols}) "
                   "ON CONFLICT ({key}) DO UPDATE SET {set}").format(
        t=table.ident, names=names, values=values, arrays=arrays,
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        key=sql.SQL(", ").join(map(sql.Identifier, key)),
        set=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in update),
    )
    return conn.execute(stmt, array_params(conn, frame, [types[c] for c in cols])).rowcount


def index_statements(conn: psycopg.Connection, ref: TableRef) -> list[tuple[sql.Composable, sql.Composable]]:
    """Per index of ``ref`` (primary keys and unique constraints included): the statement that
    drops it and the one that creates it again exactly as it is (``pg_get_indexdef`` /
    ``pg_get_constraintdef``), constraints first."""
    table = ref.ident
    rows = conn.execute(
        """
        SELECT ic.relname, pg_get_indexdef(i.indexrelid), c.conname, pg_get_constraintdef(c.oid)
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
        WHERE i.indrelid = to_regclass(%s)
        ORDER BY c.conname IS NULL, ic.relname
        """,
        (table.as_string(conn),),
    ).fetchall()
    out: list[tuple[sql.Composable, sql.Composable]] = []
    for index_name, index_def, constraint, constraint_def in rows:
        if constraint is not None:
            out.append((sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(constraint)),
                        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(table, sql.Identifier(constraint))
                        + sql.SQL(constraint_def)))
        else:
            out.append((sql.SQL("DROP INDEX {}").format(sql.Identifier(ref.schema, index_name)), sql.SQL(index_def)))
    return out


@contextmanager
def deferred_indexes(conn: psycopg.Connection, tables: Sequence[TableRef]) -> Iterator[None]:
    """Drop every index of ``tables`` (primary keys and unique constraints included), yield,
    then create them again exactly as they were (:func:`index_statements`). Meant for bulk
    loads inside one transaction: a failure before the indexes are back must roll the
    transaction back, never commit it."""
    saved: list[sql.Composable] = []
    for ref in tables:
        for drop, create in index_statements(conn, ref):
            conn.execute(drop)
            saved.append(create)
    yield
    for statement in saved:
        conn.execute(statement)
