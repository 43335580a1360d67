"""The EMA kernel (spec 03 §1) and the daily-chained recurrences (§4), compiled with numba.

The recurrences are inherently sequential; numba compiles them to a plain loop so the
arithmetic is exactly the spec's, operation for operation: ``α·x + (1−α)·e`` (no fused
multiply-add, no rearrangement), seeds as a left-to-right sum divided by ``p``. The same code
runs for a full refresh and an incremental one, so results are bit-identical.

Arrays are float64; NaN marks a missing input and an undefined output.

:func:`ema_rows` builds every emitted row of one (id, tf) — all periods — in a single
compiled call (per-series Python and numpy work used to dominate incremental refreshes).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ta_lab2.emas.step import ema_step

#: the one EMA step (:mod:`ta_lab2.emas.step`), compiled for the loops below
_step = njit(cache=True)(ema_step)


@njit(cache=True)
def sema(x: np.ndarray, p: int) -> np.ndarray:
    """SMA-seeded EMA of ``x`` with period ``p`` (α = 2/(p+1)).

    Undefined (NaN) before the seed. The seed sits on the first index i ≥ p−1 whose window
    ``x[i−p+1 … i]`` has no missing value and equals that window's mean; afterwards
    ``e[j] = α·x[j] + (1−α)·e[j−1]``, and a missing ``x[j]`` carries ``e[j−1]`` forward.
    """
    n = x.size
    out = np.full(n, np.nan)
    alpha = 2.0 / (p + 1)
    run = 0
    total = 0.0
    seeded = False
    e = 0.0
    for i in range(n):
        v = x[i]
        if not seeded:
            if np.isnan(v):
                run = 0
                total = 0.0
                continue
            run += 1
            total += v
            if run > p:  # keep the window at the last p values (sum re-formed left to right)
                total = 0.0
                for j in range(i - p + 1, i + 1):
                    total += x[j]
                run = p
            if run == p:
                e = total / p
                seeded = True
                out[i] = e
        else:
            if not np.isnan(v):
                e = _step(alpha, v, e)
            out[i] = e
    return out


@njit(cache=True)
def _chained_pair(close: np.ndarray, anchor: np.ndarray, start: int, alpha: float,
                  free: np.ndarray, snapped: np.ndarray) -> None:
    """The dual tables' two daily EMAs chained from ``start`` (spec 03 §4), in one pass over the
    rows ``start…`` (rows before ``start`` are left as they are): both begin at
    ``anchor[start]``; then ``free[t] = α·close[t] + (1−α)·free[t−1]`` (``ema``) and
    ``snapped[t]`` the same except that rows where ``anchor`` is defined (the bar EMA on its
    canonical closes) take ``anchor[t]`` (``ema_bar``)."""
    e = anchor[start]
    f = e
    free[start] = e
    snapped[start] = e
    for t in range(start + 1, close.size):
        c = close[t]
        f = _step(alpha, c, f)
        free[t] = f
        if not np.isnan(anchor[t]):
            e = anchor[t]
        else:
            e = _step(alpha, c, e)
        snapped[t] = e


#: ``kind`` codes of :func:`ema_rows` (the table kinds of :data:`ta_lab2.emas.series.KINDS`)
KIND_BAR = 0
KIND_V2 = 1
KIND_DUAL = 2


@njit(cache=True)
def _emit(v: np.ndarray, start: int, lo: int, is_canon: np.ndarray, cidx: np.ndarray, m0: int,
          ema: np.ndarray, d1: np.ndarray, d2: np.ndarray, d1_roll: np.ndarray, d2_roll: np.ndarray,
          pos: int) -> None:
    """Write rows ``lo … n−1`` of the series ``v`` (defined from ``start``) to the outputs at
    ``pos…``: the value, its differences over consecutive rows (``d1_roll``, ``d2_roll``: from
    ``start`` on) and over the canonical rows (``d1``, ``d2``: on canonical rows only, from the
    first canonical row at or after ``start``, whose index in ``cidx`` is ``m0``).

    Reads ``v`` only at ``max(start, lo−2) … n−1`` and at the two canonical rows before ``lo``
    (when at or after ``start``), so a caller may fill just those.
    """
    n = v.size
    m = np.searchsorted(cidx, lo)  # index in cidx of the first canonical row >= lo
    for t in range(lo, n):
        i = pos + t - lo
        x = v[t]
        ema[i] = x
        # the same operations as differencing the whole series: v[t]-v[t-1], then d1[t]-d1[t-1]
        a = np.nan
        b = np.nan
        if t > start:
            a = x - v[t - 1]
            if t > start + 1:
                b = a - (v[t - 1] - v[t - 2])
        d1_roll[i] = a
        d2_roll[i] = b
        a = np.nan
        b = np.nan
        if is_canon[t]:
            k = m - m0  # position of t among the canonical rows from start
            if k >= 1:
                a = x - v[cidx[m - 1]]
                if k >= 2:
                    b = a - (v[cidx[m - 1]] - v[cidx[m - 2]])
            m += 1
        d1[i] = a
        d2[i] = b


@njit(cache=True)
def ema_rows(kind: int, close: np.ndarray, canonical: np.ndarray, n_days: int, periods: np.ndarray,
             first_kept: int) -> tuple[np.ndarray, ...]:
    """Every emitted row of one (id, tf) for ``periods`` (spec 03 §2–§5), in one pass.

    ``close``: the daily grid's closes (float64, NaN = missing); ``canonical``: the grid rows
    that are canonical closes of the tf (bool, same size; unused for ``KIND_V2``, whose
    canonical rows are every ``n_days``-th); ``periods``: int64, each ≥ 1; ``first_kept``:
    the first grid row to emit. Rows go out period by period in the given order, grid row
    ascending within a period, from ``max(start, first_kept)`` on, where ``start`` is the
    series' first row: ``n_days·p − 1`` for v2 (no series when the grid is shorter than
    ``n_days·p``), else the ``p``-th canonical close (no series with fewer than ``p``).

    Returns ``(row, period, roll, ema, d1, d2, d1_roll, d2_roll, ema_bar, d1_bar, d2_bar,
    d1_roll_bar, d2_roll_bar)``: ``row`` indexes the grid; ``roll`` is "not a canonical row";
    ``d1``/``d2`` are differences over the canonical rows (NaN on the others), ``d1_roll``/
    ``d2_roll`` over consecutive rows; the ``*_bar`` arrays are those of the dual tables'
    ``ema_bar`` (empty for the other kinds). NaN marks an undefined value.

    The series are the ones of spec 03: bar (``sema`` over the canonical closes, previewed
    on the other rows as ``α·close + (1−α)·bar``), v2 (``sema`` with period ``n_days·p`` over
    every close) and dual (the two recurrences of :func:`_chained_pair` from the bar EMA, with
    α = 2/(n_days·p + 1)). Raises ValueError on an unknown kind, ``n_days`` < 1, a period
    < 1 or a canonical mask of another size than the grid.
    """
    n = close.size
    n_per = periods.size
    if kind != KIND_BAR and kind != KIND_V2 and kind != KIND_DUAL:
        raise ValueError("ema_rows: unknown kind code")
    if n_days < 1:
        raise ValueError("ema_rows: n_days must be at least 1")
    for j in range(n_per):
        if periods[j] < 1:
            raise ValueError("ema_rows: every period must be at least 1")
    if kind != KIND_V2 and canonical.size != n:
        raise ValueError("ema_rows: the canonical mask must have one entry per grid row")
    # canonical rows (roll = False): the tf's closes, or every n_days-th row for v2
    if kind == KIND_V2:
        is_canon = np.empty(n, np.bool_)
        for t in range(n):
            is_canon[t] = (t + 1) % n_days == 0
    else:
        is_canon = canonical
    nc = 0
    for t in range(n):
        if is_canon[t]:
            nc += 1
    cidx = np.empty(nc, np.int64)
    j = 0
    for t in range(n):
        if is_canon[t]:
            cidx[j] = t
            j += 1

    # pass 1: each series' first row (-1: no series) and the number of rows to emit
    starts = np.full(n_per, -1, np.int64)
    total = 0
    for j in range(n_per):
        p = periods[j]
        if kind == KIND_V2:
            if n < n_days * p:
                continue
            s = n_days * p - 1
        else:
            if nc < p:
                continue
            s = cidx[p - 1]
        starts[j] = s
        lo = max(s, first_kept)
        if lo < n:
            total += n - lo

    row = np.empty(total, np.int64)
    period = np.empty(total, np.int32)
    roll = np.empty(total, np.bool_)
    ema = np.empty(total)
    d1 = np.empty(total)
    d2 = np.empty(total)
    d1_roll = np.empty(total)
    d2_roll = np.empty(total)
    nb = total if kind == KIND_DUAL else 0
    ema_bar = np.empty(nb)
    d1_bar = np.empty(nb)
    d2_bar = np.empty(nb)
    d1_roll_bar = np.empty(nb)
    d2_roll_bar = np.empty(nb)

    # pass 2: compute and write each series' rows
    canon_close = np.empty(nc)  # the bar series' input, shared by every period
    for j in range(nc):
        canon_close[j] = close[cidx[j]]
    scratch = np.empty(n)  # bar: the series' values, filled where _emit reads them; dual: ema
    anchor = np.full(n if kind == KIND_DUAL else 0, np.nan)  # dual: bar EMA on canonical rows
    scratch_bar = np.empty(n if kind == KIND_DUAL else 0)  # dual: the snapped series
    pos = 0
    for j in range(n_per):
        s = starts[j]
        if s < 0:
            continue
        lo = max(s, first_kept)
        if lo >= n:
            continue
        p = periods[j]
        cnt = n - lo
        for i in range(pos, pos + cnt):
            row[i] = lo + i - pos
            period[i] = p
            roll[i] = not is_canon[lo + i - pos]
        m0 = np.searchsorted(cidx, s)
        if kind == KIND_V2:
            v = sema(close, n_days * p)
            _emit(v, s, lo, is_canon, cidx, m0, ema, d1, d2, d1_roll, d2_roll, pos)
        elif kind == KIND_BAR:
            bar = sema(canon_close, p)
            alpha = 2.0 / (p + 1)
            # canonical rows hold the bar EMA; the others preview it with their own close
            # (previews never feed each other), so only the rows _emit reads are computed
            w = max(s, lo - 2)
            k = np.searchsorted(cidx, w) - 1  # last canonical row before w
            for t in range(w, n):
                if is_canon[t]:
                    k += 1
                    scratch[t] = bar[k]
                else:
                    scratch[t] = _step(alpha, close[t], bar[k])
            m = np.searchsorted(cidx, lo)
            for c in range(max(m0, m - 2), m):
                scratch[cidx[c]] = bar[c]
            _emit(scratch, s, lo, is_canon, cidx, m0, ema, d1, d2, d1_roll, d2_roll, pos)
        else:
            bar = sema(canon_close, p)
            for c in range(nc):  # every canonical row is rewritten, the others stay NaN
                anchor[cidx[c]] = bar[c]
            alpha_d = 2.0 / (n_days * p + 1)
            _chained_pair(close, anchor, s, alpha_d, scratch, scratch_bar)
            _emit(scratch, s, lo, is_canon, cidx, m0, ema, d1, d2, d1_roll, d2_roll, pos)
            _emit(scratch_bar, s, lo, is_canon, cidx, m0,
                  ema_bar, d1_bar, d2_bar, d1_roll_bar, d2_roll_bar, pos)
        pos += cnt
    return (row, period, roll, ema, d1, d2, d1_roll, d2_roll,
            ema_bar, d1_bar, d2_bar, d1_roll_bar, d2_roll_bar)


def load_compiled() -> None:
    """Load the compiled kernel (from numba's on-disk cache; compiled on first use otherwise)
    by calling it once with the one signature :func:`ta_lab2.emas.series.tf_arrays` uses
    (every kind shares the compiled code)."""
    ema_rows(KIND_DUAL, np.array([1.0, 2.0, np.nan, 4.0]), np.ones(4, dtype=np.bool_), 1,
             np.array([2], dtype=np.int64), 0)
