"""The EMA kernel (spec 03 §1) and the daily-chained recurrences (§4), compiled with numba.

The recurrences are inherently sequential; numba compiles them to a plain loop so the
arithmetic is exactly the spec's, operation for operation: ``α·x + (1−α)·e`` (no fused
multiply-add, no rearrangement), seeds as a left-to-right sum divided by ``p``. The same code
runs for a full refresh and an incremental one, so results are bit-identical.

Arrays are float64; NaN marks a missing input and an undefined output.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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
                e = alpha * v + (1.0 - alpha) * e
            out[i] = e
    return out


@njit(cache=True)
def chained(close: np.ndarray, anchor: np.ndarray, start: int, alpha: float, snap: bool) -> np.ndarray:
    """A daily EMA chained from ``start``: ``out[start] = anchor[start]``, then on every later
    row ``out[t] = α·close[t] + (1−α)·out[t−1]``, except, when ``snap``, rows where ``anchor``
    is defined take ``anchor[t]`` (the bar EMA on its canonical closes).

    ``snap=True`` gives the dual tables' ``ema_bar``, ``snap=False`` their ``ema`` (spec 03 §4).
    """
    n = close.size
    out = np.full(n, np.nan)
    if start < 0 or start >= n:
        return out
    e = anchor[start]
    out[start] = e
    for t in range(start + 1, n):
        if snap and not np.isnan(anchor[t]):
            e = anchor[t]
        else:
            e = alpha * close[t] + (1.0 - alpha) * e
        out[t] = e
    return out
