"""frames.tuples_frame and frames.instants agree with polars' own (slower) conversions."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import polars as pl

from ta_lab2.frames import epoch_us, instants, tuples_frame

UTC_US = pl.Datetime("us", "UTC")


def test_tuples_frame_equals_polars_row_construction() -> None:
    paris = ZoneInfo("Europe/Paris")
    a = dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.timezone.utc)
    b = dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.timezone.utc)
    c = dt.datetime(2024, 3, 31, 3, 30, 0, 7, tzinfo=paris)  # same zone rule, other tzinfo
    rows = [(1, "1D", a, None), (2, None, b, a), (1, "7D", c, c), (3, "1D", a, b)]
    schema = {"id": pl.Int32, "tf": pl.String, "cut": UTC_US, "wm": UTC_US}
    assert tuples_frame(rows, schema).equals(pl.DataFrame(rows, schema=schema, orient="row"))
    assert tuples_frame([], schema).schema == pl.Schema(schema)


def test_instants_round_trip_and_epoch() -> None:
    values = [dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), None,
              dt.datetime(1960, 2, 29, 12, 0, 0, 1, tzinfo=dt.timezone.utc)]
    column = pl.Series(values, dtype=UTC_US)
    assert instants(column) == column.to_list() == values
    assert [epoch_us(v) for v in values if v is not None] == column.drop_nulls().dt.epoch("us").to_list()
