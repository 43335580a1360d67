"""The normalised shape of source rows, shared by every loader (spec 01, ``cmc_price_histories7``).

A loader's job is to turn its input into a polars frame with exactly :data:`SOURCE_SCHEMA`
(plus the optional ``symbol`` column for ``dim_assets``) and a frame of rejects with
:data:`REJECT_SCHEMA`. The database layer only moves such frames.

Instants are ``Datetime("us", "UTC")``: PostgreSQL ``timestamptz`` has microsecond resolution,
so a CoinMarketCap close ``23:59:59.999Z`` round-trips exactly.
"""

from __future__ import annotations

import polars as pl

UTC_US = pl.Datetime("us", "UTC")

SOURCE_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int32(),
    "name": pl.String(),
    "timeopen": UTC_US,
    "timeclose": UTC_US,
    "timehigh": UTC_US,
    "timelow": UTC_US,
    "timestamp": UTC_US,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "marketcap": pl.Float64(),
    "circulatingsupply": pl.Float64(),
    "date": pl.Date(),
    "source_file": pl.String(),
}

#: Columns whose change makes an upsert bump ``load_ts`` (everything but provenance).
VALUE_COLUMNS: tuple[str, ...] = tuple(c for c in SOURCE_SCHEMA if c not in ("id", "timestamp", "source_file"))

#: Optional extra column a loader may add; it feeds ``dim_assets.symbol``.
SYMBOL_COLUMN = "symbol"

REJECT_SCHEMA: dict[str, pl.DataType] = {
    "source_file": pl.String(),
    "line": pl.Int64(),  # 1-based physical line in a text file (header = line 1); row number + 1 in Parquet
    "reason": pl.String(),
    "raw": pl.String(),  # the offending row as read, for the user to fix
}


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Select/cast ``frame`` to :data:`SOURCE_SCHEMA` (+ ``symbol`` if present), adding NULL columns."""
    exprs = [
        (pl.col(c) if c in frame.columns else pl.lit(None)).cast(t).alias(c) for c, t in SOURCE_SCHEMA.items()
    ]
    if SYMBOL_COLUMN in frame.columns:
        exprs.append(pl.col(SYMBOL_COLUMN).cast(pl.String))
    return frame.select(exprs)
