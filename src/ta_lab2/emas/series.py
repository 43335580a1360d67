"""Bars -> EMA rows for one id (spec 03 §2–§5). Pure numpy/polars: no database.

Inputs are the id's **daily grid** (accepted 1D closes in time order) and, per timeframe, a
boolean mask of the grid rows that are canonical closes. Each (tf, period) series is computed
over the whole grid; only rows from ``keep_from`` on are materialised (incremental refreshes
write only the changed tail, but never re-seed on a truncated window).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from ta_lab2.emas.kernel import chained, sema
from ta_lab2.load.source_schema import UTC_US

EMA_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "tf": pl.String(),
    "ts": UTC_US,
    "period": pl.Int32(),
    "tf_days": pl.Int32(),
    "roll": pl.Boolean(),
    "ema": pl.Float64(),
    "d1": pl.Float64(),
    "d2": pl.Float64(),
    "d1_roll": pl.Float64(),
    "d2_roll": pl.Float64(),
}
DUAL_SCHEMA: dict[str, pl.DataType] = {
    **EMA_SCHEMA,
    "ema_bar": pl.Float64(),
    "d1_bar": pl.Float64(),
    "d2_bar": pl.Float64(),
    "roll_bar": pl.Boolean(),
    "d1_roll_bar": pl.Float64(),
    "d2_roll_bar": pl.Float64(),
}

#: table kind -> how a (tf, period) series is defined
KINDS = ("bar", "v2", "dual")


@dataclass(frozen=True)
class Grid:
    """One id's daily grid: instants (epoch µs, UTC) and closes, in time order."""

    id: int
    ts_us: np.ndarray  # int64
    close: np.ndarray  # float64

    @property
    def n(self) -> int:
        return int(self.ts_us.size)


def _diffs(values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and second differences along ``rows`` (indices into ``values``), NaN where undefined."""
    v = values[rows]
    d1 = np.full(v.size, np.nan)
    d2 = np.full(v.size, np.nan)
    if v.size > 1:
        d1[1:] = v[1:] - v[:-1]
    if v.size > 2:
        d2[2:] = d1[2:] - d1[1:-1]
    return d1, d2


def _tail_diffs(values: np.ndarray, start: int, rows: np.ndarray,
                roll: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d1_roll, d2_roll, d1, d2) of the emitted rows ``start…`` restricted to ``rows`` (a
    contiguous tail): the same differences as over the whole series, computed from only the
    rows they need (two rows before the tail; two canonical rows before it)."""
    if rows.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    lo = int(rows[0])
    ext = np.arange(max(start, lo - 2), values.size)
    d1r, d2r = _diffs(values, ext)
    off = lo - int(ext[0])
    canon = start + np.flatnonzero(~roll[start:])
    c_ext = canon[max(0, int(np.searchsorted(canon, lo)) - 2):]
    c1, c2 = _diffs(values, c_ext)
    d1 = np.full(rows.size, np.nan)
    d2 = np.full(rows.size, np.nan)
    inside = c_ext >= lo
    d1[c_ext[inside] - lo] = c1[inside]
    d2[c_ext[inside] - lo] = c2[inside]
    return d1r[off:], d2r[off:], d1, d2


def series_arrays(kind: str, grid: Grid, canonical: np.ndarray, n_days: int, p: int) -> dict[str, np.ndarray] | None:
    """Whole-grid arrays of one (tf, period) series, or None when nothing is emitted.

    Returns ``start`` (first emitted grid index, as a 0-d array), ``ema``, ``roll`` and, for
    the dual tables, ``ema_bar`` — each over the whole grid (NaN before ``start``).
    """
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
        # last canonical position at or before t (previews never feed each other)
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


def tf_rows(
    kind: str,
    grid: Grid,
    tf: str,
    n_days: int,
    canonical: np.ndarray,
    periods: Sequence[int],
    keep_from_us: int | None = None,
) -> pl.DataFrame:
    """All rows of one (id, tf) for ``periods``, from grid instant ``keep_from_us`` on (None: all)."""
    schema = DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA
    cols: dict[str, list[np.ndarray]] = {c: [] for c in schema if c not in ("id", "tf")}
    first_kept = 0 if keep_from_us is None else int(np.searchsorted(grid.ts_us, keep_from_us, side="left"))
    for p in periods:
        arrays = series_arrays(kind, grid, canonical, n_days, p)
        if arrays is None:
            continue
        start = int(arrays["start"])
        roll = arrays["roll"]
        ema = arrays["ema"]
        rows = np.arange(max(start, first_kept), grid.n)
        d1r, d2r, d1, d2 = _tail_diffs(ema, start, rows, roll)
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
            b1r, b2r, b1, b2 = _tail_diffs(ema_bar, start, rows, roll)
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
    # NaN marks "undefined" in the arrays; the tables store NULL.
    floats = [c for c, t in schema.items() if t == pl.Float64()]
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in floats)
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()])


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_us(ts: dt.datetime) -> int:
    """Microseconds since 1970-01-01 UTC (exact integer arithmetic)."""
    return (ts - _EPOCH) // dt.timedelta(microseconds=1)
