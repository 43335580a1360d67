"""Tests of the bar oracle itself (tests/oracles/bars_oracle.py), no database, no project code.

* the worked example of spec 02 §3, typed in by hand;
* hand-checked calendar-aligned and calendar-anchored weeks/months (spec 02 §2.4, §2.5, §3);
* hand-checked 1D rejects and repairs (spec 02 §1);
* a property test: the oracle's loop-built windows and carried-forward aggregates equal the
  spec's closed-form formulas and a literal recomputation over W, for random gappy series.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oracles.bars_oracle import (
    BARS_1D_COLUMNS,
    MULTI_TF_COLUMNS,
    REJECT_COLUMNS,
    columns_for,
    oracle_1d,
    oracle_bars,
)

SOURCE_COLUMNS = (
    "id", "name", "timeopen", "timeclose", "timehigh", "timelow", "timestamp", "open", "high",
    "low", "close", "volume", "marketcap", "circulatingsupply", "date", "source_file", "load_ts",
)  # fmt: skip
LOAD_TS = pd.Timestamp("2024-06-01T00:00:00Z")


def T(text: str) -> pd.Timestamp:
    """A hand-written UTC instant: T('2024-01-01 23:59:59.999')."""
    return pd.Timestamp(text, tz="UTC")


def D(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def day_range(first: str, last: str, skip: tuple[str, ...] = ()) -> list[dt.date]:
    out, d = [], D(first)
    while d <= D(last):
        if d.isoformat() not in skip:
            out.append(d)
        d += dt.timedelta(days=1)
    return out


def source_row(ident: int, day: dt.date, **overrides: Any) -> dict[str, Any]:
    """A clean CoinMarketCap-like source row for ``day`` (23:59:59.999Z close)."""
    midnight = pd.Timestamp(day, tz="UTC")
    row = {
        "id": ident,
        "name": f"asset{ident}",
        "timeopen": midnight,
        "timeclose": midnight + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1),
        "timehigh": midnight + pd.Timedelta(hours=12),
        "timelow": midnight + pd.Timedelta(hours=3),
        "timestamp": midnight + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1),
        "open": 10.0,
        "high": 12.0,
        "low": 9.0,
        "close": 11.0,
        "volume": 5.0,
        "marketcap": 1000.0,
        "circulatingsupply": 100.0,
        "date": day,
        "source_file": "selfcheck",
        "load_ts": LOAD_TS,
    }
    row.update(overrides)
    return row


def source_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Object columns, so that None (NULL) and float('nan') stay distinct."""
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype="object") for c in SOURCE_COLUMNS})


def simple_daily(ident: int, days: list[dt.date]) -> pd.DataFrame:
    """Accepted 1D rows through the oracle (price = 100 + day index, so values are traceable)."""
    rows = []
    for d in days:
        i = (d - days[0]).days
        o = 100.0 + i
        rows.append(source_row(ident, d, open=o, close=o + 0.5, high=o + 2, low=o - 1, volume=1.0))
    accepted, rejects = oracle_1d(source_frame(rows))
    assert rejects.empty
    return accepted


def tf(label: str, unit: str, n: int, nominal: int | None = None) -> dict[str, Any]:
    default = {"D": n, "W": 7 * n, "M": 360 if n == 12 else 30 * n, "Y": 365 * n}[unit]
    return {"tf": label, "base_unit": unit, "tf_qty": n, "tf_days_nominal": nominal or default}


# --------------------------------------------------------------------------- spec 02 §3
# Hand-typed from the spec's table, plus the columns the table leaves implicit (worked out by
# hand from the daily data: time_high/time_low are 12:00Z/03:00Z of the earliest extreme day —
# note day 01-02 ties day 01-01's low 99, the earliest wins — and the missing-day columns).
#      seq  day     open   high   low    close  vol pos rem p_end miss time_open  t_high  t_low  where
WORKED_EXAMPLE = [
    (1, "01-01", 100, 101.5, 99, 100.5, 10, 1, 2, True, 0, "01-01", "01-01", "01-01", None),
    (1, "01-02", 100, 103.5, 99, 101.5, 20, 2, 1, True, 0, "01-01", "01-02", "01-01", None),
    (1, "01-03", 100, 105.5, 99, 102.5, 30, 3, 0, False, 0, "01-01", "01-03", "01-01", None),
    (2, "01-04", 103, 104.5, 101, 103.5, 10, 1, 2, True, 0, "01-04", "01-04", "01-04", None),
    (2, "01-06", 103, 108.5, 101, 105.5, 20, 2, 1, True, 1, "01-04", "01-06", "01-04", "2024-01-05"),
    (2, "01-07", 103, 108.5, 101, 106.5, 30, 3, 0, False, 1, "01-04", "01-06", "01-04", "2024-01-05"),
    (3, "01-08", 107, 109.5, 105, 107.5, 10, 1, 2, True, 0, "01-08", "01-08", "01-08", None),
    (3, "01-09", 107, 111.5, 105, 108.5, 20, 2, 1, True, 0, "01-08", "01-09", "01-08", None),
    (3, "01-10", 107, 111.5, 105, 109.5, 30, 3, 0, False, 0, "01-08", "01-09", "01-08", None),
]  # fmt: skip


def worked_example_source() -> pd.DataFrame:
    rows = []
    for d in day_range("2024-01-01", "2024-01-10", skip=("2024-01-05",)):
        i = (d - D("2024-01-01")).days
        o = 100.0 + i
        c = o + 0.5
        rows.append(
            source_row(
                1, d, open=o, close=c, high=max(o, c) + 1 + (i % 3), low=min(o, c) - 1 - (i % 2),
                volume=10.0, marketcap=1000.0 + i,
            )  # fmt: skip
        )
    return source_frame(rows)


def test_worked_example_rolling_3d() -> None:
    daily, rejects = oracle_1d(worked_example_source())
    assert rejects.empty
    assert len(daily) == 9
    out = oracle_bars(daily, "rolling", [tf("3D", "D", 3)])
    assert list(out.columns) == list(MULTI_TF_COLUMNS)
    assert len(out) == len(WORKED_EXAMPLE)
    for row, exp in zip(out.to_dict("records"), WORKED_EXAMPLE):
        seq, day, o, h, lo, c, vol, pos, rem, p_end, miss, t_open, t_high, t_low, where = exp
        close_ts = T(f"2024-{day} 23:59:59.999")
        got = {k: row[k] for k in row}
        assert got["id"] == 1 and got["tf"] == "3D" and got["tf_days"] == 3
        assert got["bar_seq"] == seq
        assert got["timestamp"] == close_ts and got["time_close"] == close_ts
        assert got["last_ts_half_open"] == T(f"2024-{day}") + pd.Timedelta(days=1)
        assert (got["open"], got["high"], got["low"], got["close"]) == (o, h, lo, c)
        assert got["volume"] == vol
        assert got["market_cap"] == 1000.0 + (D(f"2024-{day}") - D("2024-01-01")).days
        assert got["pos_in_bar"] == pos and got["count_days"] == pos
        assert got["count_days_remaining"] == rem
        assert got["is_partial_end"] is p_end
        assert got["is_partial_start"] is False
        assert got["count_missing_days"] == miss and got["is_missing_days"] is (miss > 0)
        assert got["count_missing_days_start"] == 0 and got["count_missing_days_end"] == 0
        assert got["count_missing_days_interior"] == miss
        assert got["missing_days_where"] == where
        assert got["first_missing_day"] == (D(where) if where else None)
        assert got["last_missing_day"] == (D(where) if where else None)
        assert got["time_open"] == T(f"2024-{t_open} 00:00:00")
        assert got["time_high"] == T(f"2024-{t_high} 12:00:00")
        assert got["time_low"] == T(f"2024-{t_low} 03:00:00")


def test_worked_example_1d_table() -> None:
    daily, _ = oracle_1d(worked_example_source())
    assert list(daily.columns) == list(BARS_1D_COLUMNS)
    # bar_seq = rank among all source rows: 01-06 is the 5th row (01-05 is absent from the source)
    assert daily["bar_seq"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert daily["time_open"].iloc[0] == T("2024-01-01 00:00:00")
    assert (daily["tf"] == "1D").all()
    flags = ["repaired_high", "repaired_low", "repaired_timehigh", "repaired_timelow",
             "is_partial_start", "is_partial_end", "is_missing_days"]  # fmt: skip
    assert not daily[flags].to_numpy().any()
    assert (daily["src_name"] == "asset1").all() and (daily["src_file"] == "selfcheck").all()
    assert (daily["src_load_ts"] == LOAD_TS).all()


# --------------------------------------------------------------------------- calendar-aligned
def test_cal_iso_week_starts_at_first_monday() -> None:
    # Data begins Wednesday 2024-01-03; 01-10 is missing.
    daily = simple_daily(7, day_range("2024-01-03", "2024-01-16", skip=("2024-01-10",)))
    out = oracle_bars(daily, "cal_iso", [tf("1W_CAL_ISO", "W", 1)])
    assert list(out.columns) == list(MULTI_TF_COLUMNS)
    days = [t.date().isoformat()[5:] for t in out["timestamp"]]
    # nothing before Monday 01-08
    assert days == ["01-08", "01-09", "01-11", "01-12", "01-13", "01-14", "01-15", "01-16"]
    assert out["bar_seq"].tolist() == [1, 1, 1, 1, 1, 1, 2, 2]
    assert out["pos_in_bar"].tolist() == [1, 2, 3, 4, 5, 6, 1, 2]
    assert out["count_days_remaining"].tolist() == [6, 5, 3, 2, 1, 0, 6, 5]
    assert out["is_partial_end"].tolist() == [True] * 5 + [False] + [True] * 2
    assert out["count_missing_days"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert out["count_missing_days_interior"].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert out["count_missing_days_start"].tolist() == [0] * 8
    assert out["missing_days_where"].tolist() == [None, None] + ["2024-01-10"] * 4 + [None, None]
    assert (out["tf_days"] == 7).all() and not out["is_partial_start"].any()
    # time_open: the previous accepted row (Sunday 01-07, which itself is in no bar) + 1 ms
    assert (out["time_open"][:6] == T("2024-01-08 00:00:00")).all()
    assert (out["time_open"][6:] == T("2024-01-15 00:00:00")).all()
    # open of the bar = open of its first row (01-08 is index 5 -> 105); close = own close
    assert (out["open"][:6] == 105.0).all() and out["close"].iloc[5] == 111.5
    assert out["high"].tolist()[:6] == [107.0, 108.0, 110.0, 111.0, 112.0, 113.0]
    assert out["low"].tolist()[:6] == [104.0] * 6
    assert out["volume"].tolist()[:6] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_cal_week_with_missing_first_day_counts_missing_start() -> None:
    daily = simple_daily(7, day_range("2024-01-03", "2024-01-14", skip=("2024-01-08",)))
    out = oracle_bars(daily, "cal_iso", [tf("1W_CAL_ISO", "W", 1)])
    assert out["timestamp"].iloc[0] == T("2024-01-09 23:59:59.999")
    assert out["count_missing_days_start"].tolist() == [1] * 6
    assert out["count_missing_days_interior"].tolist() == [0] * 6
    assert out["first_missing_day"].tolist() == [D("2024-01-08")] * 6
    assert out["pos_in_bar"].tolist() == [1, 2, 3, 4, 5, 6]
    assert out["is_partial_end"].tolist() == [True] * 5 + [False]
    # time_open of the bar: close of 01-07 + 1 ms (the previous accepted row of the series)
    assert (out["time_open"] == T("2024-01-08 00:00:00")).all()


def test_cal_us_and_multi_week_and_months() -> None:
    daily = simple_daily(7, day_range("2024-01-03", "2024-01-16"))
    us = oracle_bars(daily, "cal_us", [tf("1W_CAL_US", "W", 1)])
    assert us["timestamp"].iloc[0] == T("2024-01-07 23:59:59.999")  # first Sunday
    assert us["bar_seq"].tolist() == [1] * 7 + [2] * 3
    assert us["is_partial_end"].tolist() == [True] * 6 + [False] + [True] * 3  # canonical Sat 01-13
    two = oracle_bars(daily, "cal_iso", [tf("2W_CAL_ISO", "W", 2)])
    assert two["bar_seq"].tolist() == [1] * 9 and (two["tf_days"] == 14).all()
    assert two["count_days_remaining"].tolist() == list(range(13, 4, -1))

    # Spec 02 §2.4: 3M_CAL of an asset first seen 2024-01-20 covers Feb–Apr, May–Jul, …
    daily = simple_daily(9, day_range("2024-01-20", "2024-05-02"))
    q = oracle_bars(daily, "cal_us", [tf("3M_CAL", "M", 3)])
    assert q["timestamp"].iloc[0] == T("2024-02-01 23:59:59.999")
    first = q[q["bar_seq"] == 1]
    assert len(first) == 29 + 31 + 30 and (first["tf_days"] == 90).all()
    assert first["is_partial_end"].tolist() == [True] * 89 + [False]
    assert first["time_open"].iloc[0] == T("2024-02-01 00:00:00")
    second = q[q["bar_seq"] == 2]
    assert len(second) == 2 and (second["tf_days"] == 92).all()
    assert second["count_days_remaining"].tolist() == [91, 90]


def test_cal_year_and_hole_in_bar_seq() -> None:
    # An asset seen 2023-12-30..2024-01-03 then 2025-02-01..02-02: 1M bars Jan-2024 (seq 1) and
    # Feb-2025 (seq 14); the months in between have no data, so bar_seq has a hole.
    days = day_range("2023-12-30", "2024-01-03") + day_range("2025-02-01", "2025-02-02")
    daily = simple_daily(3, days)
    m = oracle_bars(daily, "cal_iso", [tf("1M_CAL", "M", 1)])
    assert m["bar_seq"].tolist() == [1, 1, 1, 14, 14]
    # 2025-02-01 is the 1st of its bar: its time_open is the previous accepted close + 1 ms
    assert m["time_open"].iloc[3] == T("2024-01-04 00:00:00")
    assert m["count_missing_days"].tolist() == [0, 0, 0, 0, 0]
    y = oracle_bars(daily, "cal_iso", [tf("1Y_CAL", "Y", 1)])
    assert y["bar_seq"].tolist() == [1, 1, 1, 2, 2] and y["tf_days"].tolist() == [366] * 3 + [365] * 2
    assert y["count_missing_days"].tolist() == [0, 0, 0, 31, 31]
    assert y["count_missing_days_start"].tolist() == [0, 0, 0, 31, 31]
    assert y["missing_days_where"].iloc[3].startswith("2025-01-01,2025-01-02,")
    assert y["missing_days_where"].iloc[3].endswith(",2025-01-31")


# --------------------------------------------------------------------------- calendar-anchored
def test_anchor_iso_partial_first_week() -> None:
    daily = simple_daily(5, day_range("2024-01-03", "2024-01-16"))  # Wednesday start
    out = oracle_bars(daily, "cal_anchor_iso", [tf("1W_CAL_ANCHOR_ISO", "W", 1)])
    assert list(out.columns) == list(columns_for("cal_anchor_iso"))
    first = out[out["bar_seq"] == 1]
    assert [t.date() for t in first["timestamp"]] == day_range("2024-01-03", "2024-01-07")
    assert first["is_partial_start"].tolist() == [True] * 5
    assert (first["tf_days"] == 7).all()
    assert (first["bar_anchor_offset"] == (D("2024-01-01") - D("1970-01-01")).days).all()
    assert (first["bar_anchor_offset"] == 19723).all()
    assert first["count_days_remaining"].tolist() == [4, 3, 2, 1, 0]
    assert first["is_partial_end"].tolist() == [True, True, True, True, False]
    assert (first["count_missing_days"] == 0).all()  # expected starts at the first day
    assert (first["time_open"] == T("2024-01-03 00:00:00")).all()
    second = out[out["bar_seq"] == 2]
    assert len(second) == 7 and not second["is_partial_start"].any()
    assert (second["bar_anchor_offset"] == 19730).all()
    assert out[out["bar_seq"] == 3]["pos_in_bar"].tolist() == [1, 2]


def test_anchor_us_two_week_and_month() -> None:
    daily = simple_daily(5, day_range("2024-01-03", "2024-01-16"))
    us = oracle_bars(daily, "cal_anchor_us", [tf("1W_CAL_ANCHOR_US", "W", 1)])
    first = us[us["bar_seq"] == 1]  # Sun 2023-12-31 .. Sat 2024-01-06
    assert len(first) == 4 and first["is_partial_start"].all()
    assert (first["bar_anchor_offset"] == 19722).all()
    assert first["count_days_remaining"].tolist() == [3, 2, 1, 0]
    two = oracle_bars(daily, "cal_anchor_iso", [tf("2W_CAL_ANCHOR_ISO", "W", 2)])
    # w = (2024-01-01 − 1970-01-05)/7 = 2817; ws = REF + 14·1408 = 2023-12-25 .. 2024-01-07
    first = two[two["bar_seq"] == 1]
    assert len(first) == 5 and (first["tf_days"] == 14).all()
    assert (first["bar_anchor_offset"] == (D("2023-12-25") - D("1970-01-01")).days).all()
    assert first["count_days_remaining"].tolist() == [4, 3, 2, 1, 0]
    assert two[two["bar_seq"] == 2]["bar_anchor_offset"].iloc[0] == 19730
    month = oracle_bars(daily, "cal_anchor_us", [tf("1M_CAL_ANCHOR", "M", 1)])
    assert month["bar_seq"].tolist() == [1] * 14 and month["is_partial_start"].all()
    assert (month["tf_days"] == 31).all() and (month["bar_anchor_offset"] == 19723).all()
    assert month["count_days_remaining"].tolist() == list(range(28, 14, -1))
    three_y = oracle_bars(daily, "cal_anchor_iso", [tf("3Y_CAL_ANCHOR", "Y", 3)])
    # 3Y windows on the year-0 grid: 2022–2024 contains 2024
    assert (three_y["bar_anchor_offset"] == (D("2022-01-01") - D("1970-01-01")).days).all()
    assert (three_y["tf_days"] == 365 + 365 + 366).all()


# --------------------------------------------------------------------------- 1D rejects/repairs
def test_1d_rejects_in_order_and_duplicates_among_valid_rows() -> None:
    nan, inf = float("nan"), float("inf")
    d = day_range("2024-03-01", "2024-03-12")
    rows = [
        source_row(2, d[0], open=None),  # open_not_finite
        source_row(2, d[1], open=nan, close=None),  # open_not_finite (first reason wins)
        source_row(2, d[2], close=inf),  # close_not_finite
        source_row(2, d[3], low=-1.0, volume=-5.0),  # non_positive_price before bad_volume
        source_row(2, d[4], volume=nan),  # bad_volume
        source_row(2, d[5], volume=None),  # accepted, NULL volume
        source_row(2, d[6], timeopen=T("2024-03-08 00:00"), timeclose=T("2024-03-07 23:00")),
        # day 8: two rows; the later one is invalid -> the earlier (valid) one is accepted
        source_row(2, d[7], timestamp=T("2024-03-08 12:00"), timeclose=None),
        source_row(2, d[7], volume=inf),
        # day 9: two valid rows -> the later is accepted, the earlier is duplicate_local_day
        source_row(2, d[8], timestamp=T("2024-03-09 06:00"), timeclose=None),
        source_row(2, d[8]),
        source_row(2, d[9], high=-inf),  # not rejected: a non-finite high is repaired
        source_row(2, d[10], high=0.0),  # non_positive_price (0 counts)
        source_row(2, d[11], timeopen=None, timeclose=None),
    ]
    accepted, rejects = oracle_1d(source_frame(rows))
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    got = [(t.isoformat(), seq, reason) for t, seq, reason in zip(rejects["timestamp"], rejects["bar_seq"], rejects["reason"])]
    assert got == [
        ("2024-03-01T23:59:59.999000+00:00", 1, "open_not_finite"),
        ("2024-03-02T23:59:59.999000+00:00", 2, "open_not_finite"),
        ("2024-03-03T23:59:59.999000+00:00", 3, "close_not_finite"),
        ("2024-03-04T23:59:59.999000+00:00", 4, "non_positive_price"),
        ("2024-03-05T23:59:59.999000+00:00", 5, "bad_volume"),
        ("2024-03-07T23:59:59.999000+00:00", 7, "time_open_after_time_close"),
        ("2024-03-08T23:59:59.999000+00:00", 9, "bad_volume"),
        ("2024-03-09T06:00:00+00:00", 10, "duplicate_local_day"),
        ("2024-03-11T23:59:59.999000+00:00", 13, "non_positive_price"),
    ]
    assert accepted["bar_seq"].tolist() == [6, 8, 11, 12, 14]
    assert accepted["volume"].tolist() == [None, 5.0, 5.0, 5.0, 5.0]
    day8 = accepted.iloc[1]
    assert day8["timestamp"] == T("2024-03-08 12:00") and day8["time_close"] == T("2024-03-08 12:00")
    # the timehigh 12:00 is inside [00:00, 12:00] (closed interval): kept
    assert day8["time_high"] == T("2024-03-08 12:00") and not day8["repaired_timehigh"]
    repaired = accepted.iloc[3]  # high = -inf -> max(open, close), repaired_high
    assert repaired["high"] == 11.0 and repaired["repaired_high"] and not repaired["repaired_timehigh"]
    coalesced = accepted.iloc[4]
    assert coalesced["time_open"] == T("2024-03-11 23:59:59.999") + pd.Timedelta(milliseconds=1)
    assert coalesced["time_close"] == coalesced["timestamp"]


def test_1d_repairs() -> None:
    d = day_range("2024-04-01", "2024-04-06")
    rows = [
        # timehigh NULL: time_high = time_close, high kept
        source_row(4, d[0], timehigh=None),
        # timehigh outside the candle, close >= open: high = max(o, c) at time_close
        source_row(4, d[1], timehigh=T("2024-04-01 12:00"), high=50.0),
        # timelow outside, close > open: low = min(o, c) at time_open
        source_row(4, d[2], timelow=T("2024-04-04 00:00"), low=1.0),
        # high below max(open, close) -> high = max(o, c, low)
        source_row(4, d[3], high=10.5),
        # low above min(open, close) -> low = min(o, c, high); low NULL -> min(o, c)
        source_row(4, d[4], low=10.5),
        source_row(4, d[5], low=None, open=11.0, close=10.0, timelow=T("2024-04-07 00:00")),
    ]
    a, rejects = oracle_1d(source_frame(rows))
    assert rejects.empty
    r = a.to_dict("records")
    assert r[0]["time_high"] == T("2024-04-01 23:59:59.999") and r[0]["high"] == 12.0
    assert r[0]["repaired_timehigh"] and not r[0]["repaired_high"]
    assert r[1]["high"] == 11.0 and r[1]["time_high"] == T("2024-04-02 23:59:59.999")
    assert r[1]["repaired_timehigh"] and not r[1]["repaired_high"]
    assert r[2]["low"] == 10.0 and r[2]["time_low"] == T("2024-04-03 00:00")
    assert r[2]["repaired_timelow"] and not r[2]["repaired_low"]
    assert r[3]["high"] == 11.0 and r[3]["repaired_high"] and r[3]["time_high"] == T("2024-04-04 12:00")
    assert r[4]["low"] == 10.0 and r[4]["repaired_low"] and not r[4]["repaired_timelow"]
    # low NULL -> 10 (repaired_low); timelow outside, close < open -> time_low = time_close
    assert r[5]["low"] == 10.0 and r[5]["repaired_low"] and r[5]["repaired_timelow"]
    assert r[5]["time_low"] == T("2024-04-06 23:59:59.999")


def test_1d_local_day_follows_tz() -> None:
    # 12:00Z and 23:59:59.999Z of 2024-05-01 are one UTC day but two Tokyo days (21:00, 08:59).
    rows = [
        source_row(8, D("2024-05-01"), timestamp=T("2024-05-01 12:00"), timeclose=None),
        source_row(8, D("2024-05-01")),
    ]
    _, rej_utc = oracle_1d(source_frame(rows), tz="UTC")
    assert rej_utc["reason"].tolist() == ["duplicate_local_day"]
    acc_tokyo, rej_tokyo = oracle_1d(source_frame(rows), tz="Asia/Tokyo")
    assert rej_tokyo.empty and len(acc_tokyo) == 2


def test_missing_days_where_is_capped_at_50() -> None:
    days = [D("2024-01-01"), D("2024-03-01")]  # 59 missing days in between (2024 is leap)
    daily = simple_daily(1, days)
    out = oracle_bars(daily, "rolling", [tf("2D", "D", 2)])
    last = out.iloc[1]
    assert last["count_missing_days"] == 59
    listed = last["missing_days_where"].split(",")
    assert len(listed) == 51 and listed[0] == "2024-01-02" and listed[49] == "2024-02-20"
    assert listed[50] == "...(+9)"
    assert last["first_missing_day"] == D("2024-01-02") and last["last_missing_day"] == D("2024-02-29")


def test_empty_inputs_keep_columns() -> None:
    accepted, rejects = oracle_1d(source_frame([]))
    assert list(accepted.columns) == list(BARS_1D_COLUMNS) and accepted.empty
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    out = oracle_bars(accepted, "cal_anchor_us", [tf("1W_CAL_ANCHOR_US", "W", 1)])
    assert list(out.columns) == list(columns_for("cal_anchor_us")) and out.empty


# --------------------------------------------------------------------------- property check
def _add_months(d: dt.date, n: int) -> dt.date:
    k = d.year * 12 + d.month - 1 + n
    return dt.date(k // 12, k % 12 + 1, 1)


def spec_window(d: dt.date, first_day: dt.date, family: str, unit: str, n: int) -> tuple | None:
    """Closed-form formulas typed from spec 02 §2.4/§2.5: (bar_seq, start_eff, end, tf_days,
    is_partial_start, anchor_offset) or None. Independent of the oracle's loop enumeration."""
    wsd = 0 if family.endswith("_iso") else 6
    day = dt.timedelta(days=1)
    if not family.startswith("cal_anchor"):
        if unit == "W":
            anchor = first_day + dt.timedelta(days=(wsd - first_day.weekday()) % 7)
        elif unit == "M":
            anchor = first_day if first_day.day == 1 else _add_months(first_day, 1)
        else:
            anchor = first_day if (first_day.month, first_day.day) == (1, 1) else dt.date(first_day.year + 1, 1, 1)
        if d < anchor:
            return None
        if unit == "W":
            idx = (d - anchor).days // (7 * n)
            start = anchor + dt.timedelta(days=7 * n * idx)
            end = start + dt.timedelta(days=7 * n - 1)
        elif unit == "M":
            idx = (12 * (d.year - anchor.year) + d.month - anchor.month) // n
            start = _add_months(anchor, n * idx)
            end = _add_months(start, n) - day
        else:
            idx = (d.year - anchor.year) // n
            start = dt.date(anchor.year + n * idx, 1, 1)
            end = dt.date(start.year + n - 1, 12, 31)
        return (idx + 1, start, end, (end - start).days + 1, False, None)

    def window(x: dt.date) -> tuple[dt.date, dt.date]:
        if unit == "W":
            ref = dt.date(1970, 1, 5) if wsd == 0 else dt.date(1970, 1, 4)
            weekstart = x - dt.timedelta(days=(x.weekday() - wsd) % 7)
            w = (weekstart - ref).days // 7
            ws = ref + dt.timedelta(days=7 * n * (w // n))
            return ws, ws + dt.timedelta(days=7 * n - 1)
        if unit == "M":
            ws = dt.date(x.year, (x.month - 1) // n * n + 1, 1)
            return ws, _add_months(ws, n) - day
        s = x.year // n * n
        return dt.date(s, 1, 1), dt.date(s + n - 1, 12, 31)

    ws, we = window(d)
    ws_first, _ = window(first_day)
    if unit == "W":
        seq = (ws - ws_first).days // (7 * n) + 1
    elif unit == "M":
        seq = (12 * (ws.year - ws_first.year) + ws.month - ws_first.month) // n + 1
    else:
        seq = (ws.year - ws_first.year) // n + 1
    eff = max(ws, first_day)
    return (seq, eff, we, (we - ws).days + 1, eff > ws, (ws - dt.date(1970, 1, 1)).days)


@st.composite
def gappy_daily(draw: st.DrawFn) -> pd.DataFrame:
    start = draw(st.dates(min_value=dt.date(1999, 11, 20), max_value=dt.date(2026, 2, 10)))
    length = draw(st.integers(min_value=1, max_value=120))
    present = [True] + [draw(st.booleans()) or draw(st.booleans()) for _ in range(length - 1)]
    rows = []
    for k, keep in enumerate(present):
        if not keep:
            continue
        d = start + dt.timedelta(days=k)
        close_ts = pd.Timestamp(d, tz="UTC") + pd.Timedelta(days=1) - pd.Timedelta(milliseconds=1)
        o = float(draw(st.integers(1, 4)))
        c = float(draw(st.integers(1, 4)))
        rows.append(
            {
                "id": 42,
                "timestamp": close_ts,
                "time_high": close_ts - pd.Timedelta(hours=draw(st.integers(0, 23))),
                "time_low": close_ts - pd.Timedelta(hours=draw(st.integers(0, 23))),
                "open": o,
                "high": max(o, c) + draw(st.integers(0, 2)),  # small ints: plenty of ties
                "low": min(o, c) - draw(st.integers(0, 1)) * 0.5,
                "close": c,
                "volume": draw(st.one_of(st.none(), st.floats(0.1, 10.0))),
                "market_cap": draw(st.one_of(st.none(), st.floats(1.0, 1e9))),
            }
        )
    return pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype="object") for k in rows[0]})


FAMILY_TFS = [
    ("rolling", tf("1D", "D", 1)), ("rolling", tf("3D", "D", 3)), ("rolling", tf("7D", "D", 7)),
    ("cal_iso", tf("1W_CAL_ISO", "W", 1)), ("cal_us", tf("2W_CAL_US", "W", 2)),
    ("cal_us", tf("1M_CAL", "M", 1)), ("cal_iso", tf("3M_CAL", "M", 3)),
    ("cal_iso", tf("9M_CAL", "M", 9)), ("cal_us", tf("1Y_CAL", "Y", 1)),
    ("cal_anchor_iso", tf("1W_CAL_ANCHOR_ISO", "W", 1)),
    ("cal_anchor_us", tf("3W_CAL_ANCHOR_US", "W", 3)),
    ("cal_anchor_iso", tf("2M_CAL_ANCHOR", "M", 2)), ("cal_anchor_us", tf("3M_CAL_ANCHOR", "M", 3)),
    ("cal_anchor_iso", tf("6M_CAL_ANCHOR", "M", 6)), ("cal_anchor_us", tf("12M_CAL_ANCHOR", "M", 12)),
    ("cal_anchor_iso", tf("1Y_CAL_ANCHOR", "Y", 1)), ("cal_anchor_us", tf("2Y_CAL_ANCHOR", "Y", 2)),
]  # fmt: skip


@pytest.mark.slow
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(daily=gappy_daily(), choice=st.sampled_from(FAMILY_TFS))
def test_oracle_matches_closed_forms_and_literal_definition(daily: pd.DataFrame, choice: tuple) -> None:
    family, spec_tf = choice
    out = oracle_bars(daily, family, [spec_tf])
    recs = sorted(daily.to_dict("records"), key=lambda r: r["timestamp"])
    first_day = recs[0]["timestamp"].date()
    n, unit = spec_tf["tf_qty"], spec_tf["base_unit"]

    # Which rows fall in which bar, from the closed forms (rolling: by row index).
    expected_rows = []
    for k, r in enumerate(recs):
        d = r["timestamp"].date()
        if family == "rolling":
            w = (k // n + 1, None, None, n, False, None)
        else:
            w = spec_window(d, first_day, family, unit, n)
        if w is not None:
            expected_rows.append((k, w))
    assert len(out) == len(expected_rows)

    for got, (k, w) in zip(out.to_dict("records"), expected_rows):
        seq, start, end, tf_days, partial_start, offset = w
        members = [
            j for j, (jj, ww) in enumerate(expected_rows) if ww[0] == seq
        ]  # positions in expected_rows of this bar
        bar = [recs[expected_rows[j][0]] for j in members]
        W = [r for r in bar if r["timestamp"] <= recs[k]["timestamp"]]
        F, rj = bar[0], recs[k]
        fk = expected_rows[members[0]][0]
        t_open = (recs[fk - 1]["timestamp"] if fk > 0 else F["timestamp"] - pd.Timedelta(days=1)) + pd.Timedelta(milliseconds=1)
        hi = max(r["high"] for r in W)
        lo = min(r["low"] for r in W)
        vols = [r["volume"] for r in W if r["volume"] is not None]
        vol = None
        for v in vols:
            vol = v if vol is None else vol + v
        dj = rj["timestamp"].date()
        eff = start if start is not None else F["timestamp"].date()
        expected_dates = [eff + dt.timedelta(days=i) for i in range((dj - eff).days + 1)]
        seen = {r["timestamp"].date() for r in W}
        missing = [x for x in expected_dates if x not in seen]
        run = 0
        while run < len(missing) and missing[run] == eff + dt.timedelta(days=run):
            run += 1
        canonical = len(W) == n if family == "rolling" else dj == end
        assert got["bar_seq"] == seq and got["tf_days"] == tf_days
        assert got["is_partial_start"] == partial_start
        if family.startswith("cal_anchor"):
            assert got["bar_anchor_offset"] == offset
        assert got["time_open"] == t_open and got["open"] == F["open"]
        assert got["time_close"] == rj["timestamp"] == got["timestamp"]
        assert got["high"] == hi and got["time_high"] == next(r["time_high"] for r in W if r["high"] == hi)
        assert got["low"] == lo and got["time_low"] == next(r["time_low"] for r in W if r["low"] == lo)
        assert got["close"] == rj["close"] and got["market_cap"] == rj["market_cap"]
        assert got["volume"] == vol
        assert got["pos_in_bar"] == got["count_days"] == len(W)
        assert got["count_days_remaining"] == (n - len(W) if family == "rolling" else (end - dj).days)
        assert got["is_partial_end"] == (not canonical)
        assert got["count_missing_days"] == len(missing) and got["is_missing_days"] == bool(missing)
        assert got["count_missing_days_start"] == run and got["count_missing_days_end"] == 0
        assert got["count_missing_days_interior"] == len(missing) - run
        assert got["count_days"] + got["count_missing_days"] == len(expected_dates)
        assert got["first_missing_day"] == (missing[0] if missing else None)
        assert got["last_missing_day"] == (missing[-1] if missing else None)
        listed = ",".join(x.isoformat() for x in missing[:50])
        if len(missing) > 50:
            listed += f",...(+{len(missing) - 50})"
        assert got["missing_days_where"] == (listed or None)
        # spec 02 §2.2 invariants
        assert got["high"] >= max(got["open"], got["close"])
        assert got["low"] <= min(got["open"], got["close"])
        assert got["time_open"] <= got["time_low"] <= got["time_close"]
        assert got["time_open"] <= got["time_high"] <= got["time_close"]


@pytest.mark.slow
def test_all_seeded_calendar_tfs_over_years_agree_with_pandas() -> None:
    """The oracle asserts its windows against pandas resample/offsets/periods internally; run
    it over every seeded calendar tf on a multi-year gappy series to exercise those checks."""
    days = [d for d in day_range("2019-12-29", "2026-01-03") if d.toordinal() % 11 not in (6, 7)]
    daily = simple_daily(77, days)
    weeks = (1, 2, 3, 4, 6, 8, 10)
    for scheme in ("ISO", "US"):
        cal = [tf(f"{n}W_CAL_{scheme}", "W", n) for n in weeks]
        cal += [tf(f"{n}M_CAL", "M", n) for n in (1, 2, 3, 6, 9, 12)]
        cal += [tf(f"{n}Y_CAL", "Y", n) for n in range(1, 11)]
        anchor = [tf(f"{n}W_CAL_ANCHOR_{scheme}", "W", n) for n in weeks]
        anchor += [tf(f"{n}M_CAL_ANCHOR", "M", n) for n in (1, 2, 3, 6, 12)]
        anchor += [tf(f"{n}Y_CAL_ANCHOR", "Y", n) for n in range(1, 11)]
        fam = scheme.lower()
        out_cal = oracle_bars(daily, f"cal_{fam}", cal)
        out_anchor = oracle_bars(daily, f"cal_anchor_{fam}", anchor)
        for out in (out_cal, out_anchor):
            # invariants of spec 02 §2.2
            assert (out["high"] >= out[["open", "close"]].max(axis=1)).all()
            assert (out["low"] <= out[["open", "close"]].min(axis=1)).all()
            assert (out["time_open"] <= out["time_low"]).all() and (out["time_low"] <= out["time_close"]).all()
            assert (out["time_open"] <= out["time_high"]).all() and (out["time_high"] <= out["time_close"]).all()
            canon = out[~out["is_partial_end"]]
            assert not canon.duplicated(["id", "tf", "bar_seq"]).any()
            assert not canon.duplicated(["id", "tf", "time_close"]).any()
            bars = out.assign(volume=out["volume"].astype(float)).groupby(["tf", "bar_seq"])
            for col in ("time_open", "open", "tf_days", "is_partial_start"):
                assert (bars[col].nunique() == 1).all(), col
            assert (bars["high"].diff().fillna(0) >= 0).all()
            assert (bars["low"].diff().fillna(0) <= 0).all()
            assert (bars["volume"].diff().fillna(0) >= 0).all()
        assert not out_cal["is_partial_start"].any()
        assert not out_anchor[out_anchor["bar_seq"] > 1]["is_partial_start"].any()
        # 2019-12-29 is a Sunday: the first US week is complete, the first ISO week, month and
        # year windows are partial
        first_partial = out_anchor[out_anchor["bar_seq"] == 1].groupby("tf")["is_partial_start"].all()
        assert first_partial["1W_CAL_ANCHOR_US" if scheme == "US" else "1W_CAL_ANCHOR_ISO"] == (scheme == "ISO")
        assert first_partial["1M_CAL_ANCHOR"] and first_partial["1Y_CAL_ANCHOR"]
