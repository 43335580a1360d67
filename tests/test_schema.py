"""Schema management (spec 01/02/03): idempotence, every table and key, seeded dimensions,
the alpha lookup kept in sync, and the version guard."""

from __future__ import annotations

import psycopg
import pytest

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import SCHEMA_VERSION, VERSION_TABLE, ensure_schema
from ta_lab2.errors import DatabaseError

BAR_TABLES = [
    "cmc_price_bars_multi_tf",
    "cmc_price_bars_multi_tf_cal_iso",
    "cmc_price_bars_multi_tf_cal_us",
    "cmc_price_bars_multi_tf_cal_anchor_iso",
    "cmc_price_bars_multi_tf_cal_anchor_us",
]
EMA_TABLES = [
    "cmc_ema_multi_tf",
    "cmc_ema_multi_tf_v2",
    "cmc_ema_multi_tf_cal_us",
    "cmc_ema_multi_tf_cal_iso",
    "cmc_ema_multi_tf_cal_anchor_us",
    "cmc_ema_multi_tf_cal_anchor_iso",
]

CATALOG = """
SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = 'public'
UNION ALL
SELECT conname, 'c', pg_get_constraintdef(oid), '', false, '' FROM pg_constraint
WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT indexname, 'i', indexdef, '', false, '' FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2, 3
"""


def _catalog(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(CATALOG).fetchall()


def _data(conn: psycopg.Connection) -> list[tuple]:
    out = []
    for table in ("dim_timeframe", "dim_period", "ema_alpha_lookup", VERSION_TABLE):
        cols = "*" if table != VERSION_TABLE else "version, package_version, applied_at"
        out.append(conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2").fetchall())
    return out


def _pk(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = %s::regclass AND i.indisprimary
        ORDER BY array_position(i.indkey::int2[], a.attnum)
        """,
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _partial_unique(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE '%%UNIQUE%%WHERE%%'", (table,)
    ).fetchall()
    return {r[0].split(" USING btree ")[1] for r in rows}


@pytest.fixture
def schema_conn(fresh_db: Target):
    with connect(fresh_db) as c:
        assert ensure_schema(c) is True
        yield c


def test_second_run_changes_nothing(schema_conn: psycopg.Connection) -> None:
    before = (_catalog(schema_conn), _data(schema_conn))
    assert ensure_schema(schema_conn) is False
    assert ensure_schema(schema_conn) is False
    assert (_catalog(schema_conn), _data(schema_conn)) == before


def test_every_table_exists_with_its_key(schema_conn: psycopg.Connection) -> None:
    assert _pk(schema_conn, "cmc_price_histories7") == ["id", "timestamp"]
    assert _pk(schema_conn, "cmc_price_bars_1d") == ["id", "timestamp"]
    assert _pk(schema_conn, "cmc_price_bars_1d_rejects") == ["id", "timestamp"]
    assert _pk(schema_conn, "cmc_price_bars_1d_state") == ["id"]
    assert _pk(schema_conn, "dim_assets") == ["id"]
    assert _pk(schema_conn, "dim_timeframe") == ["tf"]
    assert _pk(schema_conn, "dim_period") == ["period"]
    assert _pk(schema_conn, "ema_alpha_lookup") == ["tf", "period"]
    unique_1d = schema_conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'cmc_price_bars_1d'::regclass AND contype = 'u'"
    ).fetchall()
    assert unique_1d == [("UNIQUE (id, tf, bar_seq)",)]
    for table in BAR_TABLES:
        assert _pk(schema_conn, table) == ["id", "tf", "bar_seq", "time_close"]
        assert _pk(schema_conn, f"{table}_state") == ["id", "tf"]
        assert _partial_unique(schema_conn, table) == {
            "(id, tf, time_close) WHERE (NOT is_partial_end)",
            "(id, tf, bar_seq) WHERE (NOT is_partial_end)",
        }
    for table in EMA_TABLES:
        assert _pk(schema_conn, table) == ["id", "tf", "period", "ts"]
        assert _pk(schema_conn, f"{table}_state") == ["id", "tf", "period"]
        assert _partial_unique(schema_conn, table) == {"(id, tf, period, ts) WHERE (NOT roll)"}


def test_bar_and_ema_columns(schema_conn: psycopg.Connection) -> None:
    def cols(table: str) -> list[str]:
        return [r[0] for r in schema_conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position", (table,)
        ).fetchall()]

    common = {"id", "tf", "tf_days", "bar_seq", "time_open", "time_close", "time_high", "time_low", "open", "high",
              "low", "close", "volume", "market_cap", "timestamp", "last_ts_half_open", "pos_in_bar",
              "is_partial_start", "is_partial_end", "is_missing_days", "count_days", "count_days_remaining",
              "count_missing_days", "count_missing_days_start", "count_missing_days_end",
              "count_missing_days_interior", "missing_days_where", "first_missing_day", "last_missing_day",
              "ingested_at"}
    for table in BAR_TABLES:
        expected = common | ({"bar_anchor_offset"} if "anchor" in table else set())
        assert set(cols(table)) == expected, table
    ema = {"id", "tf", "ts", "period", "tf_days", "roll", "ema", "d1", "d2", "d1_roll", "d2_roll", "ingested_at"}
    dual = {"ema_bar", "d1_bar", "d2_bar", "roll_bar", "d1_roll_bar", "d2_roll_bar"}
    for table in EMA_TABLES:
        expected = ema | (dual if "cal" in table else set())
        assert set(cols(table)) == expected, table
    assert {"repaired_timehigh", "repaired_timelow", "repaired_high", "repaired_low", "src_name", "src_file",
            "src_load_ts", "is_missing_days"} <= set(cols("cmc_price_bars_1d"))


def test_seeded_timeframes_match_spec(schema_conn: psycopg.Connection) -> None:
    rows = {r[0]: r[1:] for r in schema_conn.execute(
        "SELECT tf, family, tf_days_nominal, tf_days_min, tf_days_max, is_canonical, calendar_scheme, "
        "calendar_anchor FROM dim_timeframe"
    ).fetchall()}
    # Hand-typed from spec 01's table.
    assert rows["1D"] == ("1d", 1, 1, 1, True, None, False)
    assert rows["7D"] == ("rolling", 7, 7, 7, True, None, False)
    assert rows["15D"][4] is False and rows["1000D"][4] is False
    assert rows["2W_CAL_US"] == ("cal", 14, 14, 14, True, "US", False)
    assert rows["10W_CAL_ISO"] == ("cal", 70, 70, 70, True, "ISO", False)
    assert rows["1M_CAL"] == ("cal", 30, 28, 31, True, None, False)
    assert rows["2M_CAL"][1:4] == (60, 59, 62)
    assert rows["3M_CAL"][1:4] == (90, 89, 92)
    assert rows["6M_CAL"][1:4] == (180, 181, 184)
    assert rows["9M_CAL"][1:4] == (270, 273, 276)
    assert rows["12M_CAL"][1:4] == (360, 365, 366)
    assert rows["1Y_CAL"][1:4] == (365, 365, 366)
    assert rows["2Y_CAL"][1:4] == (730, 730, 731)
    assert rows["6Y_CAL"][4] is False and rows["5Y_CAL"][4] is True
    assert rows["3M_CAL_ANCHOR"] == ("cal_anchor", 90, 1, 92, True, None, True)
    assert rows["1W_CAL_ANCHOR_US"] == ("cal_anchor", 7, 1, 7, True, "US", True)
    assert "9M_CAL_ANCHOR" not in rows
    rolling = [tf for tf, r in rows.items() if r[0] == "rolling" and r[4]]
    assert len(rolling) == 15
    assert len([tf for tf, r in rows.items() if r[0] == "rolling"]) == 15 + 23
    assert len([tf for tf, r in rows.items() if r[0] == "cal"]) == 14 + 6 + 10
    assert len([tf for tf, r in rows.items() if r[0] == "cal_anchor"]) == 14 + 5 + 10
    periods = [r[0] for r in schema_conn.execute("SELECT period FROM dim_period ORDER BY period").fetchall()]
    assert periods == [6, 9, 10, 12, 14, 17, 20, 21, 26, 30, 50, 52, 77, 100, 200, 252, 365]


def test_alpha_lookup_follows_dimensions(schema_conn: psycopg.Connection) -> None:
    n_tf = schema_conn.execute("SELECT count(*) FROM dim_timeframe").fetchone()[0]
    assert schema_conn.execute("SELECT count(*) FROM ema_alpha_lookup").fetchone()[0] == n_tf * 17
    row = schema_conn.execute(
        "SELECT tf_days_nominal, alpha_bar, alpha_ema_dailyspace, alpha_bar_preview_daily "
        "FROM ema_alpha_lookup WHERE tf = '7D' AND period = 10"
    ).fetchone()
    assert row == (7, 2 / 11, 2 / 71, 1 - (1 - 2 / 11) ** (1 / 7))
    schema_conn.execute(
        "INSERT INTO dim_timeframe (tf, family, base_unit, tf_qty, tf_days_nominal, is_canonical) "
        "VALUES ('11D', 'rolling', 'D', 11, 11, false)"
    )
    schema_conn.execute("INSERT INTO dim_period (period) VALUES (3)")
    assert schema_conn.execute("SELECT count(*) FROM ema_alpha_lookup").fetchone()[0] == (n_tf + 1) * 18
    assert schema_conn.execute(
        "SELECT alpha_ema_dailyspace FROM ema_alpha_lookup WHERE tf = '11D' AND period = 3"
    ).fetchone()[0] == 2 / 34
    schema_conn.execute("UPDATE dim_timeframe SET tf_days_nominal = 12 WHERE tf = '11D'")
    assert schema_conn.execute(
        "SELECT tf_days_nominal, alpha_ema_dailyspace FROM ema_alpha_lookup WHERE tf = '11D' AND period = 3"
    ).fetchone() == (12, 2 / 37)
    schema_conn.execute("DELETE FROM dim_period WHERE period = 3")
    schema_conn.execute("DELETE FROM dim_timeframe WHERE tf = '11D'")
    assert schema_conn.execute("SELECT count(*) FROM ema_alpha_lookup").fetchone()[0] == n_tf * 17


def test_user_edit_of_seeded_row_survives_init(schema_conn: psycopg.Connection) -> None:
    schema_conn.execute("UPDATE dim_timeframe SET description = 'mine' WHERE tf = '7D'")
    schema_conn.commit()
    ensure_schema(schema_conn, repair=True)
    assert schema_conn.execute("SELECT description FROM dim_timeframe WHERE tf = '7D'").fetchone() == ("mine",)


def test_deleted_seed_row_is_restored(schema_conn: psycopg.Connection) -> None:
    schema_conn.execute("DELETE FROM dim_timeframe WHERE tf = '7D'")
    schema_conn.commit()
    assert ensure_schema(schema_conn) is False  # the runners' quick check: version and tables only
    assert ensure_schema(schema_conn, repair=True) is True  # `ta-lab2 init`
    assert schema_conn.execute("SELECT tf_days_nominal FROM dim_timeframe WHERE tf = '7D'").fetchone() == (7,)


def test_quick_check_recreates_a_dropped_table(schema_conn: psycopg.Connection) -> None:
    schema_conn.execute("DROP TABLE cmc_price_bars_1d_deletions")
    schema_conn.commit()
    assert ensure_schema(schema_conn) is True
    assert schema_conn.execute("SELECT to_regclass('cmc_price_bars_1d_deletions')").fetchone()[0] is not None


def test_newer_schema_version_is_refused(schema_conn: psycopg.Connection) -> None:
    schema_conn.execute(f"INSERT INTO {VERSION_TABLE} (version, package_version) VALUES (%s, 'future')",
                        (SCHEMA_VERSION + 1,))
    schema_conn.commit()
    before = _catalog(schema_conn)
    with pytest.raises(DatabaseError, match="newer than this ta_lab2"):
        ensure_schema(schema_conn)
    assert _catalog(schema_conn) == before


def test_version_recorded(schema_conn: psycopg.Connection) -> None:
    assert schema_conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone() == (SCHEMA_VERSION,)


def test_version_4_ema_state_tables_gain_their_ends(schema_conn: psycopg.Connection) -> None:
    """A database of schema version 4 (EMA state rows without their series' ends, full pages)
    is upgraded in place: the ends columns and the half-full pages appear, rows are kept with
    NULL ends (their series are recomputed once), and version 5 is recorded."""
    table = "cmc_ema_multi_tf_cal_us_state"
    ends = ["last_ema", "last_d1_roll", "canon_ts", "canon_ema", "canon_d1",
            "last_ema_bar", "last_d1_roll_bar", "canon_ema_bar", "canon_d1_bar"]
    schema_conn.execute(f"ALTER TABLE {table} RESET (fillfactor), " + ", ".join(f"DROP COLUMN {c}" for c in ends))
    schema_conn.execute(f"INSERT INTO {table} (id, tf, period, watermark_ingested_at, last_ts) "
                        "VALUES (1, '1M_CAL', 10, now(), now())")
    schema_conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version >= 5")
    schema_conn.commit()
    assert ensure_schema(schema_conn) is True
    columns = {r[0] for r in schema_conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)).fetchall()}
    assert set(ends) <= columns
    options = schema_conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()[0]
    assert "fillfactor=50" in options
    row = schema_conn.execute(f"SELECT last_ts IS NOT NULL, last_ema, canon_ts FROM {table}").fetchone()
    assert row == (True, None, None)
    assert schema_conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone() == (SCHEMA_VERSION,)


def test_version_5_source_gains_the_load_ts_stamp(schema_conn: psycopg.Connection) -> None:
    """A database of schema version 5 (no trigger on the source table) is upgraded: afterwards
    an UPDATE made by hand that changes a price stamps the row's load_ts, one that changes
    nothing leaves it alone."""
    schema_conn.execute("DROP TRIGGER cmc_price_histories7_stamp_load_ts ON cmc_price_histories7")
    schema_conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version >= 6")
    schema_conn.execute("INSERT INTO cmc_price_histories7 (id, \"timestamp\", close, load_ts) "
                        "VALUES (7, '2024-01-01', 10, '2020-01-01')")
    schema_conn.commit()
    assert ensure_schema(schema_conn) is True
    schema_conn.execute("UPDATE cmc_price_histories7 SET close = 10 WHERE id = 7")
    assert schema_conn.execute("SELECT load_ts FROM cmc_price_histories7 WHERE id = 7").fetchone()[0].year == 2020
    schema_conn.execute("UPDATE cmc_price_histories7 SET close = 11 WHERE id = 7")
    stamped = schema_conn.execute("SELECT load_ts > now() - interval '1 hour' FROM cmc_price_histories7 WHERE id = 7")
    assert stamped.fetchone() == (True,)
    schema_conn.rollback()
