"""Binary COPY writer and CSV COPY reader: every supported type round-trips exactly
(including NULL, NaN, ±inf, extreme instants, unicode text), across batch boundaries."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from ta_lab2.db.bulk import array_params, copy_frame, table_ref
from ta_lab2.db.reads import read_frame

SCHEMA = {
    "i4": pl.Int32(),
    "i8": pl.Int64(),
    "f8": pl.Float64(),
    "b": pl.Boolean(),
    "t": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "d": pl.Date(),
}
DDL = "CREATE TABLE IF NOT EXISTS rt (i4 int4, i8 int8, f8 float8, b bool, t text, ts timestamptz, d date)"
UTC = dt.timezone.utc


def _reset(conn: psycopg.Connection) -> None:
    conn.execute(DDL)
    conn.execute("TRUNCATE rt")


def _roundtrip(conn: psycopg.Connection, frame: pl.DataFrame, batch_rows: int = 200_000) -> pl.DataFrame:
    _reset(conn)
    copy_frame(conn, table_ref("rt"), frame, batch_rows=batch_rows)
    return read_frame(conn, sql.SQL("rt ORDER BY i8"), SCHEMA)


def test_values_land_exactly(conn: psycopg.Connection) -> None:
    frame = pl.DataFrame(
        {
            "i4": [1, None, -2_147_483_648, 2_147_483_647],
            "i8": [1, 2, 3, 4],
            "f8": [0.1, None, float("nan"), -float("inf")],
            "b": [True, None, False, True],
            "t": ["7D", None, "", 'héllo, "wörld"\nline2;x'],
            "ts": [dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=UTC), None,
                   dt.datetime(1969, 12, 31, 0, 0, 0, 1, tzinfo=UTC), dt.datetime(2262, 1, 1, tzinfo=UTC)],
            "d": [dt.date(2024, 2, 29), None, dt.date(1900, 1, 1), dt.date(2100, 12, 31)],
        },
        schema=SCHEMA,
    )
    _reset(conn)
    copy_frame(conn, table_ref("rt"), frame)
    rows = conn.execute("SELECT i4, f8, b, t, ts, d FROM rt ORDER BY i8").fetchall()
    assert rows[0] == (1, 0.1, True, "7D", dt.datetime(2024, 1, 1, 23, 59, 59, 999000, tzinfo=UTC), dt.date(2024, 2, 29))
    assert rows[1] == (None, None, None, None, None, None)
    assert rows[2][0] == -2_147_483_648 and math.isnan(rows[2][1]) and rows[2][3] == ""
    assert rows[2][4] == dt.datetime(1969, 12, 31, 0, 0, 0, 1, tzinfo=UTC)
    assert rows[3][1] == -float("inf") and rows[3][3] == 'héllo, "wörld"\nline2;x'
    back = read_frame(conn, sql.SQL("rt ORDER BY i8"), SCHEMA)
    assert back.schema == pl.Schema(SCHEMA)
    assert back["i4"].to_list() == frame["i4"].to_list()
    assert back["ts"].to_list() == frame["ts"].to_list()
    assert back["t"].to_list()[3] == 'héllo, "wörld"\nline2;x'


def test_empty_frame(conn: psycopg.Connection) -> None:
    empty = pl.DataFrame(schema=SCHEMA)
    assert _roundtrip(conn, empty).height == 0


def test_batches_are_seamless(conn: psycopg.Connection) -> None:
    n = 1001
    frame = pl.DataFrame(
        {
            "i4": list(range(n)), "i8": list(range(n)), "f8": [i / 7 for i in range(n)],
            "b": [i % 3 == 0 for i in range(n)], "t": [f"x{i}" * (i % 5) for i in range(n)],
            "ts": [dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(days=i, milliseconds=i) for i in range(n)],
            "d": [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)],
        },
        schema=SCHEMA,
    )
    assert _roundtrip(conn, frame, batch_rows=97).equals(frame)


def test_unknown_column_is_refused(conn: psycopg.Connection) -> None:
    _reset(conn)
    with pytest.raises(ValueError, match="no column"):
        copy_frame(conn, table_ref("rt"), pl.DataFrame({"nope": [1]}))
    conn.rollback()


def test_missing_table_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        copy_frame(conn, table_ref("no_such_table"), pl.DataFrame({"a": [1]}))
    conn.rollback()


finite = st.floats(allow_nan=False, allow_infinity=True, width=64)
row = st.fixed_dictionaries(
    {
        "i4": st.none() | st.integers(-(2**31), 2**31 - 1),
        "f8": st.none() | finite,
        "b": st.none() | st.booleans(),
        "t": st.none() | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
        "ts": st.none() | st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)),
        "d": st.none() | st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 1, 1)),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, max_size=30))
def test_roundtrip_property(conn: psycopg.Connection, rows: list[dict]) -> None:
    frame = pl.DataFrame([{**r, "i8": i} for i, r in enumerate(rows)], schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    back = _roundtrip(conn, frame)
    assert back.height == frame.height
    for col in SCHEMA:
        assert back[col].to_list() == frame[col].to_list(), col
    # the short-read path (one aggregated binary row) returns the same frame, in order_by order
    small = read_frame(conn, sql.SQL("rt"), SCHEMA, small=True, order_by=("i8",))
    assert small.schema == pl.Schema(SCHEMA)
    for col in SCHEMA:
        a, b = small[col].to_list(), back.sort("i8")[col].to_list()
        if col == "f8":  # NaN never equals itself
            a, b = [repr(x) for x in a], [repr(x) for x in b]
        assert a == b, col


PG_TYPES = {"i4": "int4", "i8": "int8", "f8": "float8", "b": "bool", "t": "text", "ts": "timestamptz", "d": "date"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, max_size=30))
def test_array_params_property(conn: psycopg.Connection, rows: list[dict]) -> None:
    """Binary array parameters reach the server as exactly the Python values (psycopg's own
    result decoding is the oracle), NULLs and empty arrays included."""
    frame = pl.DataFrame([{**r, "i8": i} for i, r in enumerate(rows)], schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    params = array_params(conn, frame, [PG_TYPES[c] for c in frame.columns])
    names = ", ".join(frame.columns)
    got = conn.execute(f"SELECT {names} FROM unnest({', '.join(['%b'] * frame.width)}) AS u({names})",
                       params).fetchall()
    assert got == list(frame.iter_rows())  # the strategy's floats are never NaN
    typed = conn.execute("SELECT " + ", ".join(["pg_typeof(%b)::text"] * frame.width), params).fetchone()
    assert list(typed) == [SQL_ARRAY_TYPES[c] for c in frame.columns]


SQL_ARRAY_TYPES = {"i4": "integer[]", "i8": "bigint[]", "f8": "double precision[]", "b": "boolean[]", "t": "text[]",
                   "ts": "timestamp with time zone[]", "d": "date[]"}
