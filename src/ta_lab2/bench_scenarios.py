"""The scenarios of ``ta-lab2 bench``: which synthetic universe each one builds, with which
timeframes and periods, and which scenarios one invocation runs.

``upstream`` and ``wide`` are fixed; ``universe`` is a market-shaped universe of many assets
whose listing dates spread over the window as real listings do (see :func:`listing_lengths`),
sized by ``--assets`` and ``--days``. Every universe is deterministic and uses the synthetic
ids (9,000,001 on, :mod:`ta_lab2.load.synthetic`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = [
    "NEW_DAYS", "SCENARIOS", "UNIVERSE_ASSETS", "UNIVERSE_DAYS", "Scenario", "listing_lengths",
    "scenario_frame", "select_scenarios", "universe_scenario",
]

UPSTREAM_LENGTHS = (5700, 3800, 3200, 2900, 2200, 1900, 400)
#: one-day refreshes measured, one new day each; the bar uses their median (a single ~2 s run
#: varies by a third on a shared 2-core VM)
NEW_DAYS = 3
END_DATE = dt.date(2025, 12, 31)
WIDE_TIMEFRAMES = ("1D", "2D", "3D", "5D", "7D", "14D", "1W_CAL_ISO", "1W_CAL_US", "1M_CAL",
                   "1W_CAL_ANCHOR_ISO", "1W_CAL_ANCHOR_US", "1M_CAL_ANCHOR")

#: the ``universe`` scenario's default size: 500 assets over a window of this many days, sized
#: so that the database with one capture's snapshot stays under 20 GB and its full rebuild
#: well under 20 minutes on 2 cores (docs/performance.md, "Universe scale")
UNIVERSE_ASSETS = 500
UNIVERSE_DAYS = 1280
#: mean age of a listing, as a fraction of the window (an exponential law: many recent
#: listings, few old ones); the shortest history and the seed of the ages
MEAN_AGE_FRACTION = 1 / 8
MIN_AGE_DAYS = 30
LISTING_SEED = 20_251_231


@dataclass(frozen=True)
class Scenario:
    """One bench universe. ``lengths``: each asset's days of history before the
    :data:`NEW_DAYS` held-back days; ``periods``: ``--periods`` of every EMA table (None: the
    defaults); ``timeframes``: the canonical ones (None: as shipped); ``reference``: the
    scenario whose cost per output row this one's is compared with, in the same invocation."""

    name: str
    lengths: tuple[int, ...]
    periods: str | None = None
    timeframes: tuple[str, ...] | None = None
    compare_rows: int = 1_000_000
    reference: str | None = None

    @property
    def source_days(self) -> int:
        return sum(self.lengths)


SCENARIOS = {
    "upstream": Scenario("upstream", UPSTREAM_LENGTHS),
    "wide": Scenario("wide", (2000,) * 100, "10,20,50", WIDE_TIMEFRAMES),
    "tiny": Scenario("tiny", (90, 60), "3,5", ("1D", "2D", "1W_CAL_ISO", "1W_CAL_US", "1M_CAL_ANCHOR"), 2000),
}


def listing_lengths(assets: int, days: int, seed: int = LISTING_SEED) -> tuple[int, ...]:
    """Days of history of ``assets`` assets over a window of ``days`` days, all ending on the
    same day, as real listings are spread: the first asset was listed when the window opens;
    every other asset's age is ``MIN_AGE_DAYS`` plus an exponential draw of mean
    ``MEAN_AGE_FRACTION · days``, capped at ``days`` — many recent listings, few old ones.
    Deterministic for ``(assets, days, seed)``; the first asset is the oldest."""
    if assets < 1 or days < 1:
        raise ValueError(f"a universe needs at least one asset and one day, got {assets} assets, {days} days")
    rng = np.random.default_rng(seed)
    ages = MIN_AGE_DAYS + np.floor(rng.exponential(MEAN_AGE_FRACTION * days, size=assets - 1)).astype(np.int64)
    return (days, *np.minimum(ages, days).tolist())


def universe_scenario(assets: int = UNIVERSE_ASSETS, days: int = UNIVERSE_DAYS) -> Scenario:
    """The ``universe`` scenario: canonical timeframes, default periods, costs per row
    compared with ``upstream``'s."""
    return Scenario("universe", listing_lengths(assets, days), reference="upstream")


def select_scenarios(name: str, assets: int | None = None, days: int | None = None,
                     reference: str | None = None) -> list[Scenario]:
    """The scenarios ``--scenario name`` runs, in order: ``all`` is ``upstream`` and ``wide``;
    ``universe`` (sized by ``assets`` and ``days``) runs its reference scenario first —
    ``upstream``, or ``reference`` — so that its per-row costs are measured in the same run.
    Raises ``ValueError`` for an unknown name or a size given to a fixed scenario."""
    if name != "universe" and (assets is not None or days is not None or reference is not None):
        raise ValueError("--assets, --days and --reference apply to --scenario universe only")
    if name == "all":
        return [SCENARIOS["upstream"], SCENARIOS["wide"]]
    if name in SCENARIOS:
        return [SCENARIOS[name]]
    if name != "universe":
        raise ValueError(f"{name!r} is not one of upstream, wide, all, universe, tiny")
    universe = universe_scenario(UNIVERSE_ASSETS if assets is None else assets, UNIVERSE_DAYS if days is None else days)
    if reference is not None:
        if reference not in SCENARIOS:
            raise ValueError(f"--reference: {reference!r} is not one of {', '.join(SCENARIOS)}")
        universe = dataclasses.replace(universe, reference=reference)
    return [SCENARIOS[universe.reference or "upstream"], universe]


def scenario_frame(scenario: Scenario) -> pl.DataFrame:
    """The scenario's source rows, ending :data:`NEW_DAYS` days after the history the full
    rebuild sees: column ``days_left`` is 0 on an asset's newest day, 1 on the one before, …
    (the incremental steps load ``days_left == NEW_DAYS - 1``, then ``- 2``, …; the history is
    ``days_left >= NEW_DAYS``)."""
    from ta_lab2.load.synthetic import SyntheticConfig, generate_universe

    lengths = tuple(n + NEW_DAYS for n in scenario.lengths)
    frame = generate_universe(SyntheticConfig(len(lengths), max(lengths), 1, end_date=END_DATE, lengths=lengths)).frame
    return frame.with_columns(days_left=pl.col("timestamp").rank("ordinal", descending=True).over("id") - 1)
