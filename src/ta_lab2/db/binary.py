"""PostgreSQL's binary formats, encoded from polars frames without a Python loop per row or
element: the rows of ``COPY … FROM STDIN (FORMAT BINARY)`` (:func:`encode_binary_copy`, by
pgpq) and one-dimensional array parameters (:func:`array_params`, with numpy). Instants travel
as microseconds and dates as days since 2000-01-01, PostgreSQL's epoch."""

from __future__ import annotations

import struct
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format


PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
PG_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01

#: PostgreSQL type name -> (polars dtype the frame is cast to, big-endian numpy dtype or None for text)
PG_TYPES: dict[str, tuple[pl.DataType, str | None]] = {
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



def column_payloads(frame: pl.DataFrame, pg_types: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
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
        target, np_dtype = PG_TYPES[pg_type]
        col = pl.nth(j).cast(target)
        exprs.append(col.is_null().alias(f"null{j}"))
        if np_dtype is None:
            exprs.append(col.str.len_bytes().fill_null(0).cast(pl.Int64).alias(f"v{j}"))
            texts.append(col.str.join("").alias(f"t{j}"))
        elif pg_type == "timestamptz":
            exprs.append((col.dt.epoch("us").fill_null(0) - PG_EPOCH_US).alias(f"v{j}"))
        elif pg_type == "date":
            exprs.append((col.cast(pl.Int32).fill_null(0) - PG_EPOCH_DAYS).alias(f"v{j}"))
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
        if PG_TYPES[pg_type][1] is None:
            lengths = values
            data = np.frombuffer((joined[f"t{j}"] or "").encode("utf-8"), dtype=np.uint8)
            starts = np.zeros(lengths.size, dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            lengths = lengths.astype(np.int32)
            lengths[~valid] = -1
            out.append((lengths, data, starts))
        else:
            width = np.dtype(PG_TYPES[pg_type][1]).itemsize
            out.append((np.where(valid, width, -1).astype(np.int32), values, None))
    return out


def encode_binary_copy(frame: pl.DataFrame, pg_types: Sequence[str], batch_rows: int = 200_000) -> Iterator[Any]:
    """``frame`` (columns in COPY order) as the pieces of PostgreSQL binary COPY data: the
    header, its rows in frame order (converted ``batch_rows`` at a time, so memory stays
    bounded), the trailer — bytes-like, for ``Copy.write``.

    The rows are encoded by pgpq (Arrow record batches to binary COPY, in Rust): each column is
    first cast to the polars type of its PostgreSQL type (:data:`PG_TYPES`), whose Arrow type
    pgpq maps back to that PostgreSQL type. It replaced an encoder of our own (numpy records
    per row layout): the same bytes, 4x faster on bar rows (docs/decisions.md).
    """
    from pgpq import ArrowToPostgresBinaryEncoder  # imports pyarrow: only where rows are written

    casts = [pl.nth(j).cast(PG_TYPES[t][0]) for j, t in enumerate(pg_types)]
    encoder = None
    for offset in range(0, max(frame.height, 1), batch_rows):
        # the oldest Arrow layout: strings as large_string, which pgpq encodes (not string_view)
        table = frame.slice(offset, batch_rows).select(casts).to_arrow(compat_level=pl.CompatLevel.oldest())
        if encoder is None:
            encoder = ArrowToPostgresBinaryEncoder(table.schema)
            yield encoder.write_header()
        for batch in table.to_batches():
            yield encoder.write_batch(batch)
    assert encoder is not None
    yield encoder.finish()


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
    """A column (its :func:`column_payloads` entry) as the binary form of a one-dimensional
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
            values = payload[valid].astype(PG_TYPES[pg_type][1]).view(np.uint8).reshape(-1, width)
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
    columns = column_payloads(frame, pg_types) if frame.height else [
        (np.zeros(0, np.int32), np.zeros(0, np.uint8), None)] * frame.width
    for column, pg_type in zip(columns, pg_types):
        wrapper, dumper = _ARRAY_CLASSES[pg_type]
        conn.adapters.register_dumper(wrapper, dumper)
        params.append(wrapper(_encode_array(column, pg_type)))
    return params
