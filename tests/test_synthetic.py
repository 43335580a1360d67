"""Tests of the synthetic loader (spec 01, "Loaders", item 3). Pure: no database."""

from __future__ import annotations

import datetime as dt
import math
from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ta_lab2.load.source_schema import SOURCE_SCHEMA, SYMBOL_COLUMN
from ta_lab2.load.synthetic import (
    MAX_ASSETS,
    SYNTHETIC_ID_FIRST,
    SyntheticConfig,
    SyntheticUniverse,
    asset_ids,
    generate_universe,
)

UTC = dt.timezone.utc
CLEAN = {"gap_rate": 0.0, "defect_rate": 0.0}
ONE_DAY = dt.timedelta(days=1)


@lru_cache(maxsize=None)
def _gen(config: SyntheticConfig) -> SyntheticUniverse:
    return generate_universe(config)


def _per_asset_dates(frame: pl.DataFrame) -> dict[int, list[dt.date]]:
    out: dict[int, list[dt.date]] = {}
    for i, d in zip(frame["id"].to_list(), frame["date"].to_list(), strict=True):
        out.setdefault(i, []).append(d)
    return out


def _gap_lengths(dates: list[dt.date]) -> list[int]:
    """Missing-day runs between consecutive present dates (brute force)."""
    return [(b - a).days - 1 for a, b in zip(dates, dates[1:]) if (b - a).days > 1]


# --------------------------------------------------------------------------- ids / config


def test_asset_ids_are_in_the_reserved_range() -> None:
    assert asset_ids(0) == []
    assert asset_ids(3) == [9_000_001, 9_000_002, 9_000_003]
    assert asset_ids(10)[:5] == asset_ids(5)
    every = asset_ids(MAX_ASSETS)
    assert (every[0], every[-1], len(set(every))) == (9_000_001, 9_999_999, 999_999)
    assert every[-1] < 2**31  # fits the integer id column
    with pytest.raises(ValueError):
        asset_ids(MAX_ASSETS + 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_assets": -1, "days": 10, "seed": 1},
        {"n_assets": 1_000_000, "days": 10, "seed": 1},
        {"n_assets": 2, "days": 0, "seed": 1},
        {"n_assets": 2, "days": 10, "seed": -1},
        {"n_assets": 2, "days": 10, "seed": 1, "lengths": (5,)},
        {"n_assets": 2, "days": 10, "seed": 1, "lengths": (5, 0)},
        {"n_assets": 2, "days": 10, "seed": 1, "gap_rate": 1.5},
        {"n_assets": 2, "days": 10, "seed": 1, "defect_rate": -0.1},
    ],
)
def test_invalid_config_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**kwargs)


def test_empty_universe_has_schema() -> None:
    frame = generate_universe(SyntheticConfig(n_assets=0, days=10, seed=1)).frame
    assert frame.height == 0
    assert frame.schema == pl.Schema({**SOURCE_SCHEMA, SYMBOL_COLUMN: pl.String()})


# --------------------------------------------------------------------------- determinism


def test_deterministic() -> None:
    cfg = SyntheticConfig(n_assets=5, days=400, seed=42, gap_rate=0.05, defect_rate=0.05)
    a = generate_universe(cfg)
    b = generate_universe(SyntheticConfig(n_assets=5, days=400, seed=42, gap_rate=0.05,
                                          defect_rate=0.05))
    assert a.config == cfg
    assert a.frame.equals(b.frame)


def test_different_seeds_differ() -> None:
    a = _gen(SyntheticConfig(n_assets=3, days=300, seed=1)).frame
    b = _gen(SyntheticConfig(n_assets=3, days=300, seed=2)).frame
    assert not a.equals(b)
    a0 = a.filter(pl.col("id") == SYNTHETIC_ID_FIRST)
    b0 = b.filter(pl.col("id") == SYNTHETIC_ID_FIRST)
    assert a0["close"].to_list()[:50] != b0["close"].to_list()[:50]
    assert a["source_file"].unique().to_list() == ["synthetic:1"]
    assert b["source_file"].unique().to_list() == ["synthetic:2"]


def test_asset_stable_when_universe_grows() -> None:
    small = _gen(SyntheticConfig(n_assets=3, days=500, seed=9, gap_rate=0.03, defect_rate=0.03))
    big = _gen(SyntheticConfig(n_assets=12, days=500, seed=9, gap_rate=0.03, defect_rate=0.03))
    ids = asset_ids(3)
    assert big.frame.filter(pl.col("id").is_in(ids)).equals(small.frame)
    assert sorted(big.frame["id"].unique().to_list()) == sorted(asset_ids(12))


def test_rates_only_add_defects() -> None:
    """Raising the rates removes rows / corrupts fields but never changes the price path."""
    clean = _gen(SyntheticConfig(n_assets=3, days=600, seed=5, **CLEAN)).frame
    dirty = _gen(SyntheticConfig(n_assets=3, days=600, seed=5, gap_rate=0.05,
                                 defect_rate=0.05)).frame
    joined = dirty.join(clean, on=["id", "timestamp"], how="left", suffix="_c")
    assert joined["close_c"].null_count() == 0  # every dirty row exists in the clean frame
    for col in ("open", "low", "close", "volume", "circulatingsupply", "timelow"):
        assert (joined[col] == joined[f"{col}_c"]).all(), col
    assert dirty.height < clean.height


# --------------------------------------------------------------------------- shape


def test_schema_and_keys() -> None:
    frame = _gen(SyntheticConfig(n_assets=9, days=300, seed=3, gap_rate=0.05,
                                 defect_rate=0.05)).frame
    assert list(frame.schema.items()) == [*SOURCE_SCHEMA.items(), (SYMBOL_COLUMN, pl.String())]
    assert frame.select(pl.struct("id", "timestamp").is_unique().all()).item()
    keys = list(zip(frame["id"].to_list(), frame["timestamp"].to_list(), strict=True))
    assert keys == sorted(keys)
    for col in ("id", "timestamp", "name", "timeopen", "close", "date", SYMBOL_COLUMN):
        assert frame[col].null_count() == 0, col
    # symbol / name stable per id
    per_id = frame.group_by("id").agg(pl.col("name").n_unique(), pl.col(SYMBOL_COLUMN).first())
    assert (per_id["name"] == 1).all()
    assert sorted(per_id[SYMBOL_COLUMN].to_list()) == sorted(f"SYN{i}" for i in asset_ids(9))


def test_instants_brute_force() -> None:
    frame = _gen(SyntheticConfig(n_assets=4, days=90, seed=11, **CLEAN)).frame
    for row in frame.iter_rows(named=True):
        d: dt.date = row["date"]
        day_open = dt.datetime(d.year, d.month, d.day, tzinfo=UTC)
        day_close = day_open + dt.timedelta(hours=23, minutes=59, seconds=59, milliseconds=999)
        assert row["timestamp"] == day_close
        assert row["timestamp"].utcoffset() == dt.timedelta(0)
        assert row["timeclose"] == day_close
        assert row["timeopen"] == day_open
        for col in ("timehigh", "timelow"):
            t = row[col]
            assert day_open <= t <= day_close
            assert t.microsecond % 1000 == 0  # ms resolution
        assert row["timehigh"] != row["timelow"]


def test_timestamps_all_close_of_day_with_defects() -> None:
    frame = _gen(SyntheticConfig(n_assets=3, days=2000, seed=4, gap_rate=0.05,
                                 defect_rate=0.05)).frame
    ts = frame["timestamp"]
    assert (ts.dt.hour() == 23).all()
    assert (ts.dt.minute() == 59).all()
    assert (ts.dt.second() == 59).all()
    assert (ts.dt.millisecond() == 999).all()
    assert (ts.dt.microsecond() == 999_000).all()
    assert (ts.dt.date() == frame["date"]).all()
    assert frame["timeclose"].equals(frame["timestamp"].alias("timeclose"))


# --------------------------------------------------------------------------- lengths / dates


def test_listing_dates_and_lengths_differ() -> None:
    days = 1000
    frame = _gen(SyntheticConfig(n_assets=20, days=days, seed=21, **CLEAN)).frame
    per = _per_asset_dates(frame)
    lengths = {i: len(ds) for i, ds in per.items()}
    assert lengths[SYNTHETIC_ID_FIRST] == days  # asset 0 is the longest
    assert max(lengths.values()) == days
    assert all(math.ceil(0.35 * days) <= n <= days for n in lengths.values())
    assert len(set(lengths.values())) >= 15
    firsts = [ds[0] for ds in per.values()]
    assert len({d.weekday() for d in firsts}) >= 4
    assert len({d.day for d in firsts}) >= 8
    assert all(ds[-1] == dt.date(2025, 12, 31) for ds in per.values())


def test_short_days_minimum_length() -> None:
    frame = _gen(SyntheticConfig(n_assets=10, days=60, seed=2, **CLEAN)).frame
    lengths = frame.group_by("id").len()["len"].to_list()
    assert all(30 <= n <= 60 for n in lengths)
    tiny = _gen(SyntheticConfig(n_assets=4, days=5, seed=2, **CLEAN)).frame
    assert tiny.group_by("id").len()["len"].to_list() == [5, 5, 5, 5]


def test_explicit_lengths_and_end_date_honoured() -> None:
    lengths = (1, 2, 3, 31, 400, 777)
    end = dt.date(2020, 2, 29)
    frame = _gen(SyntheticConfig(n_assets=6, days=10, seed=8, end_date=end, lengths=lengths,
                                 gap_rate=0.2, defect_rate=0.05)).frame
    per = _per_asset_dates(frame)
    for aid, n in zip(asset_ids(6), lengths, strict=True):
        ds = per[aid]
        assert ds[-1] == end
        assert (ds[-1] - ds[0]).days + 1 == n
    # with gaps at 20 % the long assets must actually miss days
    assert len(per[asset_ids(6)[-1]]) < 777


# --------------------------------------------------------------------------- clean data


def test_clean_config_brute_force() -> None:
    frame = _gen(SyntheticConfig(n_assets=5, days=200, seed=13, **CLEAN)).frame
    prev: dict | None = None
    for row in frame.iter_rows(named=True):
        o, h, lo, c = row["open"], row["high"], row["low"], row["close"]
        assert min(o, h, lo, c) > 0
        assert h >= max(o, c)
        assert lo <= min(o, c)
        assert row["volume"] > 0
        assert row["circulatingsupply"] > 0
        assert row["marketcap"] is not None
        assert row["marketcap"] == pytest.approx(c * row["circulatingsupply"], rel=1e-12)
        assert row["timeopen"] <= row["timehigh"] <= row["timeclose"]
        assert row["timeopen"] <= row["timelow"] <= row["timeclose"]
        if prev is not None and prev["id"] == row["id"]:
            assert row["date"] - prev["date"] == ONE_DAY  # gap-free
            assert abs(o / prev["close"] - 1.0) < 0.01  # open ~ previous close
            assert row["circulatingsupply"] >= prev["circulatingsupply"]
        prev = row


def test_volatility_clustering() -> None:
    frame = _gen(SyntheticConfig(n_assets=3, days=5000, seed=17, **CLEAN)).frame
    for _, g in frame.group_by("id"):
        r = np.diff(np.log(g.sort("timestamp")["close"].to_numpy()))
        a = np.abs(r - r.mean())
        lag1 = np.corrcoef(a[:-1], a[1:])[0, 1]
        assert lag1 > 0.1, lag1  # i.i.d. returns would give ~0
        assert r.std() > 0.005  # a random walk, not a flat line


def test_start_prices_vary() -> None:
    frame = _gen(SyntheticConfig(n_assets=30, days=60, seed=6, **CLEAN)).frame
    first = frame.group_by("id").agg(pl.col("close").first())["close"]
    assert first.max() / first.min() > 100


# --------------------------------------------------------------------------- defects


def test_defects_present_at_configured_rate() -> None:
    rate = 0.05
    frame = _gen(SyntheticConfig(n_assets=3, days=2000, seed=4, gap_rate=rate,
                                 defect_rate=rate)).frame
    n = frame.height
    th_out = frame.filter(
        (pl.col("timehigh") < pl.col("timeopen")) | (pl.col("timehigh") > pl.col("timeclose"))
    ).height
    hi_low = frame.filter(pl.col("high") < pl.max_horizontal("open", "close")).height
    mc_null = frame["marketcap"].null_count()
    for count in (th_out, hi_low, mc_null):
        assert 0.6 * rate * n < count < 1.4 * rate * n, (count, n)
    # the timehigh defect lands on the previous day
    bad = frame.filter(pl.col("timehigh") < pl.col("timeopen"))
    assert (bad["timehigh"].dt.date() == bad["date"] - ONE_DAY).all()
    # other fields stay sane even with defects
    positive = pl.min_horizontal("open", "high", "low", "close", "volume").min()
    assert frame.select(positive).item() > 0
    assert (frame["low"] <= pl.Series(np.minimum(frame["open"], frame["close"]))).all()
    assert frame["circulatingsupply"].null_count() == 0
    # gaps
    gaps = [g for ds in _per_asset_dates(frame).values() for g in _gap_lengths(ds)]
    assert len(gaps) > 0.3 * rate * 3 * 2000
    assert set(gaps) <= {1, 2, 3, 4, 5}
    assert {1, 5} <= set(gaps)


def test_gaps_are_one_to_five_days_and_keep_endpoints() -> None:
    cfg = SyntheticConfig(n_assets=4, days=1500, seed=31, gap_rate=0.5, defect_rate=0.0)
    frame = _gen(cfg).frame
    for ds in _per_asset_dates(frame).values():
        assert ds[-1] == cfg.end_date
        gaps = _gap_lengths(ds)
        assert gaps and set(gaps) <= {1, 2, 3, 4, 5}
    full = _gen(SyntheticConfig(n_assets=4, days=1500, seed=31, **CLEAN)).frame
    firsts_full = full.group_by("id").agg(pl.col("date").min()).sort("id")
    firsts = frame.group_by("id").agg(pl.col("date").min()).sort("id")
    assert firsts.equals(firsts_full)


def test_defect_rate_only_no_gaps() -> None:
    frame = _gen(SyntheticConfig(n_assets=2, days=500, seed=1, gap_rate=0.0,
                                 defect_rate=0.1)).frame
    for ds in _per_asset_dates(frame).values():
        assert _gap_lengths(ds) == []


# --------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_assets=st.integers(1, 4),
    days=st.integers(1, 80),
    seed=st.integers(0, 2**32),
    gap_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    defect_rate=st.sampled_from([0.0, 0.1, 1.0]),
    end_date=st.dates(dt.date(1990, 1, 1), dt.date(2040, 12, 31)),
)
def test_invariants_property(
    n_assets: int, days: int, seed: int, gap_rate: float, defect_rate: float, end_date: dt.date
) -> None:
    cfg = SyntheticConfig(n_assets=n_assets, days=days, seed=seed, end_date=end_date,
                          gap_rate=gap_rate, defect_rate=defect_rate)
    frame = generate_universe(cfg).frame
    assert frame.schema == pl.Schema({**SOURCE_SCHEMA, SYMBOL_COLUMN: pl.String()})
    assert frame.select(pl.struct("id", "timestamp").is_unique().all()).item()
    assert frame.equals(frame.sort("id", "timestamp"))
    per = _per_asset_dates(frame)
    assert sorted(per) == sorted(asset_ids(n_assets))
    first = per[SYNTHETIC_ID_FIRST]  # asset 0
    assert len(first) >= min(days, 2) and (first[-1] - first[0]).days + 1 == days
    for ds in per.values():
        assert ds[-1] == end_date
        assert 1 <= (ds[-1] - ds[0]).days + 1 <= days
        assert set(_gap_lengths(ds)) <= {1, 2, 3, 4, 5}
    positive = pl.min_horizontal("open", "high", "low", "close", "volume").min()
    assert frame.select(positive).item() > 0
    assert (frame["low"] <= frame["close"]).all() and (frame["low"] <= frame["open"]).all()
    if defect_rate == 0.0:
        assert frame["marketcap"].null_count() == 0
        assert (frame["high"] >= pl.Series(np.maximum(frame["open"], frame["close"]))).all()
        assert (frame["timehigh"] >= frame["timeopen"]).all()
    if gap_rate == 0.0:
        assert all(len(ds) == (ds[-1] - ds[0]).days + 1 for ds in per.values())


def test_large_universe_shape() -> None:
    """100 assets x 6000 days (the bench's scale) generates with the expected size.
    Speed is measured by `ta-lab2 bench`, never asserted here."""
    cfg = SyntheticConfig(n_assets=100, days=6000, seed=1)
    frame = generate_universe(cfg).frame
    assert frame["id"].n_unique() == 100
    assert frame.height > 100 * 6000 * 0.35 * 0.9


def test_one_day_histories_generate() -> None:
    """A regime switch drawn on an asset's only day must not index past the volatility levels."""
    for seed in range(200):
        frame = generate_universe(SyntheticConfig(n_assets=2, days=1, seed=seed)).frame
        assert frame.height == 2
