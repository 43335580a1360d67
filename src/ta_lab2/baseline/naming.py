"""Names of a capture's objects, all within PostgreSQL's 63-byte identifier limit.

* suffix: ``YYYYMMDD_HHMMSS`` (UTC), from the capture's single clock read;
* the 12 pipeline tables: ``<schema>.<table>_snapshot_<suffix>`` (the seed's naming; the
  longest, ``cmc_price_bars_multi_tf_cal_anchor_iso_snapshot_20260205_143022``, is exactly
  63 bytes);
* state tables, the 1D rejects and deletion log (longer names): copies with their own names in the
  auxiliary schema ``baseline_<suffix>``, recorded in the registry;
* primary-key constraints: ``bs<suffix>_<n>_pk`` (short and unique per capture).
"""

from __future__ import annotations

import datetime as dt
import re

from ta_lab2.db.tables import BARS_1D_DELETIONS, BARS_1D_REJECTS, PIPELINE_TABLES, state_table

MAX_IDENT = 63
SUFFIX_RE = re.compile(r"^\d{8}_\d{6}$")


SUFFIX_FORMAT = "%Y%m%d_%H%M%S"


def make_suffix(now: dt.datetime) -> str:
    """A capture's suffix: its instant in UTC, to the second."""
    return now.astimezone(dt.timezone.utc).strftime(SUFFIX_FORMAT)


def check_suffix(suffix: str) -> str:
    if not SUFFIX_RE.match(suffix):
        from ta_lab2.errors import UsageError

        raise UsageError(f"suffix: {suffix!r} is not a capture suffix (YYYYMMDD_HHMMSS); see `ta-lab2 baseline list`")
    return suffix


def _checked(name: str) -> str:
    if len(name.encode()) > MAX_IDENT:
        raise ValueError(f"identifier {name!r} is {len(name.encode())} bytes, over PostgreSQL's {MAX_IDENT}")
    return name


def snapshot_name(table: str, suffix: str) -> str:
    return _checked(f"{table}_snapshot_{suffix}")


def aux_schema(suffix: str) -> str:
    return _checked(f"baseline_{suffix}")


def constraint_name(suffix: str, n: int) -> str:
    return _checked(f"bs{suffix}_{n:02d}_pk")


def aux_tables() -> list[str]:
    """Tables copied into the auxiliary schema: every state table, the 1D rejects and the 1D
    deletion log (what a rebuild may change besides the 12 tables, so restore puts it back)."""
    return [*(state_table(t) for t in PIPELINE_TABLES), BARS_1D_REJECTS, BARS_1D_DELETIONS]
