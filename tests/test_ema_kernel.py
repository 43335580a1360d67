"""The project's EMA kernel and series against TA-Lib (an independent C implementation) and
the worked example of spec 03 §7, typed in by hand. Pure: no database."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles.ema_oracle import chained

from ta_lab2.emas.kernel import _chained_pair, sema
from ta_lab2.emas.series import Grid, ids_rows_frame, tf_arrays


def tf_rows(kind: str, grid: Grid, *args) -> pl.DataFrame:
    """The rows of one (id, tf) as a frame: ``tf_arrays(kind, grid, *args)`` through
    ``ids_rows_frame``, as the refreshers assemble them."""
    return ids_rows_frame(kind, [(grid, [tf_arrays(kind, grid, *args)])])

CLOSES = [10, 12, 11, 13, 15, 14, 16, 18, 17, 19, 21, 20]
DAY_US = 86_400_000_000


def _grid(closes: list[float]) -> Grid:
    return Grid(1, np.arange(len(closes), dtype=np.int64) * DAY_US, np.asarray(closes, dtype=float))


@pytest.mark.parametrize("p", [2, 3, 9, 10, 21, 50, 200])
def test_sema_matches_talib_on_clean_data(p: int) -> None:
    x = np.random.default_rng(p).lognormal(4, 0.3, 1500)
    ours, ref = sema(x, p), talib.EMA(x, timeperiod=p)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.floats(0.01, 1e6), min_size=1, max_size=200), p=st.integers(1, 30))
def test_sema_matches_talib_property(xs: list[float], p: int) -> None:
    x = np.asarray(xs)
    ours, ref = sema(x, p), talib.EMA(x, timeperiod=p)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], rtol=1e-10)


def test_sema_missing_values_by_hand() -> None:
    nan = np.nan
    # seed needs p=2 consecutive values: first window without a gap is (4, 6) -> 5
    out = sema(np.array([1.0, nan, 4.0, 6.0, nan, 9.0]), 2)
    a = 2 / 3
    assert np.isnan(out[:3]).all()
    assert out[3] == 5.0
    assert out[4] == 5.0  # carried forward
    assert out[5] == a * 9.0 + (1 - a) * 5.0


def test_worked_example_multi_tf() -> None:
    """Spec 03 §7: multi_tf, tf 2D, p = 3."""
    canonical = (np.arange(12) + 1) % 2 == 0
    rows = tf_rows("bar", _grid(CLOSES), "2D", 2, canonical, [3]).rows(named=True)
    got = [(r["ts"].day, r["roll"], r["ema"], r["d1_roll"], r["d2_roll"], r["d1"], r["d2"]) for r in rows]
    expected = [  # day of the row (1970-01-<day>: grid index + 1) ...
        (6, False, 13.0, None, None, None, None),
        (7, True, 14.5, 1.5, None, None, None),
        (8, False, 15.5, 1.0, -0.5, 2.5, None),
        (9, True, 16.25, 0.75, -0.25, None, None),
        (10, False, 17.25, 1.0, 0.25, 1.75, -0.75),
        (11, True, 19.125, 1.875, 0.875, None, None),
        (12, False, 18.625, -0.5, -2.375, 1.375, -0.375),
    ]
    assert got == expected


def test_worked_example_v2() -> None:
    """Spec 03 §7: v2 on the same closes, tf 2D, p = 2 (H = 4, α = 0.4)."""
    rows = tf_rows("v2", _grid(CLOSES), "2D", 2, np.ones(12, bool), [2]).head(5).rows(named=True)
    assert [r["roll"] for r in rows] == [False, True, False, True, False]
    np.testing.assert_allclose([r["ema"] for r in rows], [11.5, 12.9, 13.34, 14.404, 15.8424], rtol=1e-14)


@pytest.mark.parametrize("n, p", [(1, 9), (2, 10), (7, 21), (30, 3)])
def test_v2_is_talib_with_period_n_times_p(n: int, p: int) -> None:
    closes = list(np.random.default_rng(n * p).lognormal(3, 0.2, 800))
    rows = tf_rows("v2", _grid(closes), f"{n}D", n, np.ones(800, bool), [p])
    ref = talib.EMA(np.asarray(closes), timeperiod=n * p)
    valid = ref[~np.isnan(ref)]
    assert rows.height == valid.size
    np.testing.assert_allclose(rows["ema"].to_numpy(), valid, rtol=1e-12)


def test_chained_snaps_only_when_asked() -> None:
    close = np.array([1.0, 2.0, 3.0, 4.0])
    anchor = np.array([np.nan, 10.0, np.nan, 20.0])
    a = 0.5
    assert chained(close, anchor, 1, a, True).tolist()[1:] == [10.0, a * 3 + (1 - a) * 10.0, 20.0]
    assert chained(close, anchor, 1, a, False).tolist()[1:] == [10.0, 6.5, a * 4 + (1 - a) * 6.5]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 120), start=st.integers(0, 130),
       alpha=st.floats(0.001, 1.0), nan_p=st.sampled_from([0.0, 0.05, 0.3]))
def test_chained_pair_is_chained_twice(seed: int, n: int, start: int, alpha: float,
                                       nan_p: float) -> None:
    """The dual series' fused pass: bit for bit the two recurrences, each computed on its own
    by the oracle (tests/oracles/ema_oracle.py)."""
    rng = np.random.default_rng(seed)
    close = rng.lognormal(3, 0.2, n)
    close[rng.random(n) < nan_p] = np.nan
    anchor = np.where(rng.random(n) < 0.3, rng.lognormal(3, 0.2, n), np.nan)
    start = min(start, n - 1)
    free, snapped = np.full(n, np.nan), np.full(n, np.nan)
    _chained_pair(close, anchor, start, alpha, free, snapped)
    for got, snap in ((free, False), (snapped, True)):
        want = chained(close, anchor, start, alpha, snap)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        bits = got[~np.isnan(got)].view(np.int64), want[~np.isnan(want)].view(np.int64)
        assert np.array_equal(*bits)


@pytest.mark.parametrize("kind", ["bar", "v2", "dual"])
def test_tf_rows_rejects_invalid_arguments(kind: str) -> None:
    grid = _grid(CLOSES)
    with pytest.raises(ValueError):
        tf_rows(kind, grid, "2D", 2, np.ones(12, bool), [3, 0])
    with pytest.raises(ValueError):
        tf_rows(kind, grid, "0D", 0, np.ones(12, bool), [3])
    if kind != "v2":  # v2 does not read the mask
        with pytest.raises(ValueError):
            tf_rows(kind, grid, "2D", 2, np.ones(11, bool), [3])
    with pytest.raises(ValueError):
        tf_rows("ema", grid, "2D", 2, np.ones(12, bool), [3])
