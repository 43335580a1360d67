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
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

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
def _column_payload(series: pl.Series, pg_type: str) -> tuple[np.ndarray, np.ndarray]:
    """One column as (field length per row with -1 for NULL, payload matrix ``(rows, width)``).

    Fixed-width types give their big-endian bytes; text is padded to the longest value so every
    row has a slot of the same width (the padding is dropped again by the encoder's mask).
    """
    target, np_dtype = _PG_TYPES[pg_type]
    s = series.cast(target)
    n = len(s)
    valid = ~s.is_null().to_numpy()
    if np_dtype is None:
        # Text: byte lengths, and every value concatenated once (in Rust) into one buffer.
        lengths = s.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
        joined = s.str.join("").item() if n else ""
        data = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        width = int(lengths.max()) if n else 0
        k = np.arange(width)
        inside = k[None, :] < lengths[:, None]
        matrix = np.zeros((n, width), dtype=np.uint8)
        if width:
            matrix[inside] = data[(offsets[:-1, None] + k[None, :])[inside]]
        lengths = lengths.astype(np.int32)
        lengths[~valid] = -1
        return lengths, matrix
    if pg_type == "timestamptz":
        values = s.dt.epoch("us").fill_null(0).to_numpy() - _PG_EPOCH_US
    elif pg_type == "date":
        values = s.cast(pl.Int32).fill_null(0).to_numpy() - _PG_EPOCH_DAYS
    elif pg_type == "bool":
        values = s.fill_null(False).to_numpy()
    else:
        values = s.fill_null(0).to_numpy()
    width = np.dtype(np_dtype).itemsize
    matrix = np.ascontiguousarray(values.astype(np_dtype)).view(np.uint8).reshape(n, width)
    return np.where(valid, width, -1).astype(np.int32), matrix


def encode_binary_copy(frame: pl.DataFrame, pg_types: Sequence[str], *, header: bool = True, trailer: bool = True) -> bytes:
    """Encode ``frame`` (columns in COPY order) as PostgreSQL binary COPY data.

    Row layout: int16 field count, then per field int32 length (-1 = NULL) and the big-endian
    payload. Rows are assembled in a padded ``(rows, max_row_bytes)`` matrix with whole-column
    slice assignments, and one boolean mask drops the padding (NULL payloads, short texts), so
    the cost is a few passes over the output bytes and no Python loop per row. Rows are
    grouped by the length of their longest text so that one long text does not pad every row
    (COPY does not care about row order).
    """
    text_cols = [c for c, t in zip(frame.columns, pg_types) if _PG_TYPES[t][1] is None]
    parts = [_HEADER] if header else []
    if text_cols and frame.height:
        longest = frame.select(
            pl.max_horizontal([pl.col(c).cast(pl.String).str.len_bytes().fill_null(0) for c in text_cols]).alias("n")
        )["n"]
        bucket = (longest.cast(pl.Float64).clip(16, None).log(2).ceil()).cast(pl.Int32)
        if bucket.n_unique() > 1:
            for _, group in frame.with_columns(_bucket=bucket).group_by("_bucket"):
                parts.append(_encode_rows(group.drop("_bucket"), pg_types))
        else:
            parts.append(_encode_rows(frame, pg_types))
    else:
        parts.append(_encode_rows(frame, pg_types))
    if trailer:
        parts.append(_TRAILER)
    return b"".join(parts)


def _encode_rows(frame: pl.DataFrame, pg_types: Sequence[str]) -> bytes:
    n = frame.height
    cols = [_column_payload(frame.to_series(i), t) for i, t in enumerate(pg_types)]
    slot = 2 + sum(4 + m.shape[1] for _, m in cols)
    matrix = np.empty((n, slot), dtype=np.uint8)
    keep: np.ndarray | None = None
    matrix[:, 0:2] = np.array([frame.width], dtype=">i2").view(np.uint8)
    off = 2
    for (lengths, payload), pg_type in zip(cols, pg_types):
        width = payload.shape[1]
        matrix[:, off : off + 4] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        matrix[:, off + 4 : off + 4 + width] = payload
        ragged = _PG_TYPES[pg_type][1] is None or bool((lengths < 0).any())
        if ragged:
            if keep is None:
                keep = np.ones((n, slot), dtype=bool)
            keep[:, off + 4 : off + 4 + width] = np.arange(width)[None, :] < lengths[:, None]
        off += 4 + width
    return matrix.tobytes() if keep is None else matrix[keep].tobytes()


def copy_frame(
    conn: psycopg.Connection,
    table: TableRef,
    frame: pl.DataFrame,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> int:
    """Append ``frame``'s rows to ``table`` with binary COPY; returns the number of rows written.

    Columns are matched by name (the frame may omit columns that have defaults or are NULL);
    a frame column the table does not have is an error. Runs inside the caller's transaction.
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
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table.ident, sql.SQL(", ").join(map(sql.Identifier, columns))
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
) -> pl.DataFrame:
    """Read ``SELECT <schema columns> FROM <source>`` into a frame with exactly ``schema``.

    ``source`` is what follows ``FROM`` (a table, a join, ``t WHERE id = ANY(%s) ORDER BY …``).
    Streams via ``COPY … TO STDOUT (FORMAT CSV)``; the whole result is held in memory, so the
    caller bounds it (per id, or per batch of ids).
    """
    select = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(_select_expr(c, t), sql.Identifier(c)) for c, t in schema.items()
    )
    stmt = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT CSV)").format(select, source)
    buf = io.BytesIO()
    with conn.cursor().copy(stmt, params) as copy:
        for block in copy:
            buf.write(block)
    return decode_csv(buf.getvalue(), schema)


def decode_csv(data: bytes, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Decode the CSV produced by :func:`read_frame` into ``schema``."""
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
    if not data:
        return pl.DataFrame(schema=dict(schema))
    raw = pl.read_csv(data, has_header=False, new_columns=list(schema), schema=wire, quote_char='"')
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
    return raw.select(exprs)


def iter_id_batches(ids: Iterable[int], size: int) -> Iterable[list[int]]:
    """Chunks of ``size`` ids, to bound memory of per-id processing."""
    batch: list[int] = []
    for i in ids:
        batch.append(i)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
