"""Self-checks of the EMA oracle (tests/oracles/ema_oracle.py) — pure, no database.

* the worked example of spec 03 §7, typed in by hand (multi_tf 2D p=3 with all derivatives,
  and the v2 values);
* a hand-computed dual-EMA example (calendar / anchored tables, spec 03 §4) whose numbers are
  exact binary fractions, with a run of two previews so the chained ``ema_bar`` preview is
  distinguishable from a one-step preview;
* ``sema`` against TA-Lib ``EMA`` and pandas ``ewm(adjust=False)`` on random data (equivalent
  but differently written recurrences: ``rtol=1e-12``), and missing-value cases by hand.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles.ema_oracle import DUAL_COLUMNS, MULTI_TF_COLUMNS, oracle_dual, oracle_multi_tf, oracle_v2, sema

# spec 03 §7: twelve gap-free days (day numbers 1..12 stand in for the instants)
CLOSES_7 = [10, 12, 11, 13, 15, 14, 16, 18, 17, 19, 21, 20]
GRID_7 = [(day, float(c)) for day, c in enumerate(CLOSES_7, start=1)]


def _by_day(rows):
    return {r["ts"]: r for r in rows}


# --------------------------------------------------------------------------- §7 multi_tf
def test_worked_example_multi_tf_2d_p3() -> None:
    canonical = {2, 4, 6, 8, 10, 12}
    rows = oracle_multi_tf(GRID_7, canonical, "2D", 2, 3, ident=7)
    N = None
    #        day  roll   ema     d1_roll d2_roll  d1     d2
    expected = [
        (6, False, 13.000, N, N, N, N),
        (7, True, 14.500, 1.500, N, N, N),
        (8, False, 15.500, 1.000, -0.500, 2.500, N),
        (9, True, 16.250, 0.750, -0.250, N, N),
        (10, False, 17.250, 1.000, 0.250, 1.750, -0.750),
        (11, True, 19.125, 1.875, 0.875, N, N),
        (12, False, 18.625, -0.500, -2.375, 1.375, -0.375),
    ]
    assert [r["ts"] for r in rows] == [e[0] for e in expected]
    for row, (day, roll, ema, d1r, d2r, d1, d2) in zip(rows, expected):
        assert tuple(row) == MULTI_TF_COLUMNS
        # every number here is an exact binary fraction: exact comparison
        assert (row["roll"], row["ema"], row["d1_roll"], row["d2_roll"], row["d1"], row["d2"]) == (
            roll, ema, d1r, d2r, d1, d2,
        ), day  # fmt: skip
        assert (row["id"], row["tf"], row["period"], row["tf_days"]) == (7, "2D", 3, 2)


def test_worked_example_v2_2d_p2() -> None:
    rows = _by_day(oracle_v2(GRID_7, "2D", 2, 2, ident=1))
    assert min(rows) == 4 and max(rows) == 12 and len(rows) == 9
    expected = {4: (11.5, False), 5: (12.9, True), 6: (13.34, False), 7: (14.404, True), 8: (15.8424, False)}
    for day, (ema, roll) in expected.items():
        assert rows[day]["ema"] == pytest.approx(ema, rel=1e-14, abs=0), day
        assert rows[day]["roll"] is roll
    assert rows[4]["ema"] == 11.5  # the seed (a sum of integers / 4) is exact
    # derivatives, hand-computed from the values above
    assert rows[4]["d1_roll"] is None and rows[4]["d2_roll"] is None and rows[4]["d1"] is None
    assert rows[5]["d1_roll"] == pytest.approx(1.4, rel=1e-12) and rows[5]["d2_roll"] is None
    assert rows[5]["d1"] is None and rows[5]["d2"] is None  # roll = TRUE
    assert rows[6]["d1_roll"] == pytest.approx(0.44, rel=1e-12)
    assert rows[6]["d2_roll"] == pytest.approx(-0.96, rel=1e-12)
    assert rows[6]["d1"] == pytest.approx(1.84, rel=1e-12) and rows[6]["d2"] is None
    assert rows[8]["d1"] == pytest.approx(2.5024, rel=1e-12)
    assert rows[8]["d2"] == pytest.approx(0.6624, rel=1e-12)
    assert all(r["tf_days"] == 2 for r in rows.values())


def test_v2_too_few_rows_and_1d() -> None:
    assert oracle_v2(GRID_7, "7D", 7, 2) == []  # H = 14 > 12 grid rows
    assert len(oracle_v2(GRID_7, "3D", 3, 4)) == 1  # H = 12: exactly one row
    rows = oracle_v2(GRID_7, "1D", 1, 3)
    assert [r["roll"] for r in rows] == [False] * 10
    assert [r["ema"] for r in rows] == sema([float(c) for c in CLOSES_7], 3)[2:]
    assert all(r["d1"] == r["d1_roll"] and r["d2"] == r["d2_roll"] for r in rows)


def test_multi_tf_too_few_canonical_closes() -> None:
    assert oracle_multi_tf(GRID_7, {4, 8, 12}, "4D", 4, 5) == []
    assert len(oracle_multi_tf(GRID_7, {4, 8, 12}, "4D", 4, 3)) == 1  # only day 12
    # 1D: every grid row canonical -> plain SEMA of the closes, roll always FALSE
    rows = oracle_multi_tf(GRID_7, {d for d, _ in GRID_7}, "1D", 1, 4)
    assert [r["ema"] for r in rows] == sema([float(c) for c in CLOSES_7], 4)[3:]
    assert not any(r["roll"] for r in rows)


def test_multi_tf_preview_after_last_bar_and_canonical_gap() -> None:
    # canonical closes on days 2, 4, 8 (the bar ending on day 6 has no data on its last day)
    rows = _by_day(oracle_multi_tf(GRID_7, {2, 4, 8}, "2D", 2, 2))
    # bar_ema: day 4 = (12 + 13) / 2 = 12.5; day 8 = 0.5*... alpha = 2/3
    assert rows[4]["ema"] == 12.5 and not rows[4]["roll"]
    a = 2 / 3
    assert rows[5]["ema"] == a * 15.0 + (1 - a) * 12.5 and rows[5]["roll"]
    assert rows[7]["ema"] == a * 16.0 + (1 - a) * 12.5  # previews never feed each other
    bar8 = a * 18.0 + (1 - a) * 12.5
    assert rows[8]["ema"] == bar8 and rows[8]["d1"] == bar8 - 12.5
    assert rows[12]["ema"] == a * 20.0 + (1 - a) * bar8 and rows[12]["roll"]  # preview after the last bar
    assert max(rows) == 12


# --------------------------------------------------------------------------- §4 dual
def test_dual_hand_example() -> None:
    closes = CLOSES_7 + [22, 23, 21]
    grid = [(day, float(c)) for day, c in enumerate(closes, start=1)]
    # N = 1, p = 3: alpha_bar = alpha_d = 0.5; canonical closes every third day
    rows = oracle_dual(grid, {3, 6, 9, 12, 15}, "3X", 1, 3, ident=5)
    assert [r["ts"] for r in rows] == [9, 10, 11, 12, 13, 14, 15]
    assert all(tuple(r) == DUAL_COLUMNS for r in rows)
    N = None
    # day: roll, ema, ema_bar, d1_roll, d2_roll, d1, d2, d1_roll_bar, d2_roll_bar, d1_bar, d2_bar
    expected = {
        9: (False, 14.0, 14.0, N, N, N, N, N, N, N, N),
        10: (True, 16.5, 16.5, 2.5, N, N, N, 2.5, N, N, N),
        11: (True, 18.75, 18.75, 2.25, -0.25, N, N, 2.25, -0.25, N, N),
        12: (False, 19.375, 17.0, 0.625, -1.625, 5.375, N, -1.75, -4.0, 3.0, N),
        13: (True, 20.6875, 19.5, 1.3125, 0.6875, N, N, 2.5, 4.25, N, N),
        14: (True, 21.84375, 21.25, 1.15625, -0.15625, N, N, 1.75, -0.75, N, N),
        15: (False, 21.421875, 19.0, -0.421875, -1.578125, 2.046875, -3.328125, -2.25, -4.0, 2.0, -1.0),
    }
    cols = ("roll", "ema", "ema_bar", "d1_roll", "d2_roll", "d1", "d2",
            "d1_roll_bar", "d2_roll_bar", "d1_bar", "d2_bar")  # fmt: skip
    for row in rows:
        assert tuple(row[c] for c in cols) == expected[row["ts"]], row["ts"]
        assert row["roll_bar"] is row["roll"]
        assert (row["id"], row["tf"], row["period"], row["tf_days"]) == (5, "3X", 3, 1)


def test_dual_alpha_is_daily_space() -> None:
    # N = 7, p = 2: alpha_d = 2/15 for the daily steps; the bar EMA uses alpha_bar = 2/3
    closes = [float(100 + (i * 7919) % 13) for i in range(40)]
    grid = list(enumerate(closes))
    canonical = {6, 13, 20, 27, 34}
    rows = _by_day(oracle_dual(grid, canonical, "1W", 7, 2))
    ad = 2 / (7 * 2 + 1)
    seed = (closes[6] + closes[13]) / 2
    assert min(rows) == 13 and rows[13]["ema"] == seed == rows[13]["ema_bar"]
    assert rows[14]["ema"] == ad * closes[14] + (1 - ad) * seed
    ab = 2 / 3
    bar20 = ab * closes[20] + (1 - ab) * seed
    assert rows[20]["ema_bar"] == bar20
    assert rows[20]["ema"] == ad * closes[20] + (1 - ad) * rows[19]["ema"]
    assert rows[21]["ema_bar"] == ad * closes[21] + (1 - ad) * bar20


# --------------------------------------------------------------------------- sema
def test_sema_missing_values_by_hand() -> None:
    N = None
    assert sema([1, N, 2, 4, 6, N, 8, N, N, 10], 3) == [N, N, N, N, 4.0, 4.0, 6.0, 6.0, 6.0, 8.0]
    assert sema([N, N, 3, 5, 7], 3) == [N, N, N, N, 5.0]
    assert sema([1, N, 2, N, 3], 2) == [N] * 5  # never a full window
    assert sema([], 3) == []
    assert sema([1.0, 2.0], 3) == [N, N]  # fewer than p values
    assert sema([N, 5, N, 7], 1) == [N, 5.0, 5.0, 7.0]  # p = 1: alpha = 1
    # seed on the first full window even when an earlier partial window exists
    out = sema([2, 4, N, 6, 8, 10], 2)  # alpha = 2/3: 3, 3, 2/3*6 + 1/3*3 = 5, 7, 9
    assert out[:3] == [N, 3.0, 3.0]
    assert out[3:] == pytest.approx([5.0, 7.0, 9.0], rel=1e-15)
    # missing values right after the seed carry it forward
    assert sema([4, 8, N, N, 12], 2) == [N, 6.0, 6.0, 6.0, 2 / 3 * 12 + (1 - 2 / 3) * 6.0]


def test_sema_exact_arithmetic_form() -> None:
    xs = [0.1, 0.7, 0.3, 1.9, 2.3, 0.01, 5.5]
    p = 3
    a = 2 / (p + 1)
    e = (0.1 + 0.7 + 0.3) / 3
    expected = [None, None, e]
    for x in xs[3:]:
        e = a * x + (1 - a) * e
        expected.append(e)
    assert sema(xs, p) == expected  # bit for bit


@pytest.mark.parametrize("p", [2, 3, 5, 9, 10, 21, 50])
def test_sema_vs_talib(p: int) -> None:
    rng = np.random.default_rng(1000 + p)
    for n in (p, p + 1, 3 * p + 7, 400):
        xs = np.exp(np.cumsum(rng.normal(0.0, 0.03, n))) * 100.0
        ours = np.array([math.nan if v is None else v for v in sema(xs.tolist(), p)])
        ref = talib.EMA(xs, timeperiod=p)
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), (p, n)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=80),
    p=st.integers(min_value=2, max_value=12),
)
def test_sema_vs_talib_property(xs: list[float], p: int) -> None:
    ours = np.array([math.nan if v is None else v for v in sema(xs, p)])
    ref = talib.EMA(np.array(xs, dtype=float), timeperiod=p)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_allclose(ours, ref, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("p", [1, 2, 4, 7, 12, 30])
@pytest.mark.parametrize("with_missing", [False, True])
def test_sema_vs_pandas_ewm(p: int, with_missing: bool) -> None:
    """pandas ``ewm(alpha=2/(p+1), adjust=False)`` applied to ``[seed] + later values``;
    ``ignore_na=True`` skips a NaN, i.e. carries the average forward (spec §1)."""
    rnd = random.Random(p * 10 + with_missing)
    xs: list[float | None] = [rnd.uniform(10.0, 20.0) for _ in range(300)]
    if with_missing:
        for i in rnd.sample(range(300), 45):
            xs[i] = None
        for i in range(200, 200 + p):  # guarantee one full window
            xs[i] = rnd.uniform(10.0, 20.0)
    ours = sema(xs, p)
    # locate the seed independently: first full window of p non-missing values
    seed_index = next(i for i in range(p - 1, len(xs)) if None not in xs[i - p + 1 : i + 1])
    assert all(v is None for v in ours[:seed_index]) and ours[seed_index] is not None
    seed = float(np.mean(xs[seed_index - p + 1 : seed_index + 1]))
    tail = pd.Series([seed] + [math.nan if v is None else v for v in xs[seed_index + 1 :]], dtype=float)
    ref = tail.ewm(alpha=2 / (p + 1), adjust=False, ignore_na=True).mean().to_numpy()
    np.testing.assert_allclose(np.array(ours[seed_index:], dtype=float), ref, rtol=1e-12)
