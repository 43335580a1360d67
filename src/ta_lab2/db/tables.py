"""Names of the pipeline's tables, in dependency order (spec 02, 03). One source of truth."""

from __future__ import annotations

SOURCE_TABLE = "cmc_price_histories7"
BARS_1D = "cmc_price_bars_1d"
BARS_1D_REJECTS = "cmc_price_bars_1d_rejects"
#: one row per (id, transaction) that removed rows from the 1D table: where the removal began
BARS_1D_DELETIONS = "cmc_price_bars_1d_deletions"
LOAD_REJECTS = "load_rejects"

#: builder name -> bar table (``1d`` first: every other table is built from it)
BAR_TABLES: dict[str, str] = {
    "1d": BARS_1D,
    "multi_tf": "cmc_price_bars_multi_tf",
    "cal_iso": "cmc_price_bars_multi_tf_cal_iso",
    "cal_us": "cmc_price_bars_multi_tf_cal_us",
    "cal_anchor_iso": "cmc_price_bars_multi_tf_cal_anchor_iso",
    "cal_anchor_us": "cmc_price_bars_multi_tf_cal_anchor_us",
}

#: refresher name -> EMA table
EMA_TABLES: dict[str, str] = {
    "multi_tf": "cmc_ema_multi_tf",
    "v2": "cmc_ema_multi_tf_v2",
    "cal_us": "cmc_ema_multi_tf_cal_us",
    "cal_iso": "cmc_ema_multi_tf_cal_iso",
    "cal_anchor_us": "cmc_ema_multi_tf_cal_anchor_us",
    "cal_anchor_iso": "cmc_ema_multi_tf_cal_anchor_iso",
}

ANCHORED_BAR_TABLES = frozenset({BAR_TABLES["cal_anchor_iso"], BAR_TABLES["cal_anchor_us"]})
DUAL_EMA_TABLES = frozenset(EMA_TABLES[k] for k in ("cal_us", "cal_iso", "cal_anchor_us", "cal_anchor_iso"))

PIPELINE_TABLES: tuple[str, ...] = (*BAR_TABLES.values(), *EMA_TABLES.values())


def state_table(table: str) -> str:
    """The incremental-refresh state table of a bar or EMA table."""
    return f"{table}_state"

