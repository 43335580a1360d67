"""Resuming EMA series from their stored ends (spec 03 §8, "resume from stored values").

Once a series is seeded, its next row depends on nothing but the new close, whether the new
row is canonical, and two stored rows of the series: its newest row (``ema``, ``d1_roll``) and
its newest canonical row (``ema``, ``d1``) — for the dual tables the same four values of
``ema_bar`` too. Those are its **ends** (kept in the EMA state tables). This module steps many
series at once over their new grid rows with numpy, vectorised across series; it never seeds
a series (seeds and whole recomputations are :mod:`ta_lab2.emas.kernel`'s), so an incremental
refresh that only appends needs neither the kernel nor numba.

Bit-identical to the kernel: every value is the kernel's expression on the same operands —
the one EMA step both call (:func:`ta_lab2.emas.step.ema_step`) with ``α = 2/(p+1)`` or
``2/(n_days·p+1)``, differences ``x − prev`` and
``d − prev_d`` where the kernel recomputes ``prev_d`` as the same difference the stored row
holds — evaluated in IEEE float64 without contraction. NaN marks an undefined value (a
missing close is carried by the bar EMA and v2, as the kernel's ``sema`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ta_lab2.emas.step import ema_step

#: kinds whose series carry a second, snapped EMA (``ema_bar``) beside ``ema``
DUAL = "dual"
RESUMABLE_KINDS = ("bar", "v2", DUAL)


@dataclass(frozen=True)
class Ends:
    """The stored ends of S series (every array has S entries; float64, NaN = NULL).

    ``last_*``: the series' newest row; ``canon_*``: its newest canonical (``roll = FALSE``)
    row. The ``*_bar`` arrays are the dual tables' ``ema_bar`` columns (None otherwise)."""

    n_days: np.ndarray  # int64, the tf's nominal days
    period: np.ndarray  # int64
    last_ema: np.ndarray
    last_d1_roll: np.ndarray
    canon_ema: np.ndarray
    canon_d1: np.ndarray
    last_ema_bar: np.ndarray | None = None
    last_d1_roll_bar: np.ndarray | None = None
    canon_ema_bar: np.ndarray | None = None
    canon_d1_bar: np.ndarray | None = None


_FLOATS = ("ema", "d1", "d2", "d1_roll", "d2_roll")
_BAR_FLOATS = ("ema_bar", "d1_bar", "d2_bar", "d1_roll_bar", "d2_roll_bar")


def seed_value(window: np.ndarray) -> float:
    """The SMA seed of a window of closes (no NaN), as the kernel forms it: summed left to
    right (``cumsum`` accumulates sequentially; ``sum`` would pair terms), divided by its size."""
    return float(np.cumsum(window)[-1] / window.size) if window.size else float("nan")


def resume_rows(kind: str, close: np.ndarray, canonical: np.ndarray, first: np.ndarray, count: np.ndarray,
                canon_first: np.ndarray, ends: Ends, seed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The rows of S seeded series after their stored ends.

    ``close`` (float64) holds the new grid rows of every series' id; series ``j`` continues
    over ``close[first[j] : first[j] + count[j]]`` (in time order), and
    ``canonical[canon_first[j] + k]`` says whether its ``k``-th new row is a canonical close of
    its tf (for v2: every ``n_days``-th grid row). ``kind`` is ``bar`` (multi_tf), ``v2`` or
    ``dual`` (spec 03 §2–§4).

    ``seed`` (optional, NaN = none) marks series that start on their first new row, a
    canonical one: their value there is ``seed[j]`` (:func:`seed_value` of their seed's closes;
    dual: ``ema`` and ``ema_bar`` alike), with undefined differences, and their ends are unused.

    Returns arrays over the emitted rows, ordered by series then time: ``series`` (index j),
    ``row`` (index into ``close``), ``roll``, and the float columns of the table (``ema``,
    ``d1``, ``d2``, ``d1_roll``, ``d2_roll``; dual also ``ema_bar``, ``d1_bar``, ``d2_bar``,
    ``d1_roll_bar``, ``d2_roll_bar``), NaN where undefined.
    """
    if kind not in RESUMABLE_KINDS:
        raise ValueError(f"unknown EMA kind {kind!r} (expected one of {RESUMABLE_KINDS})")
    dual = kind == DUAL
    if dual and ends.last_ema_bar is None:
        raise ValueError("dual series need the ema_bar ends")
    count = np.asarray(count, dtype=np.int64)
    if kind == "bar":
        alpha = 2.0 / (ends.period + 1)
    else:
        alpha = 2.0 / (ends.n_days * ends.period + 1)
    alpha_bar = 2.0 / (ends.period + 1) if dual else None
    # working copies of the ends, updated as the series advance
    ema, d1_roll = ends.last_ema.copy(), ends.last_d1_roll.copy()
    c_ema, c_d1 = ends.canon_ema.copy(), ends.canon_d1.copy()
    if dual:
        assert ends.last_d1_roll_bar is not None and ends.canon_ema_bar is not None and ends.canon_d1_bar is not None
        bar, d1_roll_bar = ends.last_ema_bar.copy(), ends.last_d1_roll_bar.copy()
        c_bar, c_d1_bar = ends.canon_ema_bar.copy(), ends.canon_d1_bar.copy()
    seeds = np.full(count.size, np.nan) if seed is None else np.asarray(seed, dtype=np.float64)
    starting = ~np.isnan(seeds)
    for arr in (ema, d1_roll, c_ema, c_d1, *((bar, d1_roll_bar, c_bar, c_d1_bar) if dual else ())):
        arr[starting] = np.nan  # a series' first row has no previous row to difference with
    steps: list[dict[str, np.ndarray]] = []
    for k in range(int(count.max(initial=0))):
        a = np.flatnonzero(count > k)
        r = first[a] + k
        x = close[r]
        kap = canonical[canon_first[a] + k]
        al = alpha[a]
        if kind == "bar":
            # the bar EMA (canonical rows: a missing close carries it) or its preview
            prev = c_ema[a]
            v = ema_step(al, x, prev)
            v = np.where(kap & np.isnan(x), prev, v)
        elif kind == "v2":
            prev = ema[a]
            v = np.where(np.isnan(x), prev, ema_step(al, x, prev))
        else:
            v = ema_step(al, x, ema[a])  # the continuous daily EMA, never snapped
        born = starting[a] if k == 0 else None
        if born is not None:
            v = np.where(born, seeds[a], v)
        out = {"series": a, "row": r, "roll": ~kap}
        out.update(zip(_FLOATS, _advance(v, kap, a, ema, d1_roll, c_ema, c_d1)))
        if dual:
            assert alpha_bar is not None
            ab = alpha_bar[a]
            snapped = np.where(np.isnan(x), c_bar[a], ema_step(ab, x, c_bar[a]))
            vb = np.where(kap, snapped, ema_step(al, x, bar[a]))
            if born is not None:
                vb = np.where(born, seeds[a], vb)
            out.update(zip(_BAR_FLOATS, _advance(vb, kap, a, bar, d1_roll_bar, c_bar, c_d1_bar)))
        steps.append(out)
    names = ("series", "row", "roll", *_FLOATS, *(_BAR_FLOATS if dual else ()))
    if not steps:
        empty = {n: np.zeros(0, dtype=np.int64) for n in ("series", "row")}
        return {**empty, "roll": np.zeros(0, dtype=np.bool_), **{n: np.zeros(0) for n in names[3:]}}
    cols = {n: np.concatenate([s[n] for s in steps]) for n in names}
    order = np.lexsort((cols["row"], cols["series"]))  # series, then time (rows of one id ascend)
    return {n: c[order] for n, c in cols.items()}


def _advance(v: np.ndarray, kap: np.ndarray, a: np.ndarray, last: np.ndarray, last_d1_roll: np.ndarray,
             canon: np.ndarray, canon_d1: np.ndarray) -> tuple[np.ndarray, ...]:
    """The row values of series ``a`` whose new value is ``v`` (canonical where ``kap``), and
    their ends moved to that row: ``(ema, d1, d2, d1_roll, d2_roll)``."""
    d1r = v - last[a]
    d2r = d1r - last_d1_roll[a]
    d1 = np.where(kap, v - canon[a], np.nan)
    d2 = np.where(kap, d1 - canon_d1[a], np.nan)
    last[a] = v
    last_d1_roll[a] = d1r
    hit = a[kap]
    canon[hit] = v[kap]
    canon_d1[hit] = d1[kap]
    return v, d1, d2, d1r, d2r
