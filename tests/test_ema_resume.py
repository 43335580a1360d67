"""``resume_rows`` (series continued from their stored ends, or started from their seed)
against the kernel's whole-grid computation: for random grids, canonical masks, periods and cut
rows, the rows after the cut must equal the kernel's, bit for bit (same float64 patterns, same
NaNs), for every kind and for several series of several grids stepped together. The kernel itself is checked against
TA-Lib and brute-force oracles elsewhere. Pure: no database."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta_lab2.emas.resume import Ends, resume_rows, seed_value
from ta_lab2.emas.series import Grid, tf_arrays

KINDS = ("bar", "v2", "dual")
_BAR = ("ema_bar", "d1_bar", "d2_bar", "d1_roll_bar", "d2_roll_bar")
_BAR_ENDS = ("last_ema_bar", "last_d1_roll_bar", "canon_ema_bar", "canon_d1_bar")


def _series(kind: str, close: np.ndarray, mask: np.ndarray, n_days: int, p: int) -> dict[str, np.ndarray]:
    """The kernel's rows of one series over the whole grid (grid row index -> values)."""
    grid = Grid(1, np.arange(close.size, dtype=np.int64), close)
    part = tf_arrays(kind, grid, "T", n_days, mask, [p])
    return {"row": part.row, "roll": part.roll, **part.floats}


def _ends_at(rows: dict[str, np.ndarray], cut: int, dual: bool) -> dict[str, float] | None:
    """The ends of a series whose rows before grid row ``cut`` are stored (None: no row yet, or
    an undefined value there — the refresher recomputes such a series with the kernel)."""
    before = rows["row"] < cut
    if not before.any():
        return None
    last = int(np.flatnonzero(before)[-1])
    canon = np.flatnonzero(before & ~rows["roll"])
    c = int(canon[-1])
    if np.isnan(rows["ema"][last]) or np.isnan(rows["ema"][c]) or (
            dual and (np.isnan(rows["ema_bar"][last]) or np.isnan(rows["ema_bar"][c]))):
        return None
    out = {"last_ema": rows["ema"][last], "last_d1_roll": rows["d1_roll"][last],
           "canon_ema": rows["ema"][c], "canon_d1": rows["d1"][c]}
    if dual:
        out.update(last_ema_bar=rows["ema_bar"][last], last_d1_roll_bar=rows["d1_roll_bar"][last],
                   canon_ema_bar=rows["ema_bar"][c], canon_d1_bar=rows["d1_bar"][c])
    return out


def _grid(rng: np.random.Generator, n: int, nan_rate: float) -> np.ndarray:
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, n)))
    close[rng.random(n) < nan_rate] = np.nan
    return close


def _check(kind: str, grids: list[tuple[np.ndarray, np.ndarray, int]], periods: list[int], cuts: list[int]) -> int:
    """Resume every (grid, period) series from its ends before its grid's cut, all in one
    call, and compare with the kernel. Returns how many rows were compared."""
    dual = kind == "dual"
    close_all, canon_all = [], []
    first, count, canon_first, refs, ends, cut_of, seeds = [], [], [], [], [], [], []
    n_days_l, period_l = [], []
    offset = 0
    for (close, mask, n_days), cut in zip(grids, cuts):
        flags = ((np.arange(close.size) + 1) % n_days == 0) if kind == "v2" else mask
        for p in periods:
            rows = _series(kind, close, mask, n_days, p)
            e = _ends_at(rows, cut, dual)
            at = cut
            born = float("nan")
            if e is None:
                # a series that starts at or after the cut starts from its seed (the mean of its
                # first p canonical closes, v2: of its first n_days·p closes) on its first row
                if not rows["row"].size or rows["row"][0] < cut:
                    continue
                at = int(rows["row"][0])
                window = close[:n_days * p] if kind == "v2" else close[np.flatnonzero(mask)[:p]]
                if np.isnan(window).any():
                    continue  # the kernel's seed search skips missing closes: not resume's job
                born = seed_value(window)
                e = {k: np.nan for k in ("last_ema", "last_d1_roll", "canon_ema", "canon_d1",
                                         *(_BAR_ENDS if dual else ()))}
            first.append(offset + at)
            cut_of.append(at)
            count.append(close.size - at)
            canon_first.append(offset + at)
            refs.append({k: v[rows["row"] >= at] for k, v in rows.items()})
            ends.append(e)
            seeds.append(born)
            n_days_l.append(n_days)
            period_l.append(p)
        close_all.append(close)
        canon_all.append(flags)
        offset += close.size
    if not ends:
        return 0
    cols = {k: np.array([e[k] for e in ends], dtype=np.float64) for k in ends[0]}
    out = resume_rows(kind, np.concatenate(close_all), np.concatenate(canon_all), np.array(first), np.array(count),
                      np.array(canon_first), Ends(np.array(n_days_l), np.array(period_l), **cols), np.array(seeds))
    compared = 0
    for j, ref in enumerate(refs):
        mine = out["series"] == j
        assert mine.sum() == ref["row"].size, f"series {j}: {mine.sum()} rows, kernel {ref['row'].size}"
        # the same grid rows, in time order
        assert np.array_equal(out["row"][mine] - first[j] + cut_of[j], ref["row"])
        assert np.array_equal(out["roll"][mine], ref["roll"])
        for name in ("ema", "d1", "d2", "d1_roll", "d2_roll", *(_BAR if dual else ())):
            # bit patterns: equal floats and NaN in the same places
            assert np.array_equal(out[name][mine].view(np.int64), ref[name].view(np.int64)) or \
                np.array_equal(out[name][mine], ref[name], equal_nan=True), f"series {j}, {name}"
            assert np.array_equal(np.signbit(out[name][mine]), np.signbit(ref[name]))
        compared += int(mine.sum())
    return compared


@pytest.mark.parametrize("kind", KINDS)
def test_resume_equals_kernel_on_a_clean_grid(kind: str) -> None:
    rng = np.random.default_rng(7)
    n = 400
    close = _grid(rng, n, 0.0)
    mask = np.zeros(n, dtype=bool)
    mask[6::7] = True
    compared = sum(_check(kind, [(close, mask, 7)], [2, 3, 9, 20], [cut]) for cut in (0, 30, 200, 398, 399, 300))
    assert compared > 500


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), kind=st.sampled_from(KINDS), n_grids=st.integers(1, 3),
       nan_rate=st.sampled_from([0.0, 0.0, 0.05, 0.3]))
def test_resume_equals_kernel(seed: int, kind: str, n_grids: int, nan_rate: float) -> None:
    rng = np.random.default_rng(seed)
    grids, cuts = [], []
    for _ in range(n_grids):
        n = int(rng.integers(1, 160))
        n_days = int(rng.choice([1, 1, 2, 3, 5, 7]))
        mask = rng.random(n) < 1 / n_days
        grids.append((_grid(rng, n, nan_rate), mask, n_days))
        cuts.append(int(rng.integers(0, n + 1)))  # n: nothing new to emit
    periods = sorted({int(p) for p in rng.integers(1, 12, size=int(rng.integers(1, 5)))})
    _check(kind, grids, periods, cuts)


def test_nothing_to_step() -> None:
    ends = Ends(np.array([1]), np.array([3]), *(np.array([1.0]) for _ in range(4)))
    out = resume_rows("bar", np.zeros(0), np.zeros(0, dtype=bool), np.array([0]), np.array([0]), np.array([0]), ends)
    assert out["series"].size == 0 and out["ema"].size == 0


def test_unknown_kind_and_missing_bar_ends() -> None:
    ends = Ends(np.array([1]), np.array([3]), *(np.array([1.0]) for _ in range(4)))
    args = (np.ones(1), np.ones(1, dtype=bool), np.array([0]), np.array([1]), np.array([0]), ends)
    with pytest.raises(ValueError, match="unknown EMA kind"):
        resume_rows("weekly", *args)
    with pytest.raises(ValueError, match="ema_bar"):
        resume_rows("dual", *args)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200))
def test_the_compiled_and_the_numpy_ema_step_are_bit_identical(seed: int, n: int) -> None:
    """The kernel calls the one EMA step compiled by numba, the resume path calls it on numpy
    arrays: for the same operands both give Python's own float result, bit for bit."""
    from ta_lab2.emas.kernel import _step
    from ta_lab2.emas.step import ema_step

    rng = np.random.default_rng(seed)
    alpha = 2.0 / (rng.integers(1, 400, n) + 1.0)
    x = rng.lognormal(3, 1, n)
    prev = rng.lognormal(3, 1, n)
    x[rng.random(n) < 0.1] = np.nan
    vectorised = ema_step(alpha, x, prev)
    compiled = np.array([_step(a, v, e) for a, v, e in zip(alpha, x, prev)])
    python = np.array([float(a) * float(v) + (1.0 - float(a)) * float(e) for a, v, e in zip(alpha, x, prev)])
    for got in (vectorised, compiled):
        assert np.array_equal(np.isnan(got), np.isnan(python))
        assert np.array_equal(got[~np.isnan(got)].view(np.int64), python[~np.isnan(python)].view(np.int64))
