"""The project's six bar builders against the independent oracle (tests/oracles/bars_oracle.py).

The oracle is computed from the *source* table only (``oracle_1d`` on ``cmc_price_histories7``,
then ``oracle_bars`` on the oracle's own accepted rows), never from the builders' output, and
every table is compared column by column (all columns but ``ingested_at``):

* ints, bools, dates, text, instants: exact;
* floats: exact too (``NaN`` equals ``NaN``). ``high``/``low`` are max/min (exact by nature);
  ``volume`` is a left-to-right sum in time order over the bar's observed days, which is what a
  sequential cumulative sum (SQL window ``sum`` with ``ORDER BY``, polars ``cum_sum``)
  computes. If an implementation is found to sum in a different (still legitimate) order and
  differs in the last bit, set ``VOLUME_REL_TOL = 1e-12`` below — for ``volume`` ONLY — and
  record why here.

The builders are reached through their public API ``ta_lab2.bars.build.build``; it is
imported inside the fixtures, so this module still collects (and the other test modules still
run) while that API does not exist yet.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import Counter
from typing import Any, Iterator

import numpy as np
import pandas as pd
import polars as pl
import psycopg
import pytest

from oracles.bars_oracle import REJECT_COLUMNS, oracle_1d, oracle_bars
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.source_schema import SOURCE_SCHEMA
from ta_lab2.load.store import upsert_assets, upsert_source
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

#: 0.0 = exact. See the module docstring before changing it; it applies to ``volume`` only.
VOLUME_REL_TOL = 0.0

BUILDERS: tuple[str, ...] = ("1d", "multi_tf", "cal_iso", "cal_us", "cal_anchor_iso", "cal_anchor_us")
MULTI_TF_BUILDERS: tuple[str, ...] = BUILDERS[1:]
TABLE = {
    "1d": "cmc_price_bars_1d",
    "multi_tf": "cmc_price_bars_multi_tf",
    "cal_iso": "cmc_price_bars_multi_tf_cal_iso",
    "cal_us": "cmc_price_bars_multi_tf_cal_us",
    "cal_anchor_iso": "cmc_price_bars_multi_tf_cal_anchor_iso",
    "cal_anchor_us": "cmc_price_bars_multi_tf_cal_anchor_us",
}
REJECTS_TABLE = "cmc_price_bars_1d_rejects"
FAMILY = {
    "multi_tf": "rolling",
    "cal_iso": "cal_iso",
    "cal_us": "cal_us",
    "cal_anchor_iso": "cal_anchor_iso",
    "cal_anchor_us": "cal_anchor_us",
}
#: Which canonical dim_timeframe rows feed each table (spec 02 table at the top).
TF_FILTER = {
    "rolling": "family = 'rolling'",
    "cal_iso": "family = 'cal' AND (calendar_scheme = 'ISO' OR base_unit IN ('M', 'Y'))",
    "cal_us": "family = 'cal' AND (calendar_scheme = 'US' OR base_unit IN ('M', 'Y'))",
    "cal_anchor_iso": "family = 'cal_anchor' AND (calendar_scheme = 'ISO' OR base_unit IN ('M', 'Y'))",
    "cal_anchor_us": "family = 'cal_anchor' AND (calendar_scheme = 'US' OR base_unit IN ('M', 'Y'))",
}
SOURCE_COLUMNS = (
    "id", "name", "timeopen", "timeclose", "timehigh", "timelow", "timestamp", "open", "high",
    "low", "close", "volume", "marketcap", "circulatingsupply", "date", "source_file", "load_ts",
)  # fmt: skip
KEY_1D = ("id", "timestamp")
KEY_BARS = ("id", "tf", "bar_seq", "time_close")
SYNTHETIC = SyntheticConfig(n_assets=4, days=900, seed=11, gap_rate=0.03, defect_rate=0.02)


# --------------------------------------------------------------------------- DB reading
def fetch(conn: psycopg.Connection, query: str) -> tuple[list[str], list[tuple]]:
    cur = conn.execute(query)
    assert cur.description is not None
    return [d.name for d in cur.description], cur.fetchall()


def read_source(conn: psycopg.Connection) -> pd.DataFrame:
    """``cmc_price_histories7`` as object columns (NULL = None, NaN stays NaN)."""
    cols, rows = fetch(
        conn,
        "SELECT " + ", ".join(f'"{c}"' for c in SOURCE_COLUMNS)
        + ' FROM public.cmc_price_histories7 ORDER BY id, "timestamp"',
    )
    return pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype="object") for i, c in enumerate(cols)})


def read_timeframes(conn: psycopg.Connection, family: str) -> list[dict[str, Any]]:
    cols, rows = fetch(
        conn,
        "SELECT tf, base_unit, tf_qty, tf_days_nominal FROM public.dim_timeframe "
        f"WHERE is_canonical AND {TF_FILTER[family]} ORDER BY sort_order, tf",
    )
    return [dict(zip(cols, r)) for r in rows]


def compute_oracle(conn: psycopg.Connection, tz: str) -> dict[str, pd.DataFrame]:
    """Every table, from the source table only."""
    accepted, rejects = oracle_1d(read_source(conn), tz=tz)
    out = {"1d": accepted, "rejects": rejects}
    for builder in MULTI_TF_BUILDERS:
        family = FAMILY[builder]
        out[builder] = oracle_bars(accepted, family, read_timeframes(conn, family), tz=tz)
    return out


def run_builders(target: Target, tz: str) -> None:
    """Full rebuild of the six tables through the public API, on an autocommit connection
    (``build`` runs one explicit transaction per id and refuses a connection inside a
    transaction)."""
    from ta_lab2.bars.build import build  # imported here: the API may not exist yet

    with connect(target, autocommit=True) as conn:
        for name in BUILDERS:
            build(conn, name, ids=None, full_rebuild=True, tz=tz)


# --------------------------------------------------------------------------- comparison
_UTC = dt.timezone.utc


def _norm(value: Any) -> Any:
    """DB / pandas values to plain comparable Python values (instants: aware UTC datetimes;
    both sides have microsecond precision, the resolution of ``timestamptz``)."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is None:
            raise AssertionError(f"naive instant {value!r}")
        assert value.nanosecond == 0, f"sub-microsecond instant {value!r}"
        return value.tz_convert("UTC").to_pydatetime()
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise AssertionError(f"naive instant {value!r}")
        return value.astimezone(_UTC)
    if isinstance(value, dt.date):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _show(value: Any) -> str:
    """Readable value for failure messages (instants and dates in ISO form)."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return repr(value)


def _same(column: str, actual: Any, expected: Any) -> bool:
    if actual is None or expected is None:
        return actual is None and expected is None
    if type(actual) is not type(expected):
        return False
    if isinstance(actual, float):
        if math.isnan(actual) or math.isnan(expected):
            return math.isnan(actual) and math.isnan(expected)
        if column == "volume" and VOLUME_REL_TOL > 0:
            return math.isclose(actual, expected, rel_tol=VOLUME_REL_TOL)
        return actual == expected
    return actual == expected


#: Types ``_norm`` returns unchanged: a column holding only these needs no per-value pass.
_PLAIN = frozenset({type(None), bool, int, float, str, dt.date})


def _norm_column(values: list[Any]) -> list[Any]:
    """``_norm`` applied to one column (a no-op for a column of plain Python values)."""
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return values
    if kinds <= {dt.datetime, type(None)}:  # a table's instants: one pass, same checks
        naive = next((v for v in values if v is not None and v.tzinfo is None), None)
        if naive is not None:
            raise AssertionError(f"naive instant {naive!r}")
        return [None if v is None else v.astimezone(_UTC) for v in values]
    return [_norm(v) for v in values]


def _oracle_column(series: pd.Series) -> list[Any]:
    """``_norm`` applied to one oracle column; aware instants are converted as a whole."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        present = series.dropna()
        assert (present.dt.nanosecond == 0).all(), f"sub-microsecond instant in {series.name}"
        return [None if v is pd.NaT else v for v in series.dt.tz_convert("UTC").dt.to_pydatetime()]
    return _norm_column(series.tolist())


def _keyed(label: str, side: str, columns: list[list[Any]], key_pos: list[int]) -> dict[tuple, tuple]:
    """Rows (built from normalised columns) by their key; a key must appear once."""
    rows = list(zip(*columns))
    keys = [tuple(row[i] for i in key_pos) for row in rows]
    keyed = dict(zip(keys, rows))
    if len(keyed) != len(rows):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise AssertionError(f"{label}: duplicate key {dup} in the {side}")
    return keyed


def assert_same_rows(
    label: str,
    actual_cols: list[str],
    actual_rows: list[tuple],
    expected: pd.DataFrame,
    key: tuple[str, ...],
    columns: list[str] | None = None,
) -> None:
    """Table rows == oracle rows, on ``columns`` (default: every oracle column; the table must
    have exactly those plus ``ingested_at``). Fails listing the first 10 differing rows."""
    if columns is None:
        columns = list(expected.columns)
        table_cols = [c for c in actual_cols if c != "ingested_at"]
        assert sorted(table_cols) == sorted(columns), (
            f"{label}: columns differ: table-only {sorted(set(table_cols) - set(columns))}, "
            f"oracle-only {sorted(set(columns) - set(table_cols))}"
        )
    key_pos = [columns.index(c) for c in key]
    by_name = dict(zip(actual_cols, zip(*actual_rows))) if actual_rows else {c: () for c in actual_cols}
    a_cols = [_norm_column(list(by_name[c])) for c in columns]
    e_cols = [_oracle_column(expected[c]) for c in columns]
    actual = _keyed(label, "table", a_cols, key_pos)
    wanted = _keyed(label, "oracle", e_cols, key_pos)
    # Where each column holds one type on both sides (NULLs aside), equal row tuples are equal
    # by ``_same`` too (its type check cannot fail), so only unequal rows need a column pass.
    # A NaN never equals itself in a tuple comparison, so such rows get the column pass.
    non_null = [set(map(type, col)) - {type(None)} for col in (*a_cols, *e_cols)]
    one_type = all(len(t) <= 1 for t in non_null) and non_null[:len(columns)] == non_null[len(columns):]

    problems: list[str] = []
    missing = sorted(k for k in wanted if k not in actual)
    extra = sorted(k for k in actual if k not in wanted)
    if missing or extra:
        problems.append(
            f"{len(missing)} oracle rows absent from the table (first 10: {[_show(k) for k in missing[:10]]}); "
            f"{len(extra)} table rows not in the oracle (first 10: {[_show(k) for k in extra[:10]]})"
        )
    differing: dict[tuple, list[int]] = {}
    for k in wanted.keys() & actual.keys():
        a, e = actual[k], wanted[k]
        if one_type and a == e:
            continue
        row_diffs = [i for i, c in enumerate(columns) if not _same(c, a[i], e[i])]
        if row_diffs:
            differing[k] = row_diffs
    per_column: dict[str, int] = {}
    shown: list[str] = []
    for n, k in enumerate(sorted(differing)):
        a, e, row_diffs = actual[k], wanted[k], differing[k]
        for i in row_diffs:
            per_column[columns[i]] = per_column.get(columns[i], 0) + 1
        if n < 10:
            shown.append(
                f"  {_show(k)}: "
                + "; ".join(f"{columns[i]}: table={_show(a[i])} oracle={_show(e[i])}" for i in row_diffs)
            )
    if differing:
        problems.append(
            f"{len(differing)} rows differ (differing values per column: {per_column}); first 10 rows:\n"
            + "\n".join(shown)
        )
    assert not problems, f"{label} vs oracle:\n" + "\n".join(problems)


def compare_all(conn: psycopg.Connection, oracle: dict[str, pd.DataFrame], builder: str) -> None:
    if builder == "1d":
        cols, rows = fetch(conn, f"SELECT * FROM public.{TABLE['1d']}")
        assert_same_rows(TABLE["1d"], cols, rows, oracle["1d"], KEY_1D)
        return
    if builder == "rejects":
        cols, rows = fetch(conn, f"SELECT * FROM public.{REJECTS_TABLE}")
        assert_same_rows(REJECTS_TABLE, cols, rows, oracle["rejects"], KEY_1D, columns=list(REJECT_COLUMNS))
        return
    cols, rows = fetch(conn, f"SELECT * FROM public.{TABLE[builder]}")
    assert_same_rows(TABLE[builder], cols, rows, oracle[builder], KEY_BARS)


def assert_rejects_keep_original_values(conn: psycopg.Connection) -> None:
    """Spec 02 §1.3: a reject is stored with the original source values."""
    shared = [c for c in SOURCE_COLUMNS if c not in ("id", "timestamp")]
    cols, rows = fetch(
        conn,
        "SELECT r.id, r.\"timestamp\", "
        + ", ".join(f"r.{c} AS r_{c}, s.{c} AS s_{c}" for c in shared)
        + f' FROM public.{REJECTS_TABLE} r LEFT JOIN public.cmc_price_histories7 s'
        ' ON s.id = r.id AND s."timestamp" = r."timestamp"',
    )
    bad = []
    for row in rows:
        rec = dict(zip(cols, row))
        for c in shared:
            a, e = _norm(rec[f"r_{c}"]), _norm(rec[f"s_{c}"])
            if not _same(c, a, e):
                bad.append((rec["id"], rec["timestamp"], c, a, e))
    assert not bad, f"rejects differ from their source rows (first 10): {bad[:10]}"


# --------------------------------------------------------------------------- synthetic universe
@pytest.fixture(scope="module")
def synthetic_built(db: Target) -> Iterator[dict[str, pd.DataFrame]]:
    """Load the synthetic universe, run the six builders once, compute the oracle."""
    with connect(db) as c:
        load_synthetic(c, SYNTHETIC)
        c.commit()
    run_builders(db, "UTC")
    with connect(db) as c:
        oracle = compute_oracle(c, "UTC")
    yield oracle


def test_synthetic_universe_exercises_the_rules(synthetic_built: dict[str, pd.DataFrame]) -> None:
    """Guard against a vacuous comparison: the data must contain gaps and repairs."""
    daily = synthetic_built["1d"]
    assert daily["id"].nunique() == 4 and len(daily) > 4 * 300
    assert daily["repaired_high"].any() and daily["repaired_timehigh"].any()
    assert daily["market_cap"].isna().any()
    for builder in MULTI_TF_BUILDERS:
        assert not synthetic_built[builder].empty, builder
        assert synthetic_built[builder]["is_missing_days"].any(), builder
    assert synthetic_built["cal_anchor_iso"]["is_partial_start"].any()


@pytest.mark.parametrize("builder", ("1d", "rejects", *MULTI_TF_BUILDERS))
def test_synthetic_table_matches_oracle(
    synthetic_built: dict[str, pd.DataFrame], conn: psycopg.Connection, builder: str
) -> None:
    compare_all(conn, synthetic_built, builder)


# --------------------------------------------------------------------------- odd listing days
def _odd_rows() -> list[dict[str, Any]]:
    """Hand-made source rows: odd listing days, gaps at unit boundaries, every 1D defect kind.

    * 910001 starts Sunday 2023-01-01; gaps on Monday 01-02 (an ISO week start), 02-01 (a month
      start), 06-10..14 (5 days), 2023-12-31..2024-01-01 (a year boundary).
    * 910002 starts 2024-01-01 (Jan 1 of a leap year, a Monday), keeps 2024-02-29, gap on 07-01.
    * 910003 starts mid-month (Friday 2024-03-15) and carries the defects listed below.
    * 910004 has three days Wed–Fri 2024-01-03..05 (no full week/month: only anchored rows).
    * 910005 has a single day.
    """
    rng = random.Random(20240229)
    rows: list[dict[str, Any]] = []

    def series(ident: int, first: str, last: str, skip: set[str]) -> None:
        price = rng.uniform(0.5, 500.0)
        d = dt.date.fromisoformat(first)
        while d <= dt.date.fromisoformat(last):
            o = price * math.exp(rng.gauss(0, 0.001))
            c = o * math.exp(rng.gauss(0, 0.03))
            price = c
            if d.isoformat() not in skip:
                midnight = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
                close_ts = midnight + dt.timedelta(days=1, milliseconds=-1)
                rows.append(
                    {
                        "id": ident,
                        "name": f"Odd {ident}",
                        "timeopen": midnight,
                        "timeclose": close_ts,
                        "timehigh": midnight + dt.timedelta(milliseconds=rng.randrange(1, 86_399_998)),
                        "timelow": midnight + dt.timedelta(milliseconds=rng.randrange(1, 86_399_998)),
                        "timestamp": close_ts,
                        "open": o,
                        "high": max(o, c) * math.exp(abs(rng.gauss(0, 0.01))),
                        "low": min(o, c) * math.exp(-abs(rng.gauss(0, 0.01))),
                        "close": c,
                        "volume": rng.uniform(1e3, 1e6),
                        "marketcap": c * 1e6,
                        "circulatingsupply": 1e6,
                        "date": d,
                        "source_file": "odd-listing-days",
                    }
                )
            d += dt.timedelta(days=1)

    gap = lambda a, b: {  # noqa: E731
        (dt.date.fromisoformat(a) + dt.timedelta(days=i)).isoformat()
        for i in range((dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days + 1)
    }
    series(910001, "2023-01-01", "2024-03-10",
           {"2023-01-02", "2023-02-01"} | gap("2023-06-10", "2023-06-14") | gap("2023-12-31", "2024-01-01"))
    series(910002, "2024-01-01", "2025-03-31", {"2024-07-01"})
    series(910003, "2024-03-15", "2025-01-20", set())
    series(910004, "2024-01-03", "2024-01-05", set())
    series(910005, "2024-08-15", "2024-08-15", set())

    def at(ident: int, day: str) -> dict[str, Any]:
        return next(r for r in rows if r["id"] == ident and r["date"].isoformat() == day)

    def extra(ident: int, day: str, hour: int, **changes: Any) -> None:
        base = dict(at(ident, day))
        ts = dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=dt.timezone.utc)
        base.update(timestamp=ts, timeclose=ts, timehigh=ts - dt.timedelta(hours=1), timelow=ts - dt.timedelta(hours=2))
        base.update(changes)
        rows.append(base)

    nan, inf = float("nan"), float("inf")
    # same UTC day, two valid rows (12:00Z and 23:59:59.999Z): the later wins in UTC; in
    # Asia/Tokyo (UTC+9) they are two different local days, and 12:00Z shares its local day
    # with the previous UTC day's 23:59:59.999Z row instead (which then loses)
    extra(910003, "2024-05-01", 12)
    # an extra row that is invalid anyway (NaN volume): bad_volume, not duplicate_local_day
    extra(910003, "2024-05-02", 10, volume=nan)
    # the 23:59 row is invalid (negative volume): the earlier valid 08:00 row is accepted
    extra(910003, "2024-05-03", 8)
    at(910003, "2024-05-03")["volume"] = -1.0
    at(910003, "2024-06-01")["open"] = None  # open_not_finite (a month start goes missing)
    at(910003, "2024-06-02")["close"] = inf  # close_not_finite
    at(910003, "2024-06-03")["low"] = -2.0  # non_positive_price
    r = at(910003, "2024-06-04")  # time_open_after_time_close
    r["timeopen"] = r["timeclose"] + dt.timedelta(seconds=1)
    at(910003, "2024-06-05")["high"] = None  # repaired_high
    r = at(910003, "2024-06-06")
    r["timehigh"] = None  # repaired_timehigh, high kept
    r["timelow"] = r["timeopen"] - dt.timedelta(hours=5)  # outside: low = min(open, close)
    r = at(910003, "2024-06-07")
    r["high"] = min(r["open"], r["close"]) * 0.99  # high below max(open, close)
    r["low"] = max(r["open"], r["close"]) * 1.01  # low above min(open, close)
    r = at(910003, "2024-06-08")
    r["volume"] = None
    r["marketcap"] = None
    r = at(910003, "2024-06-09")
    r["timeopen"] = None  # COALESCE(timeopen, ts − 1 day + 1 ms)
    r["timeclose"] = None
    at(910003, "2024-06-10")["high"] = inf  # non-finite high: repaired, not rejected
    at(910003, "2024-06-11")["marketcap"] = nan  # passes through
    at(910003, "2024-06-12")["low"] = 0.0  # non_positive_price (zero)
    for day in ("2024-07-01", "2024-07-02", "2024-07-03", "2024-07-04", "2024-07-05", "2024-07-06", "2024-07-07"):
        at(910003, day)["volume"] = None  # a whole ISO week without volume: NULL sums
    r = at(910002, "2024-02-29")
    r["timehigh"] = r["timeopen"] - dt.timedelta(days=1)  # outside its candle
    return rows


def load_odd_dataset(conn: psycopg.Connection) -> None:
    frame = pl.DataFrame(_odd_rows(), schema={c: t for c, t in SOURCE_SCHEMA.items()}).sort("id", "timestamp")
    ensure_schema(conn)
    with conn.transaction():
        upsert_assets(conn, frame)
        upsert_source(conn, frame)


@pytest.mark.parametrize("tz", ["UTC", "Asia/Tokyo"])
def test_odd_listing_days_match_oracle(fresh_db: Target, tz: str) -> None:
    with connect(fresh_db) as c:
        load_odd_dataset(c)
        c.commit()
    run_builders(fresh_db, tz)
    with connect(fresh_db) as c:
        oracle = compute_oracle(c, tz)
        # the dataset really exercises what it claims
        reasons = set(oracle["rejects"]["reason"])
        assert {"open_not_finite", "close_not_finite", "non_positive_price", "bad_volume",
                "time_open_after_time_close"} <= reasons  # fmt: skip
        assert "duplicate_local_day" in reasons
        assert oracle["cal_iso"][oracle["cal_iso"]["id"] == 910004].empty
        assert not oracle["cal_anchor_iso"][oracle["cal_anchor_iso"]["id"] == 910004].empty
        failures = []
        for builder in ("1d", "rejects", *MULTI_TF_BUILDERS):
            try:
                compare_all(c, oracle, builder)
            except AssertionError as exc:
                failures.append(str(exc))
        assert_rejects_keep_original_values(c)
        assert not failures, "\n\n".join(failures)
