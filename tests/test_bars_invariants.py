"""Invariants of spec 02 §2.2 on every family, as properties over random daily series
(hypothesis), and the worked example of 02 §3 typed in by hand. Pure: no database."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ta_lab2.bars.daily import validate_days
from ta_lab2.bars.families import Timeframe
from ta_lab2.bars.snapshot import SnapshotInput, prepare_days, snapshot_batch
from ta_lab2.load.synthetic import SyntheticConfig, generate_universe

UTC = dt.timezone.utc

FAMILIES = {
    "rolling": [Timeframe(f"{n}D", "rolling", "D", n, n) for n in (2, 3, 7, 30)],
    "cal": [Timeframe("1W_CAL_ISO", "cal", "W", 1, 7, "ISO"), Timeframe("2W_CAL_US", "cal", "W", 2, 14, "US"),
            Timeframe("1M_CAL", "cal", "M", 1, 30), Timeframe("3M_CAL", "cal", "M", 3, 90),
            Timeframe("1Y_CAL", "cal", "Y", 1, 365)],
    "cal_anchor": [Timeframe("1W_CAL_ANCHOR_US", "cal_anchor", "W", 1, 7, "US"),
                   Timeframe("3W_CAL_ANCHOR_ISO", "cal_anchor", "W", 3, 21, "ISO"),
                   Timeframe("1M_CAL_ANCHOR", "cal_anchor", "M", 1, 30), Timeframe("6M_CAL_ANCHOR", "cal_anchor", "M", 6, 180),
                   Timeframe("2Y_CAL_ANCHOR", "cal_anchor", "Y", 2, 730)],
}


def _daily(seed: int, days: int, gap_rate: float, defect_rate: float, end: dt.date) -> pl.DataFrame:
    src = generate_universe(SyntheticConfig(1, days, seed, end_date=end, gap_rate=gap_rate, defect_rate=defect_rate)).frame
    src = src.drop("symbol").with_columns(load_ts=pl.col("timestamp"))
    accepted, _ = validate_days(src)
    return accepted


@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 100_000),
    days=st.integers(1, 500),
    gap_rate=st.sampled_from([0.0, 0.05, 0.2]),
    end=st.dates(dt.date(2019, 1, 1), dt.date(2026, 12, 31)),
)
def test_invariants(family: str, seed: int, days: int, gap_rate: float, end: dt.date) -> None:
    daily = _daily(seed, days, gap_rate, 0.05, end)
    rows = snapshot_batch([SnapshotInput(prepare_days(daily, "UTC"), FAMILIES[family])], family)
    # one row per day and timeframe; the cal family starts at the first full period instead
    if family == "cal":
        assert rows.height <= daily.height * len(FAMILIES[family])
    else:
        assert rows.height == daily.height * len(FAMILIES[family])
    assume(not rows.is_empty())
    # the columns checked below are never NULL (polars' all() would skip a NULL)
    checked = ["open", "high", "low", "close", "time_open", "time_high", "time_low", "time_close", "timestamp",
               "last_ts_half_open", "count_days", "pos_in_bar", "tf_days", "bar_seq", "count_missing_days",
               "count_missing_days_end", "count_missing_days_interior", "count_days_remaining", "is_missing_days",
               "is_partial_start", "is_partial_end"]
    nulls = {c: n for c, n in rows.select(pl.col(checked).null_count()).row(0, named=True).items() if n}
    assert not nulls, nulls
    assert rows.select((pl.col("high") >= pl.max_horizontal("open", "close")).all()).item()
    assert rows.select((pl.col("low") <= pl.min_horizontal("open", "close")).all()).item()
    assert (rows["time_open"] <= rows["time_low"]).all() and (rows["time_open"] <= rows["time_high"]).all()
    assert (rows["time_low"] <= rows["time_close"]).all() and (rows["time_high"] <= rows["time_close"]).all()
    assert (rows["timestamp"] == rows["time_close"]).all()
    assert (rows["last_ts_half_open"] == rows["time_close"] + dt.timedelta(milliseconds=1)).all()
    assert (rows["count_days"] == rows["pos_in_bar"]).all()
    assert (rows["count_missing_days_end"] == 0).all()
    assert (rows["is_missing_days"] == (rows["count_missing_days"] > 0)).all()
    assert (rows["count_missing_days_interior"] >= 0).all()
    keyed = rows.sort("tf", "bar_seq", "time_close")
    per_bar = keyed.group_by("tf", "bar_seq", maintain_order=True).agg(
        n_open=pl.col("time_open").n_unique(), n_o=pl.col("open").n_unique(), n_days=pl.col("tf_days").n_unique(),
        n_ps=pl.col("is_partial_start").n_unique(),
        high_up=(pl.col("high").diff().fill_null(0) >= 0).all(),
        low_down=(pl.col("low").diff().fill_null(0) <= 0).all(),
        vol_up=(pl.col("volume").diff().fill_null(0) >= 0).all(),
        canon=(~pl.col("is_partial_end")).sum(),
        canon_last=pl.col("is_partial_end").last().not_() | pl.col("is_partial_end").all(),
    )
    assert (per_bar["n_open"] == 1).all() and (per_bar["n_o"] == 1).all()
    assert (per_bar["n_days"] == 1).all() and (per_bar["n_ps"] == 1).all()
    assert per_bar["high_up"].all() and per_bar["low_down"].all() and per_bar["vol_up"].all()
    assert (per_bar["canon"] <= 1).all() and per_bar["canon_last"].all()
    # count_days + count_missing_days = |expected| = days from the effective start to D_j
    day = rows["time_close"].dt.date()
    if family == "rolling":
        start = keyed.group_by("tf", "bar_seq").agg(s=pl.col("time_close").min().dt.date())
        joined = rows.join(start, on=["tf", "bar_seq"])
        span = (joined["time_close"].dt.date() - joined["s"]).dt.total_days() + 1
        assert (joined["count_days"] + joined["count_missing_days"] == span).all()
        assert (rows["count_missing_days_start"] == 0).all()
        assert (rows["count_days_remaining"] == rows["tf_days"] - rows["pos_in_bar"]).all()
    else:
        assert (rows["count_days"] + rows["count_missing_days"] <= rows["tf_days"]).all()
        assert (rows["count_days_remaining"] >= 0).all()
        assert ((rows["count_days_remaining"] == 0) == ~rows["is_partial_end"]).all()
        assert (day.is_not_null()).all()
    if family != "cal_anchor":
        assert not rows["is_partial_start"].any()


def test_worked_example_rolling_3d() -> None:
    """Spec 02 §3, typed in by hand."""
    rows = []
    for i in range(10):
        d = dt.date(2024, 1, 1) + dt.timedelta(days=i)
        if d == dt.date(2024, 1, 5):
            continue
        o = 100.0 + i
        c = o + 0.5
        rows.append(dict(
            id=1, timestamp=dt.datetime(d.year, d.month, d.day, 23, 59, 59, 999000, tzinfo=UTC), open=o, close=c,
            high=max(o, c) + 1 + (i % 3), low=min(o, c) - 1 - (i % 2), volume=10.0, market_cap=None,
            time_high=dt.datetime(d.year, d.month, d.day, 12, tzinfo=UTC),
            time_low=dt.datetime(d.year, d.month, d.day, 3, tzinfo=UTC),
        ))
    daily = pl.DataFrame(rows, schema_overrides={"market_cap": pl.Float64})
    out = snapshot_batch([SnapshotInput(prepare_days(daily, "UTC"), [Timeframe("3D", "rolling", "D", 3, 3)])], "rolling")
    got = out.select(
        "bar_seq", pl.col("time_close").dt.strftime("%m-%d").alias("day"), "open", "high", "low", "close", "volume",
        "pos_in_bar", "count_days_remaining", "is_partial_end", "count_missing_days",
        pl.col("time_open").dt.strftime("%m-%d %H:%M").alias("time_open"),
    ).rows()
    expected = [
        (1, "01-01", 100, 101.5, 99, 100.5, 10, 1, 2, True, 0, "01-01 00:00"),
        (1, "01-02", 100, 103.5, 99, 101.5, 20, 2, 1, True, 0, "01-01 00:00"),
        (1, "01-03", 100, 105.5, 99, 102.5, 30, 3, 0, False, 0, "01-01 00:00"),
        (2, "01-04", 103, 104.5, 101, 103.5, 10, 1, 2, True, 0, "01-04 00:00"),
        (2, "01-06", 103, 108.5, 101, 105.5, 20, 2, 1, True, 1, "01-04 00:00"),
        (2, "01-07", 103, 108.5, 101, 106.5, 30, 3, 0, False, 1, "01-04 00:00"),
        (3, "01-08", 107, 109.5, 105, 107.5, 10, 1, 2, True, 0, "01-08 00:00"),
        (3, "01-09", 107, 111.5, 105, 108.5, 20, 2, 1, True, 0, "01-08 00:00"),
        (3, "01-10", 107, 111.5, 105, 109.5, 30, 3, 0, False, 0, "01-08 00:00"),
    ]
    assert got == expected
    assert out.filter(pl.col("time_close").dt.day() == 6)["missing_days_where"].to_list() == ["2024-01-05"]
