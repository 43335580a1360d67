"""Deterministic synthetic daily price histories (spec 01, "Loaders", item 3).

:func:`generate_universe` builds a frame shaped exactly like a loader's output
(:data:`ta_lab2.load.source_schema.SOURCE_SCHEMA` plus ``symbol``), one row per asset and
calendar day, for use by the demo, tests and benchmarks. It is pure: no database, no clock, no
I/O; the output depends on the :class:`SyntheticConfig` only.

Model, per asset (units: prices and market cap in quote currency, e.g. USD; volume in quote
currency traded over the day; circulating supply in coins):

* **Ids.** Asset k has id ``9_000_001 + k``, symbol ``SYN<id>`` and name ``Synthetic SYN<id>``:
  ids 9,000,001–9,999,999 are reserved for synthetic assets, far from real CoinMarketCap ids.
* **Listing.** Asset 0 has ``days`` calendar days of history ending at ``end_date``; asset k>0 a
  deterministic random length in ``[max(ceil(0.35·days), min(30, days)), days]``, also ending at
  ``end_date`` (so listing dates, weekdays and month days differ). ``lengths`` overrides both.
* **Closes.** Geometric random walk: daily log return ``r = μ − σ²/2 + σ·z`` with Student-t(5)
  shocks scaled to unit variance and ``σ`` following a regime-switching volatility (a new
  log-normal volatility level starts with probability 1/40 each day; regimes are indexed by a
  cumulative sum of the switch flags, so the whole path is vectorised). This gives volatility
  clustering. Start prices are log-uniform in [0.05, 40000].
* **OHLC.** ``open(k) = close(k−1)·exp(ε)`` with ``|ε|`` ~ 0.05 %; the first open is jittered
  around the start price. ``high = max(open, close)·exp(|ζ|)`` and
  ``low = min(open, close)·exp(−|ζ'|)``, with ``ζ, ζ' ~ N(0, (σ/2)²)``.
* **Supply / market cap / volume.** Supply grows slowly (0–8 %/year, exponential);
  ``marketcap = close · circulatingsupply``; ``volume = marketcap · turnover`` with a log-normal
  daily turnover that rises with ``|r|``. All strictly positive.
* **Instants** (``Datetime("us", "UTC")``): ``timestamp = timeclose = day 23:59:59.999``,
  ``timeopen = day 00:00:00.000``, ``timehigh``/``timelow`` two distinct random millisecond
  instants strictly inside the day. ``date`` is the day, ``source_file = "synthetic:<seed>"``.

Defects (each drawn per asset from the same stream, so changing a rate changes only the defects,
never the underlying prices):

* **Missing days.** Each interior day starts a gap of 1–5 consecutive calendar days with
  probability ``gap_rate``; a start is ignored if another start was drawn in the 6 previous days,
  so gaps never merge (every gap is 1–5 days, separated by at least one present day). An asset's
  first and last day are never removed (a gap that would reach the last day is shortened).
* With probability ``defect_rate`` per row, independently: ``timehigh`` moved one day earlier
  (outside its candle); ``high`` set 0.1–2 % below ``max(open, close)``; ``marketcap`` NULL.

With ``gap_rate == 0`` and ``defect_rate == 0`` the output is clean and gap-free.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from ta_lab2.load.source_schema import SYMBOL_COLUMN, conform

__all__ = [
    "MAX_ASSETS",
    "SYNTHETIC_ID_FIRST",
    "SYNTHETIC_ID_LAST",
    "SyntheticConfig",
    "SyntheticUniverse",
    "asset_ids",
    "asset_name",
    "asset_symbol",
    "generate_universe",
]

#: Ids reserved for synthetic assets: asset k of a universe is ``SYNTHETIC_ID_FIRST + k``. The
#: range lies far above every CoinMarketCap id (a few tens of thousands today) and inside the
#: 32-bit ``integer`` id column, so synthetic prices never share an id with a real asset.
SYNTHETIC_ID_FIRST = 9_000_001
SYNTHETIC_ID_LAST = 9_999_999
MAX_ASSETS = SYNTHETIC_ID_LAST - SYNTHETIC_ID_FIRST + 1

_EPOCH = dt.date(1970, 1, 1)
_MS_PER_DAY = 86_400_000
_US_PER_MS = 1_000
_US_PER_DAY = _MS_PER_DAY * _US_PER_MS
_CLOSE_OFFSET_US = (_MS_PER_DAY - 1) * _US_PER_MS  # 23:59:59.999

_MIN_FRACTION = 0.35  # shortest derived history, as a fraction of ``days``
_MIN_DAYS = 30  # ... but at least this many days (or ``days`` if smaller)
_MAX_GAP = 5
_REGIME_SWITCH_P = 1.0 / 40.0
_T_DF = 5.0

_INSTANT_COLUMNS: tuple[str, ...] = ("timeopen", "timeclose", "timehigh", "timelow", "timestamp")
_FLOAT_COLUMNS: tuple[str, ...] = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "marketcap",
    "circulatingsupply",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic universe.

    Attributes:
        n_assets: number of assets (0 … :data:`MAX_ASSETS`); ids are :func:`asset_ids` ``(n_assets)``.
        days: history length, in calendar days, of asset 0 (the longest asset). Ignored when
            ``lengths`` is given.
        seed: non-negative integer seed; the whole output is a function of the config.
        end_date: last calendar day (UTC) of every asset.
        lengths: explicit calendar-day history length per asset (each >= 1, ``len == n_assets``);
            overrides the lengths derived from ``days``. The span first→last day + 1 equals the
            length even with gaps (first and last days are never removed).
        gap_rate: probability, per interior day, that a gap of 1–5 missing days starts there.
        defect_rate: probability per row of each defect kind (timehigh outside its candle,
            high below max(open, close), NULL marketcap), drawn independently.
    """

    n_assets: int
    days: int
    seed: int
    end_date: dt.date = dt.date(2025, 12, 31)
    lengths: tuple[int, ...] | None = None
    gap_rate: float = 0.01
    defect_rate: float = 0.005

    def __post_init__(self) -> None:
        _check_count(self.n_assets)
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.lengths is None:
            if self.days < 1:
                raise ValueError(f"days must be >= 1, got {self.days}")
        else:
            if len(self.lengths) != self.n_assets:
                raise ValueError(
                    f"lengths has {len(self.lengths)} entries but n_assets is {self.n_assets}"
                )
            if any(int(n) < 1 for n in self.lengths):
                raise ValueError("every entry of lengths must be >= 1")
        for label, rate in (("gap_rate", self.gap_rate), ("defect_rate", self.defect_rate)):
            if not (0.0 <= rate <= 1.0):
                raise ValueError(f"{label} must be in [0, 1], got {rate}")
        if (self.end_date - _EPOCH).days < 0:
            raise ValueError(f"end_date must not be before 1970-01-01, got {self.end_date}")


@dataclass(frozen=True)
class SyntheticUniverse:
    """A generated universe.

    Attributes:
        frame: exactly ``SOURCE_SCHEMA`` columns + ``symbol``, sorted by ``(id, timestamp)``,
            keys unique.
        config: the config it was generated from.
    """

    frame: pl.DataFrame
    config: SyntheticConfig


def asset_ids(n_assets: int) -> list[int]:
    """The ids of a universe of ``n_assets``: 9000001, 9000002, … (:data:`SYNTHETIC_ID_FIRST` on).

    A prefix of ``asset_ids(n)`` is ``asset_ids(m)`` for ``m <= n``.
    """
    _check_count(n_assets)
    return list(range(SYNTHETIC_ID_FIRST, SYNTHETIC_ID_FIRST + n_assets))


def _check_count(n_assets: int) -> None:
    if not 0 <= n_assets <= MAX_ASSETS:
        raise ValueError(f"the number of assets must be in [0, {MAX_ASSETS:,}] (ids {SYNTHETIC_ID_FIRST:,} to "
                         f"{SYNTHETIC_ID_LAST:,} are reserved for synthetic assets), got {n_assets:,}")


def asset_symbol(asset_id: int) -> str:
    """Stable symbol of a synthetic asset: ``SYN<id>``."""
    return f"SYN{asset_id}"


def asset_name(asset_id: int) -> str:
    """Stable name of a synthetic asset: ``Synthetic SYN<id>``."""
    return f"Synthetic {asset_symbol(asset_id)}"


def _derived_length(u: float, days: int) -> int:
    """Map a uniform draw ``u`` in [0, 1) to a history length in [lo, days]."""
    lo = min(days, max(math.ceil(_MIN_FRACTION * days), min(_MIN_DAYS, days)))
    return lo + min(int(u * (days - lo + 1)), days - lo)


def _gap_mask(rng: np.random.Generator, n: int, gap_rate: float) -> np.ndarray:
    """Boolean keep-mask of length ``n``: False on missing days.

    Always consumes the same draws for a given ``n`` (independent of ``gap_rate``).
    """
    u = rng.random(n)
    glen = rng.integers(1, _MAX_GAP + 1, size=n)
    keep = np.ones(n, dtype=bool)
    if n < 3 or gap_rate <= 0.0:
        return keep
    fire = u < gap_rate
    fire[0] = False
    fire[-1] = False
    # Ignore a start if another start fired in the previous _MAX_GAP + 1 days: gaps never merge.
    c = np.concatenate(([0], np.cumsum(fire)))
    idx = np.arange(n)
    recent = c[idx] - c[np.maximum(idx - (_MAX_GAP + 1), 0)]
    starts = np.flatnonzero(fire & (recent == 0))
    if starts.size == 0:
        return keep
    ends = np.minimum(starts + glen[starts], n - 1)  # exclusive; never reaches the last day
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, ends, -1)
    keep[np.cumsum(diff[:n]) > 0] = False
    return keep


def _asset_columns(
    config: SyntheticConfig, k: int, asset_id: int, end_day: int
) -> dict[str, np.ndarray]:
    """Numpy columns of asset number ``k`` (before defects are masked into the frame)."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(k,)))

    # --- static per-asset parameters (fixed draw order: do not reorder) -------------------
    u_len = float(rng.random())
    log_p0 = rng.uniform(math.log(0.05), math.log(40_000.0))
    ann_vol = rng.uniform(0.35, 1.2)
    ann_drift = rng.uniform(-0.2, 0.5)
    log_mcap0 = rng.uniform(math.log(1e6), math.log(1e11))
    supply_growth = rng.uniform(0.0, 0.08) / 365.0
    log_turnover = rng.uniform(math.log(0.005), math.log(0.2))

    if config.lengths is not None:
        n = int(config.lengths[k])
    elif k == 0:
        n = config.days
    else:
        n = _derived_length(u_len, config.days)

    # --- close path with regime-switching volatility ---------------------------------------
    sigma_base = ann_vol / math.sqrt(365.0)
    switch = rng.random(n) < _REGIME_SWITCH_P
    regime = np.minimum(np.cumsum(switch), n - 1)  # a switch on the last day would index past the levels
    levels = np.exp(rng.normal(-0.18, 0.6, size=n))  # E[level] ~ 1
    sigma = np.clip(sigma_base * levels[regime], 0.002, 0.25)
    z = rng.standard_t(_T_DF, size=n) * math.sqrt((_T_DF - 2.0) / _T_DF)
    r = np.clip(ann_drift / 365.0 - 0.5 * sigma**2 + sigma * z, -0.9, 0.9)
    r[0] = 0.0
    close = np.exp(log_p0 + np.cumsum(r))

    prev_close = np.empty(n)
    prev_close[0] = math.exp(log_p0)
    prev_close[1:] = close[:-1]
    open_ = prev_close * np.exp(rng.normal(0.0, 0.0005, size=n))
    hi_ext = np.abs(rng.normal(0.0, 0.5, size=n)) * sigma
    lo_ext = np.abs(rng.normal(0.0, 0.5, size=n)) * sigma
    high = np.maximum(open_, close) * np.exp(hi_ext)
    low = np.minimum(open_, close) * np.exp(-lo_ext)

    # --- supply, market cap, volume ---------------------------------------------------------
    supply0 = math.exp(log_mcap0 - log_p0)
    supply = supply0 * np.exp(supply_growth * np.arange(n))
    marketcap = close * supply
    turnover = np.exp(log_turnover + rng.normal(0.0, 0.4, size=n)) * (1.0 + 15.0 * np.abs(r))
    volume = marketcap * turnover

    # --- instants ---------------------------------------------------------------------------
    day = np.arange(end_day - n + 1, end_day + 1, dtype=np.int64)
    day_us = day * _US_PER_DAY
    th_ms = rng.integers(1, _MS_PER_DAY - 1, size=n)  # strictly inside [00:00:00.000, .999]
    shift = rng.integers(1, _MS_PER_DAY - 2, size=n)  # non-zero shift on the ring 1.._MS-2
    tl_ms = (th_ms - 1 + shift) % (_MS_PER_DAY - 2) + 1
    timehigh = day_us + th_ms * _US_PER_MS
    timelow = day_us + tl_ms * _US_PER_MS

    # --- defects (draws always consumed; rates only decide which rows are affected) --------
    keep = _gap_mask(rng, n, config.gap_rate)
    u_th, u_hi, u_mc = rng.random(n), rng.random(n), rng.random(n)
    hi_cut = rng.uniform(0.001, 0.02, size=n)
    rate = config.defect_rate
    bad_th = u_th < rate
    bad_hi = u_hi < rate
    null_mc = u_mc < rate
    timehigh = np.where(bad_th, timehigh - _US_PER_DAY, timehigh)
    high = np.where(bad_hi, np.maximum(open_, close) * (1.0 - hi_cut), high)

    cols: dict[str, np.ndarray] = {
        "id": np.full(n, asset_id, dtype=np.int32),
        "timeopen": day_us,
        "timeclose": day_us + _CLOSE_OFFSET_US,
        "timehigh": timehigh,
        "timelow": timelow,
        "timestamp": day_us + _CLOSE_OFFSET_US,
        "open": open_,
        "high": high,
        "low": low,
        "close": close,
        "volume": volume,
        "marketcap": marketcap,
        "circulatingsupply": supply,
        "date": day.astype(np.int32),
        "_null_mc": null_mc,
    }
    return {name: a[keep] for name, a in cols.items()}


def generate_universe(config: SyntheticConfig) -> SyntheticUniverse:
    """Generate the synthetic universe described by ``config`` (see the module docstring).

    Deterministic: the same config gives an identical frame. Asset k's rows depend only on
    ``(seed, k, its length, end_date, gap_rate, defect_rate)``, so growing ``n_assets`` leaves
    existing assets unchanged. Returns a frame conforming to ``SOURCE_SCHEMA`` + ``symbol``,
    sorted by ``(id, timestamp)``.
    """
    ids = asset_ids(config.n_assets)
    end_day = (config.end_date - _EPOCH).days
    parts = [_asset_columns(config, k, asset_id, end_day) for k, asset_id in enumerate(ids)]
    if parts:
        cols = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    else:
        cols = {"id": np.empty(0, dtype=np.int32), "_null_mc": np.empty(0, dtype=bool)}
        cols |= {c: np.empty(0, dtype=np.int64) for c in _INSTANT_COLUMNS + ("date",)}
        cols |= {c: np.empty(0) for c in _FLOAT_COLUMNS}

    utc_us = pl.Datetime("us", "UTC")
    raw = pl.DataFrame({name: pl.Series(name, a) for name, a in cols.items()})
    frame = (
        raw.with_columns(
            *[pl.col(c).cast(utc_us) for c in _INSTANT_COLUMNS],
            pl.col("date").cast(pl.Int32).cast(pl.Date),
            pl.when(pl.col("_null_mc"))
            .then(None)
            .otherwise(pl.col("marketcap"))
            .alias("marketcap"),
            pl.format("SYN{}", pl.col("id")).alias(SYMBOL_COLUMN),
            pl.format("Synthetic SYN{}", pl.col("id")).alias("name"),
            pl.lit(f"synthetic:{config.seed}").alias("source_file"),
        )
        .pipe(conform)
        .sort(["id", "timestamp"])
    )
    return SyntheticUniverse(frame=frame, config=config)

