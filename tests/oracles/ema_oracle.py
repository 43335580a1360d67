"""Independent reference implementation ("oracle") of the six EMA tables of spec 03.

Written from the spec text only (03-emas.md §1–§7, 01-data-model.md ``dim_timeframe``). It
shares no code with ``ta_lab2.emas`` and imports nothing from the package: the point is a
second, deliberately naive implementation the refreshers can be compared against, **bit for
bit**. It is written for obviousness, not speed: plain Python loops over rows.

Arithmetic is written in exactly the spec's form, so that an implementation doing "the same
arithmetic in the same order" (spec 03 §8) produces identical IEEE doubles:

* ``α = 2 / (p + 1)`` (Python true division of two ints), ``1 - α`` computed once per series;
* SEMA seed: ``sum(window) / p`` with Python's left-to-right ``sum`` (which starts at integer
  0, and ``0 + x == x`` exactly, so this is ``((x0 + x1) + x2) + …``);
* SEMA step and every preview/daily step: ``α * x + (1 - α) * e_prev`` — two products, then
  one addition, no fused multiply-add;
* dual tables: ``α_d = 2 / (tf_days_nominal * p + 1)``;
* derivatives: plain subtractions ``ema(t) - ema(prev)``.

Inputs of the table oracles:

* ``grid``: the id's accepted ``cmc_price_bars_1d`` rows ``[(ts, close), …]`` in time order.
  ``ts`` may be any hashable value (a ``datetime`` from the database, or a day number in the
  hand-typed examples); it is only compared for equality. ``close`` is never NULL there
  (``close double precision NOT NULL``, spec 02 §1); the oracles assert it.
* ``canonical_ts``: the set of canonical close instants of the (id, tf) — the bar table's rows
  with ``is_partial_end = FALSE``; for tf ``1D`` every grid row. Instants that are not on the
  grid are ignored (spec 03: "a canonical close always falls on a grid row").
* ``n_days``: the tf's ``tf_days_nominal`` (N); ``p``: the period.

Every table oracle returns the rows of one (id, tf, period) series in ts order, as dicts with
every column of the table per §6 except ``ingested_at`` (NULL = ``None``).

Interpretations of points the spec leaves open are listed in :data:`INTERPRETATIONS`.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

__all__ = [
    "DUAL_COLUMNS",
    "INTERPRETATIONS",
    "MULTI_TF_COLUMNS",
    "add_derivatives",
    "oracle_dual",
    "oracle_multi_tf",
    "oracle_v2",
    "sema",
]

#: Columns of ``cmc_ema_multi_tf`` and ``cmc_ema_multi_tf_v2`` (spec 03 §6, without ingested_at).
MULTI_TF_COLUMNS: tuple[str, ...] = (
    "id", "tf", "ts", "period", "tf_days", "roll", "ema", "d1", "d2", "d1_roll", "d2_roll",
)  # fmt: skip
#: Columns of the four calendar / anchored tables (spec 03 §6, without ingested_at).
DUAL_COLUMNS: tuple[str, ...] = MULTI_TF_COLUMNS + (
    "ema_bar", "d1_bar", "d2_bar", "roll_bar", "d1_roll_bar", "d2_roll_bar",
)  # fmt: skip

INTERPRETATIONS: tuple[str, ...] = (
    "SEMA seed: the mean of the first window of p consecutive non-missing values is computed "
    "as sum(window)/p with a left-to-right sum (the spec says 'arithmetic mean' without an "
    "order; TA-Lib sums left to right too).",
    "Derivatives: 'previous row' is the previous *emitted* row of the same (id, tf, period) "
    "series; 'previous canonical row' is the previous emitted row with roll = FALSE. The first "
    "row has NULL d1_roll, the first two NULL d2_roll; the first canonical row has NULL d1, "
    "and d2 is NULL wherever d1 or the previous canonical row's d1 is NULL.",
    "d1/d2 (and d1_bar/d2_bar) are NULL on every roll = TRUE row, also on v2 (whose roll flag "
    "is the every-N-th-grid-row rule of §3).",
    "tf 1D in multi_tf / v2: N = 1, every grid row is a canonical close, so roll is always "
    "FALSE and d1 = d1_roll, d2 = d2_roll.",
    "multi_tf rows start at the p-th canonical close (t0) even if grid rows before t0 exist; "
    "a preview after t0 uses the bar EMA of the last canonical close strictly before t.",
    "Dual tables: 'previous grid row' of the ema/ema_bar recurrences is the previous emitted "
    "row (every grid row from t0 on is emitted, so both readings coincide).",
    "tf_days = dim_timeframe.tf_days_nominal on every table (not the bar's calendar length).",
)


# --------------------------------------------------------------------------- kernel
def sema(xs: Sequence[float | None], p: int) -> list[float | None]:
    """SMA-seeded EMA of spec 03 §1.

    ``None`` marks a missing value. Output is ``None`` before the seed. The seed sits on the
    first index i ≥ p−1 whose window ``xs[i-p+1 … i]`` has no missing value and equals
    ``sum(window) / p``. Afterwards ``e[j] = α*x[j] + (1-α)*e[j-1]`` with ``α = 2/(p+1)``; a
    missing ``x[j]`` carries ``e[j-1]`` forward unchanged.
    """
    if p < 1:
        raise ValueError(f"period must be >= 1, got {p}")
    alpha = 2 / (p + 1)
    one_minus_alpha = 1 - alpha
    out: list[float | None] = [None] * len(xs)

    # find the seed: the first index i >= p-1 whose window of p values has no missing value
    seed_index = None
    for i in range(p - 1, len(xs)):
        window = xs[i - p + 1 : i + 1]
        if all(x is not None for x in window):
            seed_index = i
            break
    if seed_index is None:
        return out

    window = list(xs[seed_index - p + 1 : seed_index + 1])
    e = sum(window) / p
    out[seed_index] = e
    for j in range(seed_index + 1, len(xs)):
        x = xs[j]
        if x is not None:
            e = alpha * x + one_minus_alpha * e
        out[j] = e
    return out


def chained(close: Any, anchor: Any, start: int, alpha: float, snap: bool) -> Any:
    """A daily EMA chained from ``start`` (spec 03 §4), one Python float operation at a time:
    ``out[start] = anchor[start]``, then ``out[t] = α·close[t] + (1−α)·out[t−1]`` — except,
    with ``snap``, where ``anchor[t]`` is defined (not NaN): ``out[t] = anchor[t]``. NaN
    before ``start`` (and everywhere when ``start`` is outside the arrays)."""
    import numpy as np

    n = len(close)
    out = np.full(n, np.nan)
    if not 0 <= start < n:
        return out
    e = float(anchor[start])
    out[start] = e
    for t in range(start + 1, n):
        a = float(anchor[t])
        e = a if snap and a == a else alpha * float(close[t]) + (1.0 - alpha) * e
        out[t] = e
    return out


# --------------------------------------------------------------------------- derivatives
def _diff(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a - b


def add_derivatives(rows: list[dict[str, Any]], value: str, roll: str, suffix: str = "") -> None:
    """Spec 03 §5 on column ``value`` of one series (rows in ts order), in place.

    Writes ``d1_roll{suffix}``, ``d2_roll{suffix}`` (every row, against the previous row) and
    ``d1{suffix}``, ``d2{suffix}`` (canonical rows — ``roll`` column FALSE — against the
    previous canonical row; NULL on roll = TRUE rows).
    """
    prev_value: float | None = None
    prev_d1_roll: float | None = None
    for k, row in enumerate(rows):
        if k == 0:
            d1_roll = None
        else:
            d1_roll = _diff(row[value], prev_value)
        d2_roll = _diff(d1_roll, prev_d1_roll) if k >= 1 else None
        row["d1_roll" + suffix] = d1_roll
        row["d2_roll" + suffix] = d2_roll
        prev_value = row[value]
        prev_d1_roll = d1_roll

    have_prev_canonical = False
    prev_canon_value: float | None = None
    prev_canon_d1: float | None = None
    for row in rows:
        if row[roll]:
            row["d1" + suffix] = None
            row["d2" + suffix] = None
            continue
        if have_prev_canonical:
            d1 = _diff(row[value], prev_canon_value)
            d2 = _diff(d1, prev_canon_d1)
        else:
            d1 = None
            d2 = None
        row["d1" + suffix] = d1
        row["d2" + suffix] = d2
        have_prev_canonical = True
        prev_canon_value = row[value]
        prev_canon_d1 = d1


# --------------------------------------------------------------------------- helpers
def _check_grid(grid: Sequence[tuple[Hashable, float]]) -> None:
    seen = set()
    for ts, close in grid:
        if close is None:
            raise ValueError(f"grid row {ts!r} has a NULL close (accepted 1D rows never do)")
        if ts in seen:
            raise ValueError(f"grid has ts {ts!r} twice")
        seen.add(ts)


def _canonical_flags(grid: Sequence[tuple[Hashable, float]], canonical_ts: Iterable[Hashable]) -> list[bool]:
    canon = set(canonical_ts)
    return [ts in canon for ts, _close in grid]


def _finish(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{c: row[c] for c in columns} for row in rows]


# --------------------------------------------------------------------------- §2 multi_tf
def oracle_multi_tf(
    grid: Sequence[tuple[Hashable, float]],
    canonical_ts: Iterable[Hashable],
    tf: str,
    n_days: int,
    p: int,
    *,
    ident: int | None = None,
) -> list[dict[str, Any]]:
    """``cmc_ema_multi_tf`` rows of one (id, tf, p): bar EMA previewed daily (spec 03 §2)."""
    _check_grid(grid)
    is_canon = _canonical_flags(grid, canonical_ts)
    alpha = 2 / (p + 1)
    one_minus_alpha = 1 - alpha

    canon_idx = [i for i, c in enumerate(is_canon) if c]
    if len(canon_idx) < p:
        return []
    bar_ema_values = sema([grid[i][1] for i in canon_idx], p)
    bar_ema = dict(zip(canon_idx, bar_ema_values))  # grid index -> bar EMA (None before seed)
    t0 = canon_idx[p - 1]  # the p-th canonical close; with no missing closes the seed sits here
    assert bar_ema[t0] is not None

    rows: list[dict[str, Any]] = []
    last_bar_ema: float | None = None
    for i in range(len(grid)):
        ts, close = grid[i]
        if i < t0:
            continue
        if is_canon[i]:
            ema = bar_ema[i]
            roll = False
            last_bar_ema = ema
        else:
            # "the bar EMA if the bar closed today": one step from the last completed bar EMA
            ema = alpha * close + one_minus_alpha * last_bar_ema
            roll = True
        rows.append(
            {"id": ident, "tf": tf, "ts": ts, "period": p, "tf_days": n_days, "roll": roll, "ema": ema}
        )
    add_derivatives(rows, "ema", "roll")
    return _finish(rows, MULTI_TF_COLUMNS)


# --------------------------------------------------------------------------- §3 v2
def oracle_v2(
    grid: Sequence[tuple[Hashable, float]],
    tf: str,
    n_days: int,
    p: int,
    *,
    ident: int | None = None,
) -> list[dict[str, Any]]:
    """``cmc_ema_multi_tf_v2`` rows of one (id, tf, p): one continuous daily EMA of length
    H = N·p (spec 03 §3)."""
    _check_grid(grid)
    h = n_days * p
    if len(grid) < h:
        return []
    emas = sema([close for _ts, close in grid], h)
    rows: list[dict[str, Any]] = []
    for i in range(len(grid)):
        if i < h - 1:  # rows from the H-th grid row (0-based index H-1) onward
            continue
        ts, _close = grid[i]
        assert emas[i] is not None
        roll = (i + 1) % n_days != 0
        rows.append(
            {"id": ident, "tf": tf, "ts": ts, "period": p, "tf_days": n_days, "roll": roll, "ema": emas[i]}
        )
    add_derivatives(rows, "ema", "roll")
    return _finish(rows, MULTI_TF_COLUMNS)


# --------------------------------------------------------------------------- §4 dual
def oracle_dual(
    grid: Sequence[tuple[Hashable, float]],
    canonical_ts: Iterable[Hashable],
    tf: str,
    n_days: int,
    p: int,
    *,
    ident: int | None = None,
) -> list[dict[str, Any]]:
    """Calendar / anchored table rows of one (id, tf, p): dual EMA (spec 03 §4)."""
    _check_grid(grid)
    is_canon = _canonical_flags(grid, canonical_ts)
    alpha_d = 2 / (n_days * p + 1)
    one_minus_alpha_d = 1 - alpha_d

    canon_idx = [i for i, c in enumerate(is_canon) if c]
    if len(canon_idx) < p:
        return []
    bar_ema_values = sema([grid[i][1] for i in canon_idx], p)
    bar_ema = dict(zip(canon_idx, bar_ema_values))
    t0 = canon_idx[p - 1]
    assert bar_ema[t0] is not None

    rows: list[dict[str, Any]] = []
    ema: float | None = None
    ema_bar: float | None = None
    for i in range(len(grid)):
        if i < t0:
            continue
        ts, close = grid[i]
        roll = not is_canon[i]
        # continuous daily EMA, seeded once at t0 with the bar EMA, never snapping back
        if i == t0:
            ema = bar_ema[t0]
        else:
            ema = alpha_d * close + one_minus_alpha_d * ema
        # bar EMA with a chained daily preview
        if is_canon[i]:
            ema_bar = bar_ema[i]
        else:
            ema_bar = alpha_d * close + one_minus_alpha_d * ema_bar
        rows.append(
            {
                "id": ident, "tf": tf, "ts": ts, "period": p, "tf_days": n_days,
                "roll": roll, "ema": ema, "ema_bar": ema_bar, "roll_bar": roll,
            }
        )  # fmt: skip
    add_derivatives(rows, "ema", "roll")
    add_derivatives(rows, "ema_bar", "roll_bar", suffix="_bar")
    return _finish(rows, DUAL_COLUMNS)
