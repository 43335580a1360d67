"""Incremental refresh ≡ full rebuild for the 6 bar and 6 EMA tables (spec 02 §4, 03 §8), over
random sequences of source edits: appends, revisions of old days, backfills before the first
day, deletions, new assets, rows that become rejects, second rows on an existing local day,
and bar tables rewritten by a full rebuild of one builder (the EMAs must pick that up)."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from bars_helpers import BAR_TABLES, EMA_TABLES, build_all, clone_source, diff_schemas, refresh_all
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.load.store import upsert_assets, upsert_source
from ta_lab2.load.synthetic import SyntheticConfig, generate_universe

pytestmark = pytest.mark.db

UTC = dt.timezone.utc
OPS = ("append", "revise", "backfill", "delete", "new_asset", "reject", "duplicate_day", "rebuild_bars", "noop")


def _universe(seed: int, n: int = 3, days: int = 120) -> pl.DataFrame:
    cfg = SyntheticConfig(n_assets=n, days=days, seed=seed, gap_rate=0.03, defect_rate=0.03)
    return generate_universe(cfg).frame


def _built(conn: psycopg.Connection, seed: int, n: int = 3, days: int = 120) -> pl.DataFrame:
    """Load a synthetic universe and build every table in full; returns the universe (the pool
    later edits copy rows from)."""
    pool = _universe(seed, n, days)
    upsert_assets(conn, pool)
    upsert_source(conn, pool.drop("symbol"))
    build_all(conn, full=True)
    refresh_all(conn, full=True)
    return pool


def _apply(conn: psycopg.Connection, op: str, rng: random.Random, pool: pl.DataFrame) -> None:
    """One edit of public.cmc_price_histories7, with load_ts bumped as a loader would."""
    ids = [r[0] for r in conn.execute("SELECT DISTINCT id FROM cmc_price_histories7 ORDER BY id").fetchall()]
    if op in ("append", "backfill"):  # these copy the asset's own generated rows: not a "new_asset" id
        in_pool = set(pool["id"].to_list())
        ids = [i for i in ids if i in in_pool]
    ident = rng.choice(ids)
    span = conn.execute("SELECT min(\"timestamp\"), max(\"timestamp\") FROM cmc_price_histories7 WHERE id = %s",
                        (ident,)).fetchone()
    with conn.transaction():
        if op == "append":
            base = pool.filter(pl.col("id") == ident).tail(1)
            rows = pl.concat([base.with_columns(
                pl.col(c).dt.offset_by(f"{k}d") for c in ("timestamp", "timeopen", "timeclose", "timehigh", "timelow")
            ).with_columns(pl.col("date").dt.offset_by(f"{k}d"), pl.col("close") * (1 + k / 100))
                for k in range(1, rng.randint(2, 9))])
            shift = (span[1] - base["timestamp"][0]).days
            rows = rows.with_columns(
                *(pl.col(c).dt.offset_by(f"{shift}d") for c in ("timestamp", "timeopen", "timeclose", "timehigh", "timelow")),
                pl.col("date").dt.offset_by(f"{shift}d"),
            )
            upsert_source(conn, rows.drop("symbol"))
        elif op == "revise":
            conn.execute(
                "UPDATE cmc_price_histories7 SET close = close * 1.05, high = high * 1.07, load_ts = now() "
                "WHERE id = %s AND \"timestamp\" = (SELECT \"timestamp\" FROM cmc_price_histories7 WHERE id = %s "
                "ORDER BY \"timestamp\" OFFSET %s LIMIT 1)",
                (ident, ident, rng.randint(0, 200)),
            )
        elif op == "backfill":
            first = pool.filter(pl.col("id") == ident).head(1)
            rows = pl.concat([first.with_columns(
                *(pl.col(c).dt.offset_by(f"-{k}d") for c in ("timestamp", "timeopen", "timeclose", "timehigh", "timelow")),
                pl.col("date").dt.offset_by(f"-{k}d"))
                for k in range(1, rng.randint(2, 12))])
            shift = (span[0] - first["timestamp"][0]).days
            rows = rows.with_columns(
                *(pl.col(c).dt.offset_by(f"{shift}d") for c in ("timestamp", "timeopen", "timeclose", "timehigh", "timelow")),
                pl.col("date").dt.offset_by(f"{shift}d"),
            )
            upsert_source(conn, rows.drop("symbol"))
        elif op == "delete":
            conn.execute(
                "DELETE FROM cmc_price_histories7 WHERE id = %s AND \"timestamp\" = (SELECT \"timestamp\" "
                "FROM cmc_price_histories7 WHERE id = %s ORDER BY \"timestamp\" OFFSET %s LIMIT 1)",
                (ident, ident, rng.randint(0, 200)),
            )
        elif op == "new_asset":
            new_id = max(ids) + 1
            rows = pool.filter(pl.col("id") == ids[0]).head(rng.randint(20, 90)).with_columns(
                id=pl.lit(new_id, pl.Int32), name=pl.lit(f"asset {new_id}"), symbol=pl.lit(f"A{new_id}"))
            upsert_assets(conn, rows)
            upsert_source(conn, rows.drop("symbol"))
        elif op == "reject":
            conn.execute(
                "UPDATE cmc_price_histories7 SET close = -1, load_ts = now() WHERE id = %s AND \"timestamp\" = "
                "(SELECT \"timestamp\" FROM cmc_price_histories7 WHERE id = %s ORDER BY \"timestamp\" OFFSET %s LIMIT 1)",
                (ident, ident, rng.randint(0, 200)),
            )
        elif op == "rebuild_bars":
            pass  # done after the transaction: see _apply's caller
        elif op == "duplicate_day":
            conn.execute(
                "INSERT INTO cmc_price_histories7 (id, name, \"timestamp\", open, high, low, close, volume, source_file, load_ts) "
                "SELECT id, name, \"timestamp\" - interval '6 hours', open * 1.01, high * 1.01, low, close * 1.02, volume, "
                "'dup', now() FROM cmc_price_histories7 WHERE id = %s ORDER BY \"timestamp\" OFFSET %s LIMIT 1 "
                "ON CONFLICT DO NOTHING",
                (ident, rng.randint(0, 200)),
            )


def _refresh(conn: psycopg.Connection, op: str, rng: random.Random) -> None:
    """The incremental pipeline run after an edit (a full rebuild of one bar builder first,
    for the rewritten-bars case)."""
    from ta_lab2.bars.build import build
    from ta_lab2.bars.registry import BUILDERS

    if op == "rebuild_bars":
        build(conn, rng.choice(list(BUILDERS)), None, full_rebuild=True)
    build_all(conn, full=False)
    refresh_all(conn, full=False)


def _check(conn: psycopg.Connection) -> list[str]:
    clone_source(conn, "public", "full_ref")
    build_all(conn, full=True, schema="full_ref")
    refresh_all(conn, full=True, schema="full_ref")
    return diff_schemas(conn, "public", "full_ref", [*BAR_TABLES, "cmc_price_bars_1d_rejects", *EMA_TABLES]) + \
        _ends_problems(conn) + _state_problems(conn)


def _state_problems(conn: psycopg.Connection) -> list[str]:
    """The incremental state equals a full rebuild's over what a capture compares of it: every
    column but the watermarks, updated_at and the float ends (``_ends_problems`` holds those to
    the rows)."""
    problems = []
    for table in (f"{t}_state" for t in [*BAR_TABLES, *EMA_TABLES]):
        columns = [c for c, typ in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()
            if typ != "double precision" and not c.startswith("watermark") and c != "updated_at"]
        listed = ", ".join(columns)
        for x, y in (("public", "full_ref"), ("full_ref", "public")):
            rows = conn.execute(f"SELECT {listed} FROM {x}.{table} EXCEPT ALL SELECT {listed} FROM {y}.{table} "
                                "LIMIT 3").fetchall()
            problems += [f"{table}: only in {x}: {r}" for r in rows]
    return problems


def _ends_problems(conn: psycopg.Connection) -> list[str]:
    """Every EMA state row holds its series' ends as the table has them: its newest row's ts,
    ema and d1_roll and its newest canonical row's ts, ema and d1 (dual tables: also the
    ema_bar columns); NULL exactly when the series has no row. A later day is computed from
    them."""
    problems = []
    for table in EMA_TABLES:
        bar = "_cal" in table
        last = ["ts", "ema", "d1_roll", *(["ema_bar", "d1_roll_bar"] if bar else [])]
        canon = ["ts", "ema", "d1", *(["ema_bar", "d1_bar"] if bar else [])]
        mismatch = " OR ".join([f"s.{'last_ts' if c == 'ts' else 'last_' + c} IS DISTINCT FROM l.{c}" for c in last]
                               + [f"s.canon_{c} IS DISTINCT FROM k.{c}" for c in canon])
        rows = conn.execute(
            f"SELECT s.id, s.tf, s.period FROM {table}_state s "
            f"LEFT JOIN LATERAL (SELECT {', '.join(last)} FROM {table} e WHERE e.id = s.id AND e.tf = s.tf "
            f"AND e.period = s.period ORDER BY e.ts DESC LIMIT 1) l ON true "
            f"LEFT JOIN LATERAL (SELECT {', '.join(canon)} FROM {table} e WHERE e.id = s.id AND e.tf = s.tf "
            f"AND e.period = s.period AND NOT e.roll ORDER BY e.ts DESC LIMIT 1) k ON true "
            f"WHERE {mismatch} LIMIT 5").fetchall()
        problems += [f"{table}_state: ends of {r} differ from the table's" for r in rows]
    return problems


@pytest.fixture
def empty_db(fresh_db: Target):
    with connect(fresh_db, autocommit=True) as conn:
        ensure_schema(conn)
        yield conn


# No shrinking: each example rebuilds six tables twice; the failure message names seed and ops,
# which reproduce it exactly.
@pytest.mark.slow
@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), ops=st.lists(st.sampled_from(OPS), min_size=2, max_size=5))
@example(seed=39, ops=["backfill", "duplicate_day", "new_asset", "append", "noop"])  # append after a new asset
@example(seed=1021, ops=["append", "reject", "backfill"])  # a backfill after a rejected day
def test_incremental_equals_full_rebuild(empty_db: psycopg.Connection, seed: int, ops: list[str]) -> None:
    conn = empty_db
    conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
    ensure_schema(conn)
    pool = _built(conn, seed)
    rng = random.Random(seed)
    for op in ops:
        _apply(conn, op, rng, pool)
        _refresh(conn, op, rng)
    problems = _check(conn)
    assert not problems, f"ops={ops} seed={seed}:\n" + "\n".join(problems[:20])


@pytest.mark.slow
def test_each_operation_alone(empty_db: psycopg.Connection) -> None:
    """Every operation kind at least once, deterministically (hypothesis may not draw all)."""
    conn = empty_db
    pool = _built(conn, 5)
    rng = random.Random(5)
    for op in OPS:
        _apply(conn, op, rng, pool)
        _refresh(conn, op, rng)
        problems = _check(conn)
        assert not problems, f"after {op}:\n" + "\n".join(problems[:20])


def test_unchanged_source_is_a_no_op(empty_db: psycopg.Connection) -> None:
    from ta_lab2.bars.build import build

    conn = empty_db
    _built(conn, 9, n=2, days=120)
    for name in ("1d", "multi_tf", "cal_anchor_us"):
        result = build(conn, name, None)
        assert result.rows_inserted == 0 and result.rows_deleted == 0
        assert all(r.mode == "unchanged" for r in result.ids)
    from ta_lab2.emas.refresh import refresh
    from ta_lab2.emas.registry import REFRESHERS

    for name in REFRESHERS:
        result = refresh(conn, name, None, periods=(2, 3, 5, 10))
        assert result.rows_inserted == 0 and result.rows_deleted == 0, name


@pytest.mark.slow
def test_batches_and_chunks_equal_full_rebuild(empty_db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Incremental runs build several ids per unit and split a unit's writes into chunks to
    bound memory: with two ids per batch and one id per chunk (the smallest limits), every
    path through that bookkeeping still gives the full rebuild's tables."""
    import ta_lab2.bars.build_multi as bars
    import ta_lab2.emas.recomputed as emas
    import ta_lab2.work.units as work

    monkeypatch.setattr(work, "IDS_PER_BATCH", 2)
    monkeypatch.setattr(work, "INCREMENTAL_IDS", 2)
    for module in (bars, emas):
        monkeypatch.setattr(module, "CHUNK_ROWS", 1)
    conn = empty_db
    pool = _built(conn, 11)
    rng = random.Random(11)
    _apply(conn, "new_asset", rng, pool)
    _refresh(conn, "noop", rng)
    # every id revised at a different depth, then one refresh: each batch plans both its ids
    conn.execute(
        "UPDATE cmc_price_histories7 h SET close = close * 1.01, load_ts = now() FROM ("
        "SELECT id, \"timestamp\", row_number() OVER (PARTITION BY id ORDER BY \"timestamp\" DESC) AS r "
        "FROM cmc_price_histories7) t WHERE h.id = t.id AND h.\"timestamp\" = t.\"timestamp\" AND t.r = 3 + h.id % 40")
    _refresh(conn, "noop", rng)
    _apply(conn, "delete", rng, pool)
    _refresh(conn, "noop", rng)
    problems = _check(conn)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_calendar_bars_resumed_after_long_gaps_equal_full_rebuild(empty_db: psycopg.Connection) -> None:
    """Calendar and anchored bars are resumed from the stored row before the cut (a snapshot
    seed). Bars whose earlier days miss more dates than a row lists (50), new days that reveal
    a gap of their own, and a revision inside such a bar still give the full rebuild's tables."""
    conn = empty_db
    pool = _universe(21, n=2, days=540)  # ends 2025-12-31
    end = pool["timestamp"].max()
    held = pool.filter(pl.col("timestamp") > end - dt.timedelta(days=12))
    # an 80-day hole inside the 2025 bars of the 6-month to 5-year timeframes
    hole = pl.col("timestamp").is_between(end - dt.timedelta(days=150), end - dt.timedelta(days=70))
    upsert_assets(conn, pool)
    upsert_source(conn, pool.filter(~hole).join(held, on=["id", "timestamp"], how="anti").drop("symbol"))
    build_all(conn, full=True)
    refresh_all(conn, full=True)
    days = held["timestamp"].unique().sort()
    for step in (days[:3], days[8:10]):  # the second step's first day reveals a five-day gap
        upsert_source(conn, held.filter(pl.col("timestamp").is_in(step.implode())).drop("symbol"))
        build_all(conn, full=False)
        refresh_all(conn, full=False)
    conn.execute("UPDATE cmc_price_histories7 SET high = high * 1.5, load_ts = now() WHERE \"timestamp\" = "
                 "(SELECT \"timestamp\" FROM cmc_price_histories7 ORDER BY \"timestamp\" DESC OFFSET 30 LIMIT 1)")
    build_all(conn, full=False)
    refresh_all(conn, full=False)
    problems = _check(conn)
    assert not problems, "\n".join(problems[:20])
    # the case this test is for: rows written incrementally list 50 dates of a longer run
    for table in ("cmc_price_bars_multi_tf_cal_iso", "cmc_price_bars_multi_tf_cal_anchor_us"):
        listed = conn.execute(f"SELECT count(*) FROM {table} WHERE time_close > %s AND missing_days_where LIKE '%%,...(+%%'",
                              (end - dt.timedelta(days=12),)).fetchone()[0]
        assert listed > 0, table


@pytest.mark.slow
def test_ema_series_resumed_over_daily_appends_equal_full_refresh(empty_db: psycopg.Connection) -> None:
    """New days are appended in steps of 1, 1, 3 and 7 days (across week and month ends): the
    EMA refreshers continue each series from the ends kept in its state row, and a young asset
    whose series reach their seed on the way is recomputed. Every step's tables equal a full
    rebuild's."""
    conn = empty_db
    pool = _universe(31, n=3, days=200)
    young = pool.filter(pl.col("id") == pool["id"].min()).tail(20).with_columns(
        id=pl.lit(int(pool["id"].max()) + 1, pl.Int32), name=pl.lit("young"), symbol=pl.lit("YNG"))
    pool = pl.concat([pool, young])
    days = pool["timestamp"].unique().sort()
    held = pool.filter(pl.col("timestamp") >= days[-12])
    upsert_assets(conn, pool)
    upsert_source(conn, pool.join(held, on=["id", "timestamp"], how="anti").drop("symbol"))
    build_all(conn, full=True)
    refresh_all(conn, full=True)
    taken = 0
    for n in (1, 1, 3, 7):
        step = days[-12 + taken:][:n]
        taken += n
        upsert_source(conn, held.filter(pl.col("timestamp").is_in(step.implode())).drop("symbol"))
        build_all(conn, full=False)
        refresh_all(conn, full=False)
        problems = _check(conn)
        assert not problems, f"after {taken} new days:\n" + "\n".join(problems[:20])
    # the newest day of one asset removed (its series end earlier: their ends are read back),
    # then loaded again (resumed from those ends)
    newest = conn.execute("SELECT id, \"timestamp\" FROM cmc_price_histories7 ORDER BY \"timestamp\" DESC, id "
                          "LIMIT 1").fetchone()
    conn.execute("DELETE FROM cmc_price_histories7 WHERE id = %s AND \"timestamp\" = %s", newest)
    for step in ("removed", "loaded again"):
        if step == "loaded again":
            upsert_source(conn, held.filter((pl.col("id") == newest[0]) & (pl.col("timestamp") == newest[1]))
                          .drop("symbol"))
        build_all(conn, full=False)
        refresh_all(conn, full=False)
        problems = _check(conn)
        assert not problems, f"newest day {step}:\n" + "\n".join(problems[:20])


@pytest.mark.slow
def test_series_without_rows_keep_their_state_rows_and_still_seed(empty_db: psycopg.Connection) -> None:
    """A day later, a series that had no row and still has none keeps its state row as it was
    (its watermark behind its id's); one whose seed completes gets rows and its state. Every
    step's tables equal a full rebuild's."""
    conn = empty_db
    pool = _universe(41, n=2, days=70)
    days = pool["timestamp"].unique().sort()
    held = pool.filter(pl.col("timestamp") >= days[-6])
    upsert_assets(conn, pool)
    upsert_source(conn, pool.join(held, on=["id", "timestamp"], how="anti").drop("symbol"))
    build_all(conn, full=True)
    refresh_all(conn, full=True, periods=(2, 3, 5, 10, 20, 40, 60))
    state = "cmc_ema_multi_tf_state"
    empty_before = dict(((r[0], r[1], r[2]), r[3:]) for r in conn.execute(
        f"SELECT id, tf, period, watermark_ingested_at, updated_at FROM {state} WHERE last_ts IS NULL").fetchall())
    assert empty_before
    for n in range(6):
        upsert_source(conn, held.filter(pl.col("timestamp") == days[-6 + n]).drop("symbol"))
        build_all(conn, full=False)
        refresh_all(conn, full=False, periods=(2, 3, 5, 10, 20, 40, 60))
    rows = {(r[0], r[1], r[2]): (r[3], r[4:]) for r in conn.execute(
        f"SELECT id, tf, period, last_ts, watermark_ingested_at, updated_at FROM {state}").fetchall()}
    still_empty = [k for k in empty_before if rows[k][0] is None]
    seeded = [k for k in empty_before if rows[k][0] is not None]
    assert still_empty and seeded  # 1D series of period 60 and 40 seed on the way; longer tfs do not
    assert all(rows[k][1] == empty_before[k] for k in still_empty)
    assert all(rows[k][1] != empty_before[k] for k in seeded)
    clone_source(conn, "public", "full_ref")
    build_all(conn, full=True, schema="full_ref")
    refresh_all(conn, full=True, schema="full_ref", periods=(2, 3, 5, 10, 20, 40, 60))
    problems = diff_schemas(conn, "public", "full_ref", [*BAR_TABLES, *EMA_TABLES]) + _ends_problems(conn)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_an_id_without_ema_rows_starts_its_first_series_without_a_recomputation(
        empty_db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A young asset none of whose EMA series has a row yet: on the day its first series'
    seed completes, the refresh steps that series from its seed (its rows read back to the
    seed's first row) rather than recomputing the id over its whole grid. Checked by spying on
    the recompute path; the tables equal a full rebuild's after every day."""
    import ta_lab2.emas.refresh as ema_refresh

    conn = empty_db
    # the young asset: 4 days listed, then one day at a time; period 5 of 1D seeds on day 5
    pool = generate_universe(SyntheticConfig(n_assets=2, days=60, seed=43, lengths=(60, 9), gap_rate=0.0,
                                             defect_rate=0.0)).frame
    young = pool.group_by("id").len().sort("len")["id"][0]
    days = pool.filter(pl.col("id") == young)["timestamp"].sort()
    held = pool.filter((pl.col("id") == young) & (pl.col("timestamp") >= days[4]))
    upsert_assets(conn, pool)
    upsert_source(conn, pool.join(held, on=["id", "timestamp"], how="anti").drop("symbol"))
    periods = (5, 8, 20)
    build_all(conn, full=True)
    refresh_all(conn, full=True, periods=periods)
    assert not conn.execute("SELECT count(*) FROM cmc_ema_multi_tf_state WHERE id = %s AND last_ts IS NOT NULL",
                            (young,)).fetchone()[0]
    recomputed: list[int] = []
    real = ema_refresh.recompute

    def spy(conn_, options, changed, inputs):  # noqa: ANN001, ANN202 - the recompute path's own signature
        if not options.full:  # the reference's full rebuild recomputes everything
            recomputed.extend(c.id for c in changed)
        return real(conn_, options, changed, inputs)

    monkeypatch.setattr(ema_refresh, "recompute", spy)
    for day in days[4:]:
        upsert_source(conn, held.filter(pl.col("timestamp") == day).drop("symbol"))
        build_all(conn, full=False)
        refresh_all(conn, full=False, periods=periods)
        clone_source(conn, "public", "full_ref")
        build_all(conn, full=True, schema="full_ref")
        refresh_all(conn, full=True, schema="full_ref", periods=periods)
        problems = diff_schemas(conn, "public", "full_ref", [*BAR_TABLES, *EMA_TABLES]) + _ends_problems(conn)
        assert not problems, f"after {day}: " + "\n".join(problems[:20])
    assert conn.execute("SELECT count(*) FROM cmc_ema_multi_tf WHERE id = %s", (young,)).fetchone()[0]
    assert young not in recomputed
    # the control: a revised close mid-history of the other asset is recomputed, through the spy
    (old,) = set(pool["id"].to_list()) - {young}
    revised = pool.filter(pl.col("id") == old).sort("timestamp")[30].with_columns(
        close=(pl.col("close") + pl.col("low")) / 2)
    upsert_source(conn, revised.drop("symbol"))
    build_all(conn, full=False)
    refresh_all(conn, full=False, periods=periods)
    assert old in recomputed


def test_a_period_added_later_is_built_by_the_incremental_refresh(empty_db: psycopg.Connection) -> None:
    """Series of a period that was not refreshed before have no state row: an incremental
    refresh with that period added builds them whole, with no new input and with one new day,
    and the tables equal a full rebuild's with the longer list of periods."""
    conn = empty_db
    pool = _universe(47, n=2, days=90)
    days = pool["timestamp"].unique().sort()
    held = pool.filter(pl.col("timestamp") == days[-1])
    upsert_assets(conn, pool)
    upsert_source(conn, pool.join(held, on=["id", "timestamp"], how="anti").drop("symbol"))
    build_all(conn, full=True)
    refresh_all(conn, full=True, periods=(3, 5))
    for step, periods in (("no new input", (3, 5, 8)), ("one new day", (3, 5, 8, 13))):
        if step == "one new day":
            upsert_source(conn, held.drop("symbol"))
            build_all(conn, full=False)
        refresh_all(conn, full=False, periods=periods)
        clone_source(conn, "public", "full_ref")
        build_all(conn, full=True, schema="full_ref")
        refresh_all(conn, full=True, schema="full_ref", periods=periods)
        problems = diff_schemas(conn, "public", "full_ref", EMA_TABLES) + _ends_problems(conn)
        assert not problems, f"{step}:\n" + "\n".join(problems[:20])
        assert conn.execute("SELECT count(*) FROM cmc_ema_multi_tf WHERE period = %s",
                            (periods[-1],)).fetchone()[0]
