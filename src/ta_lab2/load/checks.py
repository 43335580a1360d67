"""Checks of parsed rows before they are written. Pure: polars frames in, frozen results out.

* :func:`asset_clashes` — an input that would put its prices under an id ``dim_assets``
  already gives to another asset. An input's ``(name, symbol)`` and the stored
  ``(name, symbol)`` of its id *agree* when they share one label — a name or a symbol,
  compared case-insensitively without surrounding spaces (a CoinMarketCap file's ``name`` may
  hold the symbol it was looked up by). Either side without any label agrees with anything.
* :func:`oddities` — well-formed rows the 1D bar builder will not take as they are: a price
  ≤ 0 (it rejects the row, reason ``non_positive_price``) and, among the other rows, a high
  below the low (it raises the high to ``max(open, close, low)`` and sets ``repaired_high``).
  They still load: the source table keeps what the input said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import polars as pl

from ta_lab2.load.source_schema import SYMBOL_COLUMN

Labels = tuple[str | None, str | None]  # (name, symbol)


@dataclass(frozen=True)
class AssetClash:
    """Input ``source`` calls ``asset_id`` ``incoming``; ``dim_assets`` calls it ``stored``."""

    source: str
    asset_id: int
    stored: Labels
    incoming: Labels

    def describe(self) -> str:
        return (f"{self.source}: id {self.asset_id} is {_show(self.stored)} in dim_assets, "
                f"but the input calls it {_show(self.incoming)}")


def _show(labels: Labels) -> str:
    name, symbol = labels
    if name and symbol:
        return f"{name!r} ({symbol})"
    return repr(name or symbol)


def _key(labels: Labels) -> set[str]:
    return {v.strip().lower() for v in labels if v and v.strip()}


def input_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """The distinct ``(id, name, symbol)`` of a loader's frame (``symbol`` NULL when absent)."""
    symbol = pl.col(SYMBOL_COLUMN) if SYMBOL_COLUMN in frame.columns else pl.lit(None, pl.String)
    return frame.select("id", "name", symbol.alias("symbol")).unique().sort("id", "name", "symbol", nulls_last=True)


def asset_clashes(source: str, labels: pl.DataFrame, stored: Mapping[int, Labels]) -> list[AssetClash]:
    """Every distinct input ``(id, name, symbol)`` of ``labels`` (see :func:`input_labels`)
    that shares no label with the stored ``(name, symbol)`` of its id."""
    clashes = []
    for asset_id, name, symbol in labels.iter_rows():
        known = stored.get(asset_id)
        if known is None:
            continue
        mine, theirs = _key((name, symbol)), _key(known)
        if mine and theirs and not mine & theirs:
            clashes.append(AssetClash(source, asset_id, known, (name, symbol)))
    return clashes


@dataclass(frozen=True)
class Oddities:
    """Counts of accepted rows the 1D bar builder will reject or repair (see the module doc)."""

    non_positive_price: int = 0
    high_below_low: int = 0

    def __add__(self, other: "Oddities") -> "Oddities":
        return Oddities(self.non_positive_price + other.non_positive_price, self.high_below_low + other.high_below_low)

    def __bool__(self) -> bool:
        return bool(self.non_positive_price or self.high_below_low)


def oddities(frame: pl.DataFrame) -> Oddities:
    """Count, in a loader's frame, rows with a finite price ≤ 0 among open, high, low and close,
    and the other rows whose finite high is below their finite low."""
    def finite(c: str) -> pl.Expr:
        return pl.col(c).is_not_null() & pl.col(c).is_finite()

    non_positive = pl.any_horizontal([finite(c) & (pl.col(c) <= 0) for c in ("open", "high", "low", "close")])
    inverted = finite("high") & finite("low") & (pl.col("high") < pl.col("low")) & ~non_positive
    row = frame.select(non_positive.sum().alias("np"), inverted.sum().alias("hl")).row(0)
    return Oddities(int(row[0] or 0), int(row[1] or 0))
