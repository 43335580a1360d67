"""Bulk reads from PostgreSQL into polars frames (:func:`read_frame`): ``COPY (SELECT …) TO
STDOUT (FORMAT CSV)`` streamed into polars' CSV reader, or, for short results, one aggregated
row of binary records. Instants travel as integer epoch microseconds and dates as day numbers,
so nothing is parsed from text but integers and floats (PostgreSQL prints float8 with the
shortest exact representation, so floats round-trip bit for bit)."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.binary import (PG_EPOCH_DAYS, PG_EPOCH_US)


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
    pl.Datetime: ("timestamptz_send", ">i8", "'2000-01-01 00:00:00+00'::timestamptz", PG_EPOCH_US),
    pl.Date: ("date_send", ">i4", "'2000-01-01'::date", PG_EPOCH_DAYS),
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
