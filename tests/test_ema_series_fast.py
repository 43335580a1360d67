"""``tf_rows`` against a frozen copy of its pre-refactor implementation (one Python loop per
period over whole-grid numpy arrays). The copy is the behaviour to preserve, bit for bit:
same rows in the same order, same dtypes, same NULLs and the same float64 bit patterns. Its
EMAs come from the test oracle (``oracles.ema_oracle``), not the compiled kernel the code under
test calls, so a change to the kernel is seen here too. Correctness against independent
oracles (TA-Lib, pandas) lives in the other EMA tests. Pure: no database."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from oracles.ema_oracle import chained
from oracles.ema_oracle import sema as oracle_sema

from ta_lab2.emas.series import DUAL_SCHEMA, EMA_SCHEMA, KINDS, Grid, ids_rows_frame, tf_arrays
from ta_lab2.timeframes import DEFAULT_PERIODS, V2_DEFAULT_PERIODS


def tf_rows(kind: str, grid: Grid, *args) -> pl.DataFrame:
    """The rows of one (id, tf) as a frame: ``tf_arrays(kind, grid, *args)`` through
    ``ids_rows_frame``, as the refreshers assemble them."""
    return ids_rows_frame(kind, [(grid, [tf_arrays(kind, grid, *args)])])

DAY_US = 86_400_000_000


def sema(close: np.ndarray, p: int) -> np.ndarray:
    """The SMA-seeded EMA the pre-refactor code took from the compiled kernel, here from the
    oracle (one Python float operation at a time, the same order of operations): NaN in and
    out where the oracle says ``None``."""
    out = oracle_sema([None if x != x else float(x) for x in close], p)
    return np.array([np.nan if v is None else v for v in out], dtype=np.float64)


# --- the pre-refactor implementation, verbatim but for the names --------------------------------


def _reference_diffs(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = values[rows]
    d1 = np.full(v.size, np.nan)
    d2 = np.full(v.size, np.nan)
    if v.size > 1:
        d1[1:] = v[1:] - v[:-1]
    if v.size > 2:
        d2[2:] = d1[2:] - d1[1:-1]
    return d1, d2


def _reference_tail_diffs(values: np.ndarray, start: int, rows: np.ndarray,
                          roll: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if rows.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    lo = int(rows[0])
    ext = np.arange(max(start, lo - 2), values.size)
    d1r, d2r = _reference_diffs(values, ext)
    off = lo - int(ext[0])
    canon = start + np.flatnonzero(~roll[start:])
    c_ext = canon[max(0, int(np.searchsorted(canon, lo)) - 2):]
    c1, c2 = _reference_diffs(values, c_ext)
    d1 = np.full(rows.size, np.nan)
    d2 = np.full(rows.size, np.nan)
    inside = c_ext >= lo
    d1[c_ext[inside] - lo] = c1[inside]
    d2[c_ext[inside] - lo] = c2[inside]
    return d1r[off:], d2r[off:], d1, d2


def _reference_series_arrays(kind: str, grid: Grid, canonical: np.ndarray, n_days: int,
                             p: int) -> dict[str, np.ndarray] | None:
    close = grid.close
    n = grid.n
    if kind == "v2":
        h = n_days * p
        if n < h:
            return None
        ema = sema(close, h)
        roll = (np.arange(n) + 1) % n_days != 0
        return {"start": np.int64(h - 1), "ema": ema, "roll": roll}
    idx = np.flatnonzero(canonical)
    if idx.size < p:
        return None
    bar = sema(close[idx], p)
    start = int(idx[p - 1])
    alpha = 2.0 / (p + 1)
    if kind == "bar":
        k = np.searchsorted(idx, np.arange(n), side="right") - 1
        prev = bar[np.maximum(k, 0)]
        preview = alpha * close + (1.0 - alpha) * prev
        ema = np.where(canonical, prev, preview)
        ema[:start] = np.nan
        return {"start": np.int64(start), "ema": ema, "roll": ~canonical}
    anchor = np.full(n, np.nan)
    anchor[idx] = bar
    alpha_d = 2.0 / (n_days * p + 1)
    ema_bar = chained(close, anchor, start, alpha_d, True)
    ema = chained(close, anchor, start, alpha_d, False)
    return {"start": np.int64(start), "ema": ema, "roll": ~canonical, "ema_bar": ema_bar}


def _reference_tf_rows(kind: str, grid: Grid, tf: str, n_days: int, canonical: np.ndarray,
                       periods: Sequence[int], keep_from_us: int | None = None) -> pl.DataFrame:
    schema = DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA
    cols: dict[str, list[np.ndarray]] = {c: [] for c in schema if c not in ("id", "tf")}
    first_kept = 0 if keep_from_us is None else int(np.searchsorted(grid.ts_us, keep_from_us, side="left"))
    for p in periods:
        arrays = _reference_series_arrays(kind, grid, canonical, n_days, p)
        if arrays is None:
            continue
        start = int(arrays["start"])
        roll = arrays["roll"]
        ema = arrays["ema"]
        rows = np.arange(max(start, first_kept), grid.n)
        d1r, d2r, d1, d2 = _reference_tail_diffs(ema, start, rows, roll)
        cols["ts"].append(grid.ts_us[rows])
        cols["period"].append(np.full(rows.size, p, dtype=np.int32))
        cols["tf_days"].append(np.full(rows.size, n_days, dtype=np.int32))
        cols["roll"].append(roll[rows])
        cols["ema"].append(ema[rows])
        cols["d1"].append(d1)
        cols["d2"].append(d2)
        cols["d1_roll"].append(d1r)
        cols["d2_roll"].append(d2r)
        if kind == "dual":
            ema_bar = arrays["ema_bar"]
            b1r, b2r, b1, b2 = _reference_tail_diffs(ema_bar, start, rows, roll)
            cols["ema_bar"].append(ema_bar[rows])
            cols["d1_bar"].append(b1)
            cols["d2_bar"].append(b2)
            cols["roll_bar"].append(roll[rows])
            cols["d1_roll_bar"].append(b1r)
            cols["d2_roll_bar"].append(b2r)
    if not cols["ts"]:
        return pl.DataFrame(schema=schema)
    data = {c: np.concatenate(v) for c, v in cols.items()}
    frame = pl.DataFrame(data).with_columns(
        pl.lit(grid.id, pl.Int32).alias("id"),
        pl.lit(tf).alias("tf"),
        pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    )
    floats = [c for c, t in schema.items() if t == pl.Float64()]
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in floats)
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()])


# --- comparison -------------------------------------------------------------------------------


def _assert_identical(kind: str, grid: Grid, tf: str, n_days: int, canonical: np.ndarray,
                      periods: Sequence[int], keep_from_us: int | None) -> pl.DataFrame:
    with np.errstate(invalid="ignore"):  # inf - inf in the reference's numpy differences
        want = _reference_tf_rows(kind, grid, tf, n_days, canonical, periods, keep_from_us)
    got = tf_rows(kind, grid, tf, n_days, canonical, periods, keep_from_us)
    assert got.schema == want.schema
    assert_frame_equal(got, want, check_exact=True)
    # equal values are not enough: the float64 bit patterns (e.g. the sign of a zero) too
    for c, t in got.schema.items():
        if t == pl.Float64():
            g, w = got[c], want[c]
            assert g.is_null().to_list() == w.is_null().to_list(), c
            gb = g.drop_nulls().to_numpy().view(np.int64)
            wb = w.drop_nulls().to_numpy().view(np.int64)
            assert np.array_equal(gb, wb), c
    return got


def _grid(closes: np.ndarray, ts_us: np.ndarray | None = None, ident: int = 7) -> Grid:
    closes = np.asarray(closes, dtype=np.float64)
    if ts_us is None:
        ts_us = np.arange(closes.size, dtype=np.int64) * DAY_US
    return Grid(ident, np.asarray(ts_us, dtype=np.int64), closes)


# --- randomized -------------------------------------------------------------------------------


@st.composite
def _cases(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(KINDS))
    n = draw(st.integers(0, 400))
    n_days = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # closes: a random walk, with NaN (scattered and in runs), and rarely ±inf or zeros
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    nan_p = draw(st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.4]))
    close[rng.random(n) < nan_p] = np.nan
    if n and draw(st.booleans()):
        a = int(rng.integers(0, n))
        close[a:a + int(rng.integers(1, 30))] = np.nan
    if n and draw(st.integers(0, 9)) == 0:
        close[int(rng.integers(0, n))] = draw(st.sampled_from([np.inf, -np.inf, 0.0, -0.0]))
    # instants: ascending, with gaps
    ts = np.cumsum(rng.integers(1, 4, n)).astype(np.int64) * DAY_US + 1_600_000_000_000_000
    mode = draw(st.sampled_from(["every", "every", "random", "few", "all", "none"]))
    if mode == "every":
        canonical = (np.arange(n) + draw(st.integers(0, 9))) % n_days == 0
    elif mode == "random":
        canonical = rng.random(n) < draw(st.floats(0.05, 1.0))
    elif mode == "few":
        canonical = np.zeros(n, bool)
        if n:
            canonical[rng.integers(0, n, draw(st.integers(1, 4)))] = True
    elif mode == "all":
        canonical = np.ones(n, bool)
    else:
        canonical = np.zeros(n, bool)
    large = st.sampled_from([50, 77, 100, 200, 252, 365, 1000])
    periods = draw(st.lists(st.one_of(st.integers(1, 30), large), max_size=10))
    where = draw(st.sampled_from(
        ["none", "none", "row", "row", "last", "between", "before", "after"]))
    keep: int | None
    if where == "none":
        keep = None
    elif where == "before" or n == 0:
        keep = int(ts[0]) - draw(st.integers(0, 3 * DAY_US)) if n else draw(st.integers(-10, 10))
    elif where == "after":
        keep = int(ts[-1]) + draw(st.integers(1, 3 * DAY_US))
    elif where == "last":
        keep = int(ts[-1])
    else:
        i = draw(st.integers(0, n - 1))
        keep = int(ts[i]) + (draw(st.integers(1, DAY_US - 1)) if where == "between" else 0)
    return kind, _grid(close, ts), n_days, canonical, periods, keep


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(case=_cases())
def test_tf_rows_matches_pre_refactor(case: tuple) -> None:
    kind, grid, n_days, canonical, periods, keep = case
    _assert_identical(kind, grid, f"{n_days}D", n_days, canonical, periods, keep)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(0, 60), n_days=st.integers(1, 4),
       closes=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), max_size=60),
       canon=st.lists(st.booleans(), min_size=60, max_size=60),
       periods=st.lists(st.integers(1, 12), max_size=6),
       keep=st.one_of(st.none(), st.integers(-2, 62)))
def test_tf_rows_matches_pre_refactor_small(kind: str, n: int, n_days: int, closes: list[float],
                                            canon: list[bool], periods: list[int],
                                            keep: int | None) -> None:
    """Small grids drawn value by value (hypothesis shrinks these to a readable case)."""
    close = np.asarray((closes + [1.0] * n)[:n], dtype=float)
    grid = _grid(close)
    keep_us = None if keep is None else keep * DAY_US
    _assert_identical(kind, grid, "xD", n_days, np.asarray(canon[:n], dtype=bool), periods, keep_us)


# --- explicit edge cases ----------------------------------------------------------------------


def _walk(n: int, seed: int = 1) -> np.ndarray:
    return 100.0 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.02, n)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep_at", [None, 0, 1, 2, 3, 57, 58, 59, 60, 61, 299, 300, 301, -5])
def test_keep_from_positions(kind: str, keep_at: int | None) -> None:
    grid = _grid(_walk(300))
    canonical = (np.arange(300) + 1) % 7 == 0
    keep = None if keep_at is None else keep_at * DAY_US
    _assert_identical(kind, grid, "7D", 7, canonical, [2, 3, 5, 8, 9, 40, 43, 44], keep)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_grid(kind: str) -> None:
    got = _assert_identical(kind, _grid(np.zeros(0)), "1D", 1, np.zeros(0, bool), [1, 5], None)
    assert got.height == 0


@pytest.mark.parametrize("kind", KINDS)
def test_no_periods(kind: str) -> None:
    got = _assert_identical(kind, _grid(_walk(20)), "1D", 1, np.ones(20, bool), [], None)
    assert got.height == 0


@pytest.mark.parametrize("kind", KINDS)
def test_grid_shorter_than_every_seed(kind: str) -> None:
    got = _assert_identical(kind, _grid(_walk(5)), "2D", 2, np.ones(5, bool), [3, 6, 200], None)
    assert got.height == (0 if kind == "v2" else 5 - 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, canon_at",
                         [(10, []), (10, [9]), (10, [0]), (10, [4, 9]), (10, [0, 1, 2])])
def test_few_canonical_closes(kind: str, n: int, canon_at: list[int]) -> None:
    canonical = np.zeros(n, bool)
    canonical[canon_at] = True
    for keep in (None, 0, 5 * DAY_US, 9 * DAY_US, 10 * DAY_US):
        _assert_identical(kind, _grid(_walk(n)), "3D", 3, canonical, [1, 2, 3], keep)


@pytest.mark.parametrize("kind", KINDS)
def test_seed_exactly_fits(kind: str) -> None:
    # v2: n == n_days * p; bar/dual: exactly p canonical closes
    canonical = (np.arange(12) + 1) % 3 == 0
    got = _assert_identical(kind, _grid(_walk(12)), "3D", 3, canonical, [4], None)
    assert got.height == 1


@pytest.mark.parametrize("kind", KINDS)
def test_nan_everywhere_and_nan_seed(kind: str) -> None:
    close = _walk(80)
    close[::2] = np.nan  # no two consecutive values: sema never seeds for p >= 2
    canonical = np.ones(80, bool)
    canonical[::5] = False
    _assert_identical(kind, _grid(close), "1D", 1, canonical, [1, 2, 3], None)
    all_nan = _grid(np.full(30, np.nan))
    _assert_identical(kind, all_nan, "2D", 2, np.ones(30, bool), [1, 3], 10 * DAY_US)


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_and_unsorted_periods(kind: str) -> None:
    canonical = (np.arange(200) + 1) % 2 == 0
    _assert_identical(kind, _grid(_walk(200)), "2D", 2, canonical, [20, 3, 20, 1, 7], 150 * DAY_US)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_days", [1, 7, 30])
@pytest.mark.parametrize("keep_at", [None, 5699])
def test_realistic_size(kind: str, n_days: int, keep_at: int | None) -> None:
    n = 5700
    close = _walk(n, seed=n_days)
    close[1234] = np.nan
    canonical = (np.arange(n) + 3) % n_days == 0
    periods = list(V2_DEFAULT_PERIODS if kind == "v2" else DEFAULT_PERIODS) + [5, 1000]
    keep = None if keep_at is None else keep_at * DAY_US
    _assert_identical(kind, _grid(close), f"{n_days}D", n_days, canonical, periods, keep)


def test_numpy_integer_periods() -> None:
    canonical = (np.arange(50) + 1) % 2 == 0
    periods = np.array([3, 5], dtype=np.int32)
    _assert_identical("dual", _grid(_walk(50)), "2D", 2, canonical, periods, 20 * DAY_US)
