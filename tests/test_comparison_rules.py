"""The comparison rules at their edges, as the database runs them, against an oracle written
here from their definition: PEP 485's ``math.isclose`` for the tolerance, bit identity for
"differs", the 1 % bound for CRITICAL (exactly rtol, exactly 1 %, NaN, NULL, ±0.0, ±inf).
Then a whole table compare on hand-made tables, and the tolerance file's validation."""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ta_lab2.baseline.compare import compare_table
from ta_lab2.baseline.table_sql import TableSpec
from ta_lab2.baseline.comparison_utils import SEVERITIES, Sampling, Tolerance, Tolerances, cell_rule
from ta_lab2.db.connect import Target

pytestmark = [pytest.mark.db]

RTOL, ATOL = 1e-5, 1e-6  # the price columns' default tolerance
INF, NAN = float("inf"), float("nan")


def oracle(a: Any, b: Any, rtol: float = RTOL, atol: float = ATOL, level: bool = True) -> str | None:
    """The severity of one float cell pair, or None when the two are bit-identical; in a level
    column a relative difference above 1 % is CRITICAL even inside ``atol``."""
    if a is None and b is None:
        return None
    if a is not None and b is not None and struct.pack(">d", a) == struct.pack(">d", b):
        return None
    if a is not None and b is not None and math.isnan(a) and math.isnan(b):
        return None  # any NaN matches any NaN
    if a is None or b is None:
        return "CRITICAL"
    if not (math.isfinite(a) and math.isfinite(b)):
        return "CRITICAL"
    if level and max(abs(a), abs(b)) > 0 and abs(a - b) / max(abs(a), abs(b)) > 0.01:
        return "CRITICAL"
    if math.isclose(a, b, rel_tol=rtol, abs_tol=atol):
        return "INFO"
    return "WARNING" if abs(a - b) / max(abs(a), abs(b)) <= 0.01 else "CRITICAL"


def _edges() -> list[tuple[float | None, float | None]]:
    pairs: list[tuple[float | None, float | None]] = [
        (None, None), (None, 1.0), (1.0, None), (NAN, NAN), (NAN, 1.0), (1.0, NAN), (INF, INF), (-INF, -INF),
        (INF, -INF), (INF, 1e308), (1.0, INF), (0.0, -0.0), (-0.0, 0.0), (0.0, 0.0), (0.0, 5e-7), (0.0, 1e-6),
        (0.0, math.nextafter(1e-6, 1.0)), (0.0, 2e-6), (-1.0, 1.0), (1e-300, -1e-300),
        # micro-cap prices, far below the default atol: halved, or 8 % off
        (2e-7, 1e-7), (1.2e-5, 1.1e-5), (5e-7, -4e-7),
    ]
    for x in (1.0, 123.456, 7e-4, 9.87654321e6, -42.5):
        at_rtol = x + RTOL * abs(x) / (1 - RTOL)  # about where |a-b| = rtol·max(|a|, |b|)
        at_one_pct = x / 0.99  # |a-b| / max = 1 %
        for b in (at_rtol, at_one_pct, x * 1.005, x * 1.02):
            for y in (math.nextafter(b, -INF), b, math.nextafter(b, INF)):
                pairs += [(x, y), (y, x)]
    return pairs


@pytest.mark.parametrize("level", [True, False], ids=["level", "difference"])
def test_float_rule_matches_math_isclose_at_every_edge(conn: psycopg.Connection, level: bool) -> None:
    pairs = _edges()
    rule = cell_rule(sql.Identifier("v", "a"), sql.Identifier("v", "b"), "float", Tolerance(RTOL, ATOL), level=level)
    rows = conn.execute(
        sql.SQL("SELECT {d}, CASE WHEN {d} THEN {s} END FROM unnest(%s::float8[], %s::float8[]) "
                "WITH ORDINALITY AS v(a, b, n) ORDER BY n").format(d=rule.differs, s=rule.rank),
        ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
    got = [SEVERITIES[rank] if differs else None for differs, rank in rows]
    expected = [oracle(a, b, level=level) for a, b in pairs]
    wrong = [(a, b, g, e) for (a, b), g, e in zip(pairs, got, expected) if g != e]
    assert not wrong, wrong
    # the edges are real: every outcome occurs
    assert {None, "INFO", "WARNING", "CRITICAL"} <= set(expected)


@pytest.mark.parametrize("a, b, differs", [
    ("1", "1", False), ("1", "2", True), (None, "x", True), (None, None, False), ("a", "A", True),
])
def test_exact_columns_differ_at_any_change_and_are_critical(conn: psycopg.Connection, a: Any, b: Any, differs: bool) -> None:
    rule = cell_rule(sql.Literal(a), sql.Literal(b), "exact", None)
    got = conn.execute(sql.SQL("SELECT {d}, {s}").format(d=rule.differs, s=rule.rank)).fetchone()
    assert (got[0], SEVERITIES[got[1]]) == (differs, "CRITICAL")


# ----------------------------------------------------------------------------- a whole table
def _tables(conn: psycopg.Connection, rows: list[tuple[int, int, float | None]], changed: dict[tuple[int, int], float | None],
            removed: set[tuple[int, int]] = frozenset()) -> TableSpec:
    """Two tables keyed (id, period, ts): ``a`` holds ``rows``; ``b`` the same with ``changed``
    values and without ``removed`` keys."""
    conn.execute("DROP TABLE IF EXISTS cmp_a, cmp_b")
    for name in ("cmp_a", "cmp_b"):
        conn.execute(f"CREATE TABLE {name} (id int, period int, ts timestamptz, ema float8, d1 float8, "
                     "PRIMARY KEY (id, period, ts))")
    conn.execute("INSERT INTO cmp_a SELECT i, 3, timestamptz '2024-01-01' + make_interval(days => n), e, 1.0 "
                 "FROM unnest(%s::int[], %s::int[], %s::float8[]) AS u(i, n, e)",
                 ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]))
    conn.execute("INSERT INTO cmp_b SELECT * FROM cmp_a")
    for (i, n), value in changed.items():
        conn.execute("UPDATE cmp_b SET ema = %s WHERE id = %s AND ts = timestamptz '2024-01-01' + make_interval(days => %s)",
                     (value, i, n))
    for i, n in removed:
        conn.execute("DELETE FROM cmp_b WHERE id = %s AND ts = timestamptz '2024-01-01' + make_interval(days => %s)", (i, n))
    return TableSpec("cmp", sql.Identifier("public", "cmp_a"), sql.Identifier("public", "cmp_b"), ("id", "period", "ts"),
                     ("id", "period"), "ts", {"ema": "float", "d1": "float"})


def test_every_difference_is_found_and_classified_whatever_the_sampling(conn: psycopg.Connection) -> None:
    rows = [(i, n, 100.0 + n) for i in (1, 2, 3) for n in range(400)]
    changed = {(1, 200): 0.0, (2, 150): 100.0 + 150 + 1e-9, (2, 151): NAN, (3, 10): -0.0}
    spec = _tables(conn, [(i, n, (0.0 if (i, n) == (3, 10) else e)) for i, n, e in rows], changed, {(1, 399)})
    results = []
    for sampling in (Sampling(), Sampling(full=True), Sampling(0, 0, 0.0)):
        with conn.transaction():
            results.append(compare_table(conn, spec, None, sampling, Tolerances()))
    default, full, none = results
    for r in results:  # detection is the same every time
        assert r.severity_counts == {"CRITICAL": 2 + 1, "WARNING": 0, "INFO": 2}, r.severity_counts
        assert [(d.series, d.first_ts[:10], d.count) for d in r.divergences] == [
            ({"id": 2, "period": 3}, "2024-05-31", 1), ({"id": 1, "period": 3}, "2024-07-19", 2)]
        assert r.rows_compared == 1199 and r.only_in_snapshot == 1 and r.differing_series == 3 and not r.passed
    # statistics: every row of the three differing series, plus the sample of identical ones (none here)
    assert full.stats_rows == 1199 and default.stats_rows == none.stats_rows == 1199 and not default.sampled


def test_sample_bounds_statistics_only(conn: psycopg.Connection) -> None:
    rows = [(i, n, float(n)) for i in range(1, 6) for n in range(300)]
    spec = _tables(conn, rows, {(5, 100): 7.5})
    got = {}
    for name, sampling in (("none", Sampling(10, 20, 0.0)), ("all", Sampling(10, 20, 1.0)), ("full", Sampling(full=True)),
                           ("some", Sampling(10, 20, 0.1))):
        with conn.transaction():
            got[name] = compare_table(conn, spec, None, sampling, Tolerances())
    # four identical series of 300 rows and a differing one (all of its 300 rows count)
    assert got["none"].stats_rows == 4 * 30 + 300 and got["none"].sampled
    assert got["all"].stats_rows == got["full"].stats_rows == 1500
    # every 10th of the 270 rows between the first 10 and the last 20: 27 per identical series
    assert got["some"].stats_rows == 4 * (30 + 27) + 300
    assert {r.severity_counts["CRITICAL"] for r in got.values()} == {1}
    ema = {name: next(c for c in r.columns if c.column == "ema") for name, r in got.items()}
    assert ema["full"].mean_abs_diff == pytest.approx(92.5 / 1500)
    assert ema["none"].mean_abs_diff == pytest.approx(92.5 / 420)


def _random_tables(conn: psycopg.Connection, seed: int) -> tuple[TableSpec, dict, dict]:
    """Two tables keyed (id, period, ts) with float columns ema, d1 and a text column note:
    ``b`` is ``a`` with cells set to random edge pairs (every severity, NULL, NaN, ±inf, ±0),
    some keys removed and some added. Returns the spec and both tables as {key: row}."""
    import random

    rng = random.Random(seed)
    day = 86400.0
    base = {(i, 3, n * day): [100.0 + i + n, 1.0 + n / 7, f"n{n % 5}"] for i in (1, 2, 3, 4) for n in range(120)}
    a = {k: list(v) for k, v in base.items()}
    b = {k: list(v) for k, v in base.items()}
    # and differences whose squares leave the float range either way
    pairs = _edges() + [(1e200, 2e200), (-3e250, 1e250), (3e-170, 1e-170), (5e-310, 1e-310)]
    for key in rng.sample(sorted(base), 80):
        col = rng.choice((0, 1, 2))
        if col < 2:
            a[key][col], b[key][col] = rng.choice(pairs)
        else:
            a[key][col], b[key][col] = rng.choice([("x", "y"), (None, "y"), ("x", None), ("x", "x")])
    for (i, n, col), (x, y) in zip([(4, 5, 0), (4, 6, 1), (4, 7, 0), (3, 8, 1)], pairs[-4:]):  # each seed has them
        a[(i, 3, n * day)][col], b[(i, 3, n * day)][col] = x, y
    for key in rng.sample(sorted(base), 3):
        del b[key]
    for n in (200, 201):
        b[(2, 3, n * day)] = [1.0, 2.0, "new"]
    conn.execute("DROP TABLE IF EXISTS cmp_a, cmp_b")
    for name, rows in (("cmp_a", a), ("cmp_b", b)):
        conn.execute(f"CREATE TABLE {name} (id int, period int, ts timestamptz, ema float8, d1 float8, note text, "
                     "PRIMARY KEY (id, period, ts))")
        keys = sorted(rows)
        conn.execute(f"INSERT INTO {name} SELECT i, p, to_timestamp(t), e, d, x "
                     "FROM unnest(%s::int[], %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::text[]) "
                     "AS u(i, p, t, e, d, x)",
                     ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [rows[k][0] for k in keys],
                      [rows[k][1] for k in keys], [rows[k][2] for k in keys]))
    spec = TableSpec("cmp", sql.Identifier("public", "cmp_a"), sql.Identifier("public", "cmp_b"), ("id", "period", "ts"),
                     ("id", "period"), "ts", {"ema": "float", "d1": "float", "note": "exact"})
    return spec, a, b


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_table_compare_equals_a_brute_force_over_every_cell(conn: psycopg.Connection, seed: int) -> None:
    spec, a, b = _random_tables(conn, seed)
    columns = list(spec.columns)
    cells = {}  # (key, column) -> severity, by the oracle over every cell of every row on both sides
    for key in a.keys() & b.keys():
        for j, col in enumerate(columns):
            x, y = a[key][j], b[key][j]
            # ema is a level column, d1 a difference column (its tolerance before the 1 % rule)
            severity = oracle(x, y, level=col == "ema") if col != "note" else (None if x == y else "CRITICAL")
            if severity is not None:
                cells[(key, col)] = severity
    onesided = a.keys() ^ b.keys()
    failing = {k for (k, _c), s in cells.items() if s != "INFO"}
    with conn.transaction():
        got = compare_table(conn, spec, None, Sampling(), Tolerances(), top_n=10_000)
    with conn.transaction():
        few = compare_table(conn, spec, None, Sampling(), Tolerances(), top_n=7)
    with conn.transaction():
        full = compare_table(conn, spec, None, Sampling(full=True), Tolerances())
    expected_counts = {s: sum(1 for v in cells.values() if v == s) for s in ("CRITICAL", "WARNING", "INFO")}
    expected_counts["CRITICAL"] += len(onesided)
    assert got.severity_counts == expected_counts
    assert got.mismatching_rows == len(failing) and got.only_in_snapshot + got.only_in_rebuilt == len(onesided)
    for stats in got.columns:
        mine = [s for (_k, c), s in cells.items() if c == stats.column]
        assert (stats.mismatches, stats.critical, stats.warning, stats.info) == (
            len(mine), mine.count("CRITICAL"), mine.count("WARNING"), mine.count("INFO")), stats.column
        assert stats.null_mismatches == sum(1 for (k, c) in cells if c == stats.column
                                            and (a[k][columns.index(c)] is None) != (b[k][columns.index(c)] is None))
    # mean and standard deviation of the finite absolute differences over every compared row, exactly
    for j, col in enumerate(("ema", "d1")):
        diffs = [abs(Fraction(a[k][j]) - Fraction(b[k][j])) for k in a.keys() & b.keys()
                 if a[k][j] is not None and b[k][j] is not None and math.isfinite(a[k][j]) and math.isfinite(b[k][j])]
        diffs += [Fraction(0)] * (full.rows_compared - len(diffs))
        mean = sum(diffs) / len(diffs)
        var = sum((d - mean) ** 2 for d in diffs) / len(diffs)
        std = float((Decimal(var.numerator) / Decimal(var.denominator)).sqrt())
        stats = next(c for c in full.columns if c.column == col)
        assert stats.mean_abs_diff == pytest.approx(float(mean), rel=1e-9) and stats.std_abs_diff == pytest.approx(std, rel=1e-9)
    # divergences: per series, the first and last failing instant and how many rows fail
    by_series: dict[tuple[int, int], list[float]] = {}
    for key in failing | onesided:
        by_series.setdefault(key[:2], []).append(key[2])
    assert {(d.series["id"], d.series["period"]): (d.first_ts, d.last_ts, d.count) for d in got.divergences} == {
        s: (_iso(min(ts)), _iso(max(ts)), len(ts)) for s, ts in by_series.items()}
    # every differing cell is listed (top_n above their number), most severe first …
    listed = {((d.key["id"], d.key["period"], _epoch(d.key["ts"])), d.column): d.severity for d in got.top_differences}
    assert listed == {**cells, **{(k, "(row)"): "CRITICAL" for k in onesided}}
    ranks = [("CRITICAL", "WARNING", "INFO").index(d.severity) for d in got.top_differences]
    assert ranks == sorted(ranks)
    # … and a short list is the head of the full one: only rows holding a top cell are read again
    assert few.top_differences == got.top_differences[:7]



@pytest.mark.parametrize("seed", [1, 2])
def test_a_pass_split_inside_a_series_finds_what_one_pass_finds(conn: psycopg.Connection, db: Target, seed: int) -> None:
    """A table compared alone runs its first pass in two halves split on the key's first two
    columns: with series ``id`` and key ``(id, ts)`` (the 1D table's shape) the split falls
    inside a series, whose halves are one series again before anything reads them."""
    from dataclasses import asdict, replace

    from ta_lab2.baseline.compare import _split_point

    spec, _a, _b = _random_tables(conn, seed)
    for table in ("cmp_a", "cmp_b"):  # three ids of 120 rows: the middle row is inside id 2
        conn.execute(f"DELETE FROM {table} WHERE id = 4")
    spec = replace(spec, key=("id", "ts"), series=("id",))
    split = _split_point(conn, spec.snapshot, [sql.Identifier("id"), sql.Identifier("ts")])
    assert split is not None and split[1] > conn.execute("SELECT min(ts) FROM cmp_a WHERE id = %s", (split[0],)).fetchone()[0]
    with psycopg.connect(db.url, autocommit=True) as helper:
        for sampling in (Sampling(), Sampling(full=True)):
            with conn.transaction():
                single = compare_table(conn, spec, None, sampling, Tolerances())
            with conn.transaction():
                halves = compare_table(conn, spec, None, sampling, Tolerances(), helper=helper)
            assert repr(asdict(halves)) == repr(asdict(single)) and single.divergences  # repr: NaN equals NaN

def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# ----------------------------------------------------------------------------- tolerance files
@pytest.mark.parametrize("text, key", [
    ("[columns.ema]\nrtol = nan\natol = 1e-6\n", "rtol"),
    ("[columns.ema]\nrtol = 1e-5\natol = -inf\n", "atol"),
    ("[default]\nrtol = -1e-5\natol = 0\n", "rtol"),
    ("[default]\nrtol = inf\natol = 0\n", "rtol"),
    ("[tables.cmc_ema_multi_tf.ema]\nrtol = 'NaN'\natol = 0\n", "rtol"),
    ("[default]\nrtol = true\natol = 0\n", "rtol"),
    ("[columns.d1]\nrtol = 0.011\natol = 0\n", "at most 0.01"),  # would call a > 1 % change close
])
def test_tolerances_must_be_finite_and_not_negative(tmp_path: Path, text: str, key: str) -> None:
    import tomllib

    with pytest.raises(ValueError, match=key):
        Tolerances.from_mapping(tomllib.loads(text))


def test_zero_tolerances_are_allowed(conn: psycopg.Connection) -> None:
    tol = Tolerances.from_mapping({"default": {"rtol": 0, "atol": 0}})
    assert tol.for_column("t", "close") == Tolerance(0.0, 0.0)


@pytest.fixture
def conn(db: Target) -> psycopg.Connection:  # type: ignore[misc]
    with psycopg.connect(db.url, autocommit=True) as c:
        yield c
