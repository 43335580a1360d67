"""Bulk I/O between polars frames and PostgreSQL: the only way data moves in this project.

* :func:`copy_frame` writes a frame with ``COPY … FROM STDIN (FORMAT BINARY)``. The binary
  stream is encoded column by column with numpy (no Python loop per row, no ``executemany``,
  no ``to_sql``) in batches of ``batch_rows`` so memory stays bounded.
* :func:`read_frame` streams ``COPY (SELECT …) TO STDOUT (FORMAT CSV)`` into polars' CSV
  reader. Instants travel as integer epoch microseconds and dates as day numbers, so nothing is
  parsed from text but integers and floats (PostgreSQL prints float8 with the shortest exact
  representation, so floats round-trip bit for bit).

Target column types are read from the catalog; the frame is cast to them, so a frame column
of the wrong type is an error here rather than garbage in the table.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01
_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)
DEFAULT_BATCH_ROWS = 200_000

#: PostgreSQL type name -> (polars dtype the frame is cast to, big-endian numpy dtype or None for text)
_PG_TYPES: dict[str, tuple[pl.DataType, str | None]] = {
    "int2": (pl.Int16(), ">i2"),
    "int4": (pl.Int32(), ">i4"),
    "int8": (pl.Int64(), ">i8"),
    "float4": (pl.Float32(), ">f4"),
    "float8": (pl.Float64(), ">f8"),
    "bool": (pl.Boolean(), "u1"),
    "timestamptz": (pl.Datetime("us", "UTC"), ">i8"),
    "date": (pl.Date(), ">i4"),
    "text": (pl.String(), None),
    "varchar": (pl.String(), None),
}


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


# --------------------------------------------------------------------------- encoding
def _column_payloads(frame: pl.DataFrame, pg_types: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Every column as (field length per row, -1 for NULL; payload; text start offsets or None).

    Fixed-width types give their values as a native numpy array (NULLs filled with 0; the
    big-endian conversion happens when they are assigned into the row records). Text gives
    every value's UTF-8 bytes concatenated once (in Rust) and each row's start offset in them.
    All columns are prepared by one polars query (plus one for the text joins): per-column
    operations would cost more than encoding a short frame.
    """
    exprs: list[pl.Expr] = []
    texts: list[pl.Expr] = []
    for j, pg_type in enumerate(pg_types):
        target, np_dtype = _PG_TYPES[pg_type]
        col = pl.nth(j).cast(target)
        exprs.append(col.is_null().alias(f"null{j}"))
        if np_dtype is None:
            exprs.append(col.str.len_bytes().fill_null(0).cast(pl.Int64).alias(f"v{j}"))
            texts.append(col.str.join("").alias(f"t{j}"))
        elif pg_type == "timestamptz":
            exprs.append((col.dt.epoch("us").fill_null(0) - _PG_EPOCH_US).alias(f"v{j}"))
        elif pg_type == "date":
            exprs.append((col.cast(pl.Int32).fill_null(0) - _PG_EPOCH_DAYS).alias(f"v{j}"))
        elif pg_type == "bool":
            exprs.append(col.fill_null(False).alias(f"v{j}"))
        else:
            exprs.append(col.fill_null(0).alias(f"v{j}"))
    prepared = frame.select(exprs)
    joined = frame.select(texts).row(0, named=True) if texts else {}
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    for j, pg_type in enumerate(pg_types):
        valid = ~prepared[f"null{j}"].to_numpy()
        values = prepared[f"v{j}"].to_numpy()
        if _PG_TYPES[pg_type][1] is None:
            lengths = values
            data = np.frombuffer((joined[f"t{j}"] or "").encode("utf-8"), dtype=np.uint8)
            starts = np.zeros(lengths.size, dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            lengths = lengths.astype(np.int32)
            lengths[~valid] = -1
            out.append((lengths, data, starts))
        else:
            width = np.dtype(_PG_TYPES[pg_type][1]).itemsize
            out.append((np.where(valid, width, -1).astype(np.int32), values, None))
    return out


def encode_binary_copy(frame: pl.DataFrame, pg_types: Sequence[str], *, header: bool = True, trailer: bool = True) -> bytes:
    """Encode ``frame`` (columns in COPY order) as PostgreSQL binary COPY data.

    Row layout: int16 field count, then per field int32 length (-1 = NULL) and the big-endian
    payload. Rows that share a layout (the same NULL fields and the same text lengths) are
    encoded together as one array of packed numpy records (big-endian fields) filled by
    whole-column assignments: no Python loop per row. When rows have several layouts, each
    layout's records are scattered to their rows' byte offsets, so rows reach the table in
    frame order (serial columns number them in input order; a bulk rebuild's rows stay in
    primary-key order for its index build).
    """
    parts = [_HEADER] if header else []
    if frame.height:
        parts.extend(_encode_rows(frame, pg_types))
    if trailer:
        parts.append(_TRAILER)
    return b"".join(parts)


def _encode_rows(frame: pl.DataFrame, pg_types: Sequence[str]) -> list[bytes]:
    n = frame.height
    cols = _column_payloads(frame, pg_types)
    # Layout key per row: a NULL bit per nullable column and each text column's length, as a
    # mixed-radix number (re-densified before it could overflow).
    key = np.zeros(n, dtype=np.int64)
    ragged = False
    for lengths, _, starts in cols:
        if starts is None and not bool((lengths < 0).any()):
            continue
        ragged = True
        radix = int(lengths.max(initial=0)) + 2
        if key.max(initial=0) >= (1 << 62) // radix:
            key = np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)
        key = key * radix + (lengths + 1)
    if ragged:
        order = np.argsort(key, kind="stable")
        groups: list[np.ndarray | None] = np.split(order, np.flatnonzero(np.diff(key[order])) + 1)
    else:
        groups = [None]
    if groups[0] is None:
        out_buffer = None
    else:
        # Rows go out in frame order: each layout's records are scattered to their rows' offsets.
        row_bytes = 2 + sum(4 + np.maximum(c[0], 0).astype(np.int64) for c in cols)
        starts_out = np.zeros(n, dtype=np.int64)
        np.cumsum(row_bytes[:-1], out=starts_out[1:])
        out_buffer = np.empty(int(row_bytes.sum()), dtype=np.uint8)
    out: list[bytes] = []
    for rows in groups:
        first = 0 if rows is None else int(rows[0])
        # One packed record type per layout: field count, then (length, value) per column.
        fields: list[tuple[str, str]] = [("n", ">i2")]
        for j, ((lengths, _, starts), pg_type) in enumerate(zip(cols, pg_types)):
            width = int(lengths[first])
            fields.append((f"l{j}", ">i4"))
            if width > 0:
                fields.append((f"v{j}", f"V{width}" if starts is not None else str(_PG_TYPES[pg_type][1])))
        records = np.empty(n if rows is None else rows.size, dtype=np.dtype(fields))
        records["n"] = frame.width
        raw = records.view(np.uint8).reshape(records.size, records.dtype.itemsize)
        for j, (lengths, payload, starts) in enumerate(cols):
            records[f"l{j}"] = lengths[first]
            name = f"v{j}"
            if name not in records.dtype.names:
                continue
            if starts is None:
                records[name] = payload if rows is None else payload[rows]
            else:  # text: gather exactly this layout's bytes
                width = int(lengths[first])
                at = starts if rows is None else starts[rows]
                off = records.dtype.fields[name][1]
                raw[:, off:off + width] = payload[at[:, None] + np.arange(width)]
        if out_buffer is None:
            out.append(records.tobytes())
        else:
            width = records.dtype.itemsize
            step = max(1, (1 << 21) // width)  # bounds the index matrix to ~16 MB
            for lo in range(0, rows.size, step):
                out_buffer[starts_out[rows[lo:lo + step]][:, None] + np.arange(width)] = raw[lo:lo + step]
    return out if out_buffer is None else [out_buffer.tobytes()]


#: PostgreSQL type name -> (element type oid, array type oid), for binary array parameters.
_ARRAY_OIDS: dict[str, tuple[int, int]] = {
    "int2": (21, 1005), "int4": (23, 1007), "int8": (20, 1016), "float4": (700, 1021), "float8": (701, 1022),
    "bool": (16, 1000), "timestamptz": (1184, 1185), "date": (1082, 1182), "text": (25, 1009),
    "varchar": (1043, 1015),
}


class _EncodedArray:
    """A one-dimensional array already in PostgreSQL's binary format (see :func:`array_params`)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _EncodedArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: _EncodedArray) -> bytes:
        return obj.data


# one wrapper and one dumper class per type: a dumper's oid is a class attribute
_ARRAY_CLASSES: dict[str, tuple[type[_EncodedArray], type[Dumper]]] = {
    name: (type(f"_{name}Array", (_EncodedArray,), {"__slots__": ()}),
           type(f"_{name}ArrayDumper", (_EncodedArrayDumper,), {"oid": oids[1]}))
    for name, oids in _ARRAY_OIDS.items()
}


def _encode_array(column: tuple[np.ndarray, np.ndarray, np.ndarray | None], pg_type: str) -> bytes:
    """A column (its :func:`_column_payloads` entry) as the binary form of a one-dimensional
    ``pg_type[]`` (``array_recv``'s input): a header, then per element its int32 length (-1 =
    NULL) and big-endian payload — the same fields as in binary COPY; numpy places them."""
    elem_oid = _ARRAY_OIDS[pg_type][0]
    lengths, payload, starts = column
    n = lengths.size
    if n == 0:
        return struct.pack(">iii", 0, 0, elem_oid)
    sizes = np.maximum(lengths, 0).astype(np.int64)
    offsets = np.zeros(n, dtype=np.int64)  # of each element's length field
    np.cumsum(4 + sizes[:-1], out=offsets[1:])
    out = np.empty(int(offsets[-1] + 4 + sizes[-1]), dtype=np.uint8)
    out[offsets[:, None] + np.arange(4)] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
    if starts is None:
        valid = lengths >= 0
        width = int(sizes[valid][0]) if valid.any() else 0
        if width:
            values = payload[valid].astype(_PG_TYPES[pg_type][1]).view(np.uint8).reshape(-1, width)
            out[(offsets[valid] + 4)[:, None] + np.arange(width)] = values
    elif payload.size:  # text: each element's bytes follow its length field
        owner = np.repeat(np.arange(n), sizes)
        out[offsets[owner] + 4 + np.arange(payload.size) - starts[owner]] = payload
    return struct.pack(">iiiii", 1, int((lengths < 0).any()), elem_oid, n, 1) + out.tobytes()


def array_params(conn: psycopg.Connection, frame: pl.DataFrame, pg_types: Sequence[str]) -> list[object]:
    """``frame``'s columns as query parameters of types ``pg_types[]`` (use ``%b`` placeholders),
    encoded in binary with numpy: no Python loop per element and no text quoting, so a state
    upsert of thousands of rows costs about as much as one of ten."""
    params: list[object] = []
    columns = _column_payloads(frame, pg_types) if frame.height else [
        (np.zeros(0, np.int32), np.zeros(0, np.uint8), None)] * frame.width
    for column, pg_type in zip(columns, pg_types):
        wrapper, dumper = _ARRAY_CLASSES[pg_type]
        conn.adapters.register_dumper(wrapper, dumper)
        params.append(wrapper(_encode_array(column, pg_type)))
    return params


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
    unsupported = {c: types[c] for c in frame.columns if types[c] not in _PG_TYPES}
    if unsupported:
        raise ValueError(f"binary COPY does not handle column types {unsupported} of {table}")
    columns = list(frame.columns)
    pg_types = [types[c] for c in columns]
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", FREEZE" if freeze else "")
    )
    with conn.cursor().copy(stmt) as copy:
        copy.write(_HEADER)
        for offset in range(0, frame.height, batch_rows):
            chunk = frame.slice(offset, batch_rows)
            copy.write(encode_binary_copy(chunk, pg_types, header=False, trailer=False))
        copy.write(_TRAILER)
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


@contextmanager
def deferred_indexes(conn: psycopg.Connection, tables: Sequence[TableRef]) -> Iterator[None]:
    """Drop every index of ``tables`` (primary keys and unique constraints included), yield,
    then create them again exactly as they were (``pg_get_indexdef`` /
    ``pg_get_constraintdef``). Meant for bulk loads inside one transaction: a failure before
    the indexes are back must roll the transaction back, never commit it."""
    saved: list[sql.Composable] = []
    for ref in tables:
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
        for index_name, index_def, constraint, constraint_def in rows:
            if constraint is not None:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(constraint)))
                saved.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(table, sql.Identifier(constraint))
                             + sql.SQL(constraint_def))
            else:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(ref.schema, index_name)))
                saved.append(sql.SQL(index_def))
    yield
    for statement in saved:
        conn.execute(statement)


# --------------------------------------------------------------------------- reading
def _select_expr(column: str, dtype: pl.DataType) -> sql.Composable:
    ident = sql.Identifier(column)
    if isinstance(dtype, pl.Datetime):
        return sql.SQL("(extract(epoch from {c}) * 1000000)::int8").format(c=ident)
    if dtype == pl.Date:
        return sql.SQL("({c} - DATE '1970-01-01')").format(c=ident)
    if dtype == pl.Boolean:
        return sql.SQL("{c}::int").format(c=ident)
    return ident


def read_frame(
    conn: psycopg.Connection,
    source: sql.Composable,
    schema: Mapping[str, pl.DataType],
    params: Sequence[object] | Mapping[str, object] | None = None,
    *,
    small: bool = False,
    order_by: Sequence[str] = (),
) -> pl.DataFrame:
    """Read ``SELECT <schema columns> FROM <source>`` into a frame with exactly ``schema``.

    ``source`` is what follows ``FROM`` (a table, a join, ``t WHERE id = ANY(%s) ORDER BY …``).
    Streams via ``COPY … TO STDOUT (FORMAT CSV)``; the whole result is held in memory, so the
    caller bounds it (per id, or per batch of ids). ``small`` (a few thousand rows, e.g. one
    id's daily grid): one aggregated binary row instead, because COPY delivers every row as
    its own message and their per-message cost dominates short reads; rows come in
    ``order_by`` order (columns of ``source``), and ``source`` has no ``ORDER BY`` of its own.
    """
    if small:
        return _read_aggregated(conn, source, schema, params, order_by)
    select = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(_select_expr(c, t), sql.Identifier(c)) for c, t in schema.items()
    )
    stmt = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT CSV)").format(select, source)
    buf = io.BytesIO()
    with conn.cursor().copy(stmt, params) as copy:
        for block in copy:
            buf.write(block)
    return decode_csv(buf.getvalue(), schema)


#: Fixed-width polars types a short read sends in binary: (PostgreSQL send function,
#: big-endian numpy dtype, NULL stand-in, offset from the received value to the wire format of
#: :func:`_wire_schema`: PostgreSQL counts instants and dates from 2000-01-01)
_SEND: dict[type[pl.DataType], tuple[str, str, str, int]] = {
    pl.Float64: ("float8send", ">f8", "'NaN'::float8", 0),
    pl.Float32: ("float4send", ">f4", "'NaN'::float4", 0),
    pl.Int64: ("int8send", ">i8", "0::int8", 0),
    pl.Int32: ("int4send", ">i4", "0::int4", 0),
    pl.Int16: ("int2send", ">i2", "0::int2", 0),
    pl.Datetime: ("timestamptz_send", ">i8", "'2000-01-01 00:00:00+00'::timestamptz", _PG_EPOCH_US),
    pl.Date: ("date_send", ">i4", "'2000-01-01'::date", _PG_EPOCH_DAYS),
    pl.Boolean: ("boolsend", "u1", "false", 0),
}


def _read_aggregated(
    conn: psycopg.Connection,
    source: sql.Composable,
    schema: Mapping[str, pl.DataType],
    params: Sequence[object] | Mapping[str, object] | None,
    order_by: Sequence[str],
) -> pl.DataFrame:
    """:func:`read_frame` for short results, as one row: every row's fixed-width fields in
    their binary representation (NULLs as a stand-in) followed by its NULL flags (a bit per field),
    concatenated into one ``bytea`` that numpy reads in place as packed records; text columns
    as ``array_agg``. (Decoding arrays yields one Python object per element, and each
    aggregate costs the server a pass: one aggregate of records is several times faster.)"""
    if not order_by:
        raise ValueError("a small read needs order_by: aggregates see rows in no particular order")
    order = sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, order_by)))
    fixed = [(c, _SEND[type(t)]) for c, t in schema.items() if type(t) in _SEND]
    texts = [c for c, t in schema.items() if type(t) not in _SEND]
    aggs: list[sql.Composable] = [sql.SQL("array_agg({}{})").format(sql.Identifier(c), order) for c in texts]
    if fixed:
        fields = [sql.SQL("{f}(coalesce({c}, {null}))").format(f=sql.SQL(send[0]), c=sql.Identifier(c),
                                                               null=sql.SQL(send[2])) for c, send in fixed]
        # NULL flags: one bit per field in one int8 per row (a byte per field cost the server
        # as much as the fields themselves)
        for lo in range(0, len(fixed), 63):
            bits = sql.SQL(" | ").join(sql.SQL("(({} IS NULL)::int::int8 << {})").format(sql.Identifier(c), sql.Literal(i - lo))
                                       for i, (c, _) in enumerate(fixed[lo:lo + 63], start=lo))
            fields.append(sql.SQL("int8send({})").format(bits))
        aggs.append(sql.SQL("string_agg({}, ''::bytea{})").format(sql.SQL(" || ").join(fields), order))
    stmt = sql.SQL("SELECT count(*), {aggs} FROM {src}").format(aggs=sql.SQL(", ").join(aggs), src=source)
    with conn.cursor(binary=True) as cur:
        row = cur.execute(stmt, params).fetchone()
    if not row or not row[0]:
        return pl.DataFrame(schema=dict(schema))
    wire = _wire_schema(schema)
    columns: dict[str, pl.Series] = {c: pl.Series(c, row[1 + k], dtype=wire[c]) for k, c in enumerate(texts)}
    null_flags: dict[str, np.ndarray] = {}
    if fixed:
        words = range(0, len(fixed), 63)
        layout = np.dtype([(f"v{i}", send[1]) for i, (_, send) in enumerate(fixed)]
                          + [(f"n{lo}", ">i8") for lo in words])
        records = np.frombuffer(row[-1], dtype=layout)
        for i, (c, send) in enumerate(fixed):
            values = records[f"v{i}"].astype(np.dtype(send[1]).newbyteorder("="))
            columns[c] = pl.Series(c, values + send[3] if send[3] else values).cast(wire[c])
            lo = i - i % 63
            flags = ((records[f"n{lo}"].astype(np.int64) >> (i - lo)) & 1).astype(bool)
            if flags.any():
                null_flags[c] = flags
    raw = pl.DataFrame([columns[c] for c in schema])
    if null_flags:
        raw = raw.with_columns(pl.when(pl.Series(f)).then(None).otherwise(pl.col(c)).alias(c)
                               for c, f in null_flags.items())
    return raw.select(_from_wire(schema))


def _wire_schema(schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    """How each column travels: instants as epoch µs, dates as day numbers, booleans as ints."""
    wire: dict[str, pl.DataType] = {}
    for c, t in schema.items():
        if isinstance(t, pl.Datetime):
            wire[c] = pl.Int64()
        elif t == pl.Date:
            wire[c] = pl.Int32()
        elif t == pl.Boolean:
            wire[c] = pl.Int8()
        else:
            wire[c] = t
    return wire


def _from_wire(schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
    exprs = []
    for c, t in schema.items():
        if isinstance(t, pl.Datetime):
            exprs.append(pl.col(c).cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(t))
        elif t == pl.Date:
            exprs.append(pl.col(c).cast(pl.Date))
        elif t == pl.Boolean:
            exprs.append(pl.col(c).cast(pl.Boolean))
        else:
            exprs.append(pl.col(c))
    return exprs


def decode_csv(data: bytes, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Decode the CSV produced by :func:`read_frame` into ``schema``."""
    if not data:
        return pl.DataFrame(schema=dict(schema))
    raw = pl.read_csv(data, has_header=False, new_columns=list(schema), schema=_wire_schema(schema), quote_char='"')
    return raw.select(_from_wire(schema))
