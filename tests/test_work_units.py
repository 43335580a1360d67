"""Work units: which ids one unit (one transaction, one Dask task) builds together. A full
rebuild packs young ids together and leaves each long history alone; an incremental run
takes a fixed number of ids. The expected units come from a plain loop over 1D row counts
read by SQL written here."""

from __future__ import annotations

import pytest

from ta_lab2.bars.build import build
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig
from ta_lab2.work.units import IDS_PER_BATCH, INCREMENTAL_IDS, UNIT_DAYS, work_units

pytestmark = pytest.mark.db

# one long history, a run of young ones (more than a unit holds), two mid-sized ones that do
# not fit together, and one asset with no 1D row at all (its source rows are all rejected)
LENGTHS = (UNIT_DAYS + 300, *(40,) * (IDS_PER_BATCH + 5), 1_200, 900, 30, 5)


def _expected(ids: list[int], days: dict[int, int]) -> list[list[int]]:
    units: list[list[int]] = []
    for ident in ids:
        fits = units and len(units[-1]) < IDS_PER_BATCH and sum(days.get(i, 0) for i in units[-1]) + days.get(ident, 0) <= UNIT_DAYS
        if fits:
            units[-1].append(ident)
        else:
            units.append([ident])
    return units


def test_full_rebuild_units_pack_short_histories_and_leave_long_ones_alone(fresh_db: Target) -> None:
    with connect(fresh_db, autocommit=True) as conn:
        ensure_schema(conn)
        load_synthetic(conn, SyntheticConfig(len(LENGTHS), max(LENGTHS), 7, lengths=LENGTHS, gap_rate=0.02))
        ids = [r[0] for r in conn.execute("SELECT id FROM dim_assets ORDER BY id").fetchall()]
        conn.execute("UPDATE cmc_price_histories7 SET close = -1 WHERE id = %s", (ids[-1],))
        build(conn, "1d", None, full_rebuild=True)
        days = dict(conn.execute("SELECT id, count(*) FROM cmc_price_bars_1d GROUP BY id").fetchall())
        assert ids[-1] not in days and days[ids[0]] > UNIT_DAYS

        units = work_units(conn, ids, "public", full=True)
        assert units == _expected(ids, days)
        assert units[0] == [ids[0]]  # the long history alone
        assert len(units[1]) == IDS_PER_BATCH  # young ids, as many as a unit takes
        assert [i for u in units for i in u] == ids
        # an incremental run: fixed batches, whatever the histories, spread over the workers
        assert work_units(conn, ids, "public", full=False) == [ids]
        halves = work_units(conn, ids, "public", full=False, spread=2)
        assert halves == [ids[:(len(ids) + 1) // 2], ids[(len(ids) + 1) // 2:]]
        many = list(range(1, 2 * INCREMENTAL_IDS + 2))
        assert [len(u) for u in work_units(conn, many, "public", full=False)] == [INCREMENTAL_IDS] * 2 + [1]
