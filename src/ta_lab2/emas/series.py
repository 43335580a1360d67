"""Bars -> EMA rows for one id (spec 03 §2–§5). Pure numpy/numba/polars: no database.

Inputs are the id's **daily grid** (accepted 1D closes in time order) and, per timeframe, a
boolean mask of the grid rows that are canonical closes. Each (tf, period) series is computed
over the whole grid; only rows from ``keep_from`` on are materialised (incremental refreshes
write only the changed tail, but never re-seed on a truncated window). Series that only
continue after their stored rows are stepped by :mod:`ta_lab2.emas.resume` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

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


_FLOATS = ("ema", "d1", "d2", "d1_roll", "d2_roll")
_DUAL_FLOATS = ("ema_bar", "d1_bar", "d2_bar", "d1_roll_bar", "d2_roll_bar")
_NO_MASK = np.zeros(0, dtype=np.bool_)


def _plain(a: np.ndarray | Sequence, dtype: type) -> np.ndarray:
    """``a`` as a writable C-contiguous array of ``dtype``: the one array type the compiled
    kernel is built (and warmed) for — polars hands out read-only views, another type."""
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.writeable else out.copy()


@dataclass(frozen=True)
class TfRows:
    """The rows of one (id, tf) for some periods, as the kernel's arrays (see :func:`tf_arrays`)."""

    tf: str
    n_days: int
    row: np.ndarray  # grid index of each row
    period: np.ndarray
    roll: np.ndarray
    floats: dict[str, np.ndarray]  # NaN = undefined


def tf_arrays(
    kind: str,
    grid: Grid,
    tf: str,
    n_days: int,
    canonical: np.ndarray,
    periods: Sequence[int],
    keep_from_us: int | None = None,
) -> TfRows:
    """The rows of one (id, tf) for ``periods``, from grid instant ``keep_from_us`` on (None: all).

    ``kind`` is one of :data:`KINDS`; ``n_days`` the tf's nominal length in days (≥ 1);
    ``canonical`` the grid rows that are canonical closes of the tf (bool, one per grid row;
    unused by ``v2``); every period ≥ 1. Each (tf, period) series is computed over the whole
    grid, so a tail is bit-identical to the same rows of a full computation. Rows come period
    by period in the order given, ``ts`` ascending within a period. A period with no series
    (too few closes for its seed) has no rows.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown EMA kind {kind!r} (expected one of {KINDS})")
    # imported here: numba and the compiled kernel cost ~0.5 s to load, which a refresh that
    # only resumes series (ta_lab2.emas.resume) never pays
    from ta_lab2.emas.kernel import KIND_BAR, KIND_DUAL, KIND_V2, ema_rows

    code = {"bar": KIND_BAR, "v2": KIND_V2, "dual": KIND_DUAL}[kind]
    # v2's canonical rows follow from n_days: its mask is not read (nor its size checked)
    mask = _NO_MASK if kind == "v2" else _plain(canonical, np.bool_)
    first_kept = 0 if keep_from_us is None else int(np.searchsorted(grid.ts_us, keep_from_us, side="left"))
    # one compiled pass for all periods: per period Python and numpy work dominated short tails
    out = ema_rows(code, _plain(grid.close, np.float64), mask, int(n_days),
                   _plain(periods, np.int64), first_kept)
    floats = dict(zip(_FLOATS, out[3:8]))
    if kind == "dual":
        floats.update(zip(_DUAL_FLOATS, out[8:]))
    return TfRows(tf, int(n_days), out[0], out[1], out[2], floats)


def ids_rows_frame(kind: str, items: Sequence[tuple[Grid, Sequence[TfRows]]]) -> pl.DataFrame:
    """One frame of the rows of every (grid, parts) of ``items`` (in that order) with the
    columns of :data:`EMA_SCHEMA` (:data:`DUAL_SCHEMA` for ``dual``); an undefined value is
    NULL. Built once per batch of ids: per-part or per-id frames cost more than a short tail's
    computation."""
    schema = DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA
    pairs = [(g, p) for g, ps in items for p in ps if p.row.size]
    if not pairs:
        return pl.DataFrame(schema=schema)
    parts = [p for _, p in pairs]
    counts = np.array([p.row.size for p in parts], dtype=np.int64)
    part_of_row = np.repeat(np.arange(len(parts), dtype=np.int64), counts)
    return frame_of_rows(
        kind, np.repeat(np.array([g.id for g, _ in pairs], dtype=np.int32), counts), [p.tf for p in parts], part_of_row,
        np.concatenate([g.ts_us[p.row] for g, p in pairs]), np.concatenate([p.period for p in parts]),
        np.repeat(np.array([p.n_days for p in parts], dtype=np.int32), counts), np.concatenate([p.roll for p in parts]),
        {c: np.concatenate([p.floats[c] for p in parts]) for c in parts[0].floats})


def frame_of_rows(kind: str, ids: np.ndarray, tf_names: Sequence[str], tf_of_row: np.ndarray, ts_us: np.ndarray,
                  period: np.ndarray, tf_days: np.ndarray, roll: np.ndarray,
                  floats: dict[str, np.ndarray]) -> pl.DataFrame:
    """The table frame (:data:`EMA_SCHEMA`, :data:`DUAL_SCHEMA` for ``dual``) of rows given as
    arrays: ``tf_names[tf_of_row[i]]`` is row i's tf, ``ts_us`` its instant (epoch µs, UTC),
    NaN in ``floats`` an undefined value (stored NULL)."""
    schema = DUAL_SCHEMA if kind == "dual" else EMA_SCHEMA
    # Series built directly in their final dtypes: polars expressions (pl.repeat, lit,
    # replace_time_zone) cost ~0.2 ms each, more than the whole computation of a short tail.
    columns = {
        "id": pl.Series("id", np.asarray(ids, dtype=np.int32)),
        "tf": pl.Series("tf", list(tf_names), dtype=pl.String).gather(pl.Series(tf_of_row)),
        # epoch µs read as UTC instants: the same values as naive µs declared UTC
        "ts": pl.Series("ts", np.asarray(ts_us, dtype=np.int64)).cast(UTC_US),
        "period": pl.Series("period", np.asarray(period, dtype=np.int32)),
        "tf_days": pl.Series("tf_days", np.asarray(tf_days, dtype=np.int32)),
        "roll": pl.Series("roll", roll),
        **{c: pl.Series(c, v, nan_to_null=True) for c, v in floats.items()},
    }
    if kind == "dual":
        columns["roll_bar"] = columns["roll"].alias("roll_bar")
    return pl.DataFrame([columns[c].alias(c) for c in schema])


def canonical_closes(canon: pl.DataFrame) -> dict[str, np.ndarray]:
    """The canonical closes (epoch µs) of each tf of ``canon`` (rows ordered by tf)."""
    tfs = canon["tf"].to_numpy()
    closes = canon["time_close"].dt.epoch("us").to_numpy()
    bounds = [0, *(np.flatnonzero(tfs[1:] != tfs[:-1]) + 1).tolist(), len(tfs)]
    return {str(tfs[lo]): closes[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo}


def canonical_mask(grid: Grid, closes_by_tf: dict[str, np.ndarray], tf: str) -> np.ndarray:
    """Grid rows that are canonical closes of ``tf`` (every row for ``1D``)."""
    if tf == "1D":
        return np.ones(grid.n, dtype=bool)
    closes = closes_by_tf.get(tf, np.zeros(0, dtype=np.int64))
    pos = np.searchsorted(grid.ts_us, closes)
    ok = (pos < grid.n) & (grid.ts_us[np.minimum(pos, grid.n - 1)] == closes) if grid.n else np.zeros(0, bool)
    if not ok.all():
        raise ValueError(f"{tf}: canonical closes not on the daily grid of id {grid.id} (rebuild the bars first)")
    mask = np.zeros(grid.n, dtype=bool)
    mask[pos] = True
    return mask
