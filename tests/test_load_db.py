"""Loading into the real PostgreSQL (spec 01 "Loaders", 06 "Bad input"): upsert semantics and
``load_ts``, CoinMarketCap / generic CSV / Parquet values, rejects kept in ``load_rejects``,
unusable files refused before anything is written. Expected values are hand-written."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.errors import InputDataError
from ta_lab2.load.service import LoadReport, load_files, load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig, generate_universe

pytestmark = pytest.mark.db

CMC_HEADER = (
    "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp"
)
GEN_HEADER = "id,timestamp,open,high,low,close,volume,market_cap"
TABLES = ("cmc_price_histories7", "dim_assets", "load_rejects")


def ts(text: str) -> datetime:
    """Hand-written UTC instant: ts('2024-01-01 23:59:59.999')."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def write(folder: Path, name: str, *lines: str, newline: str = "\n") -> Path:
    path = folder / name
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return path


def load(target: Target, paths: list[Path], **kwargs: object) -> LoadReport:
    """One load on its own connection, committed when the connection closes."""
    with connect(target) as conn:
        return load_files(conn, paths, **kwargs)  # type: ignore[arg-type]


def query(target: Target, statement: str, params: tuple = ()) -> list[tuple]:
    with connect(target) as conn:
        return conn.execute(statement, params).fetchall()


def counts(target: Target) -> dict[str, int]:
    return {t: query(target, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


def load_ts_set(target: Target) -> set[tuple]:
    return set(query(target, 'SELECT id, "timestamp", load_ts FROM cmc_price_histories7'))


def rejects(target: Target) -> list[tuple[str, int, str]]:
    return [
        tuple(r)
        for r in query(
            target, "SELECT source_file, line, reason FROM load_rejects ORDER BY reject_id"
        )
    ]


@pytest.fixture(scope="module")
def schema_db(db: Target) -> Target:
    with connect(db) as conn:
        ensure_schema(conn)
    return db


@pytest.fixture
def target(schema_db: Target) -> Target:
    """The module's database with the schema in place and the loader's tables emptied, so each
    test starts from nothing (cheaper than a new database per test)."""
    with connect(schema_db) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    return schema_db


# --------------------------------------------------------------------------- synthetic
def test_synthetic_load_reload_and_csv_revisions(target: Target, tmp_path: Path) -> None:
    config = SyntheticConfig(n_assets=3, days=120, seed=11)
    height = generate_universe(config).frame.height
    assert height >= 3 * 42  # three assets, each at least 35 % of 120 days (minus a few gaps)

    with connect(target) as conn:
        first = load_synthetic(conn, config)
    assert first.ok and first.rejected == 0
    assert (first.totals.inserted, first.totals.updated, first.totals.unchanged) == (height, 0, 0)
    assert first.summary_line() == f"loaded {height}, updated 0, unchanged 0, rejected 0"
    assert counts(target)["cmc_price_histories7"] == height
    # synthetic assets take ids 9,000,001 on: never a real CoinMarketCap id
    assert query(target, "SELECT id, symbol, name, asset_class FROM dim_assets ORDER BY id") == [
        (9_000_001, "SYN9000001", "Synthetic SYN9000001", "CRYPTO"),
        (9_000_002, "SYN9000002", "Synthetic SYN9000002", "CRYPTO"),
        (9_000_003, "SYN9000003", "Synthetic SYN9000003", "CRYPTO"),
    ]
    assert query(target, "SELECT DISTINCT source_file FROM cmc_price_histories7") == [
        ("synthetic:11",)
    ]
    before = load_ts_set(target)

    # identical reload: nothing inserted or updated, no load_ts touched
    with connect(target) as conn:
        again = load_synthetic(conn, config)
    assert (again.totals.inserted, again.totals.updated, again.totals.unchanged) == (0, 0, height)
    assert again.summary_line() == f"loaded 0, updated 0, unchanged {height}, rejected 0"
    assert load_ts_set(target) == before
    assert counts(target)["dim_assets"] == 3

    # two stored rows of the second asset written back as a generic CSV with every value column
    cols = (
        'id, "timestamp", open, high, low, close, volume, marketcap, circulatingsupply, name, '
        "timeopen, timeclose, timehigh, timelow"
    )
    rows = query(
        target,
        f'SELECT {cols} FROM cmc_price_histories7 WHERE id = 9000002 ORDER BY "timestamp" LIMIT 2 OFFSET 10',
    )
    assert len(rows) == 2
    header = "id,timestamp,open,high,low,close,volume,market_cap,circulatingsupply,name,timeopen,timeclose,timehigh,timelow"

    def line(row: tuple, **change: float) -> str:
        values = list(row)
        if "close" in change:
            values[5] = change["close"]
        out = []
        for v in values:
            if v is None:
                out.append("")
            elif isinstance(v, datetime):
                out.append(v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            elif isinstance(v, float):
                out.append(repr(v))
            else:
                out.append(str(v))
        return ",".join(out)

    # only the provenance differs: unchanged, load_ts untouched
    same = write(tmp_path, "same.csv", header, line(rows[0]), line(rows[1]))
    report = load(target, [same])
    assert report.ok
    assert report.summary_line() == "loaded 0, updated 0, unchanged 2, rejected 0"
    assert load_ts_set(target) == before

    # one close revised: exactly that row updated and only its load_ts bumped
    new_close = rows[1][5] * 1.25 + 1.0
    revised = write(tmp_path, "revised.csv", header, line(rows[0]), line(rows[1], close=new_close))
    report = load(target, [revised])
    assert report.summary_line() == "loaded 0, updated 1, unchanged 1, rejected 0"
    after = {(i, t): lt for i, t, lt in load_ts_set(target)}
    old = {(i, t): lt for i, t, lt in before}
    assert after.keys() == old.keys()
    changed = {k for k in old if after[k] != old[k]}
    assert changed == {(9_000_002, rows[1][1])}
    assert after[(9_000_002, rows[1][1])] > old[(9_000_002, rows[1][1])]
    stored = query(
        target,
        'SELECT close, source_file FROM cmc_price_histories7 WHERE id = 9000002 AND "timestamp" = %s',
        (rows[1][1],),
    )
    assert stored == [(new_close, "revised.csv")]
    assert counts(target)["cmc_price_histories7"] == height


# --------------------------------------------------------------------------- CoinMarketCap
CMC_DAY_1 = (
    '"2024-01-01T00:00:00.000Z";"2024-01-01T23:59:59.999Z";"2024-01-01T10:00:00.000Z";'
    '"2024-01-01T03:00:00.000Z";"Bitcoin";"42000.5";"43000";"41000";"42500.25";"1000";'
    '"830000000000";"2024-01-01T23:59:59.999Z"'
)
CMC_DAY_2 = (
    "2024-01-02T00:00:00.000Z;2024-01-02T23:59:59.999Z;2024-01-02T12:00:00.000Z;"
    "2024-01-02T01:00:00.000Z;Bitcoin;42500;44000;42000;43900;2000;840000000000;"
    "2024-01-02T23:59:59.999Z"
)
CMC_DAY_3 = (
    "2024-01-03T00:00:00.000Z;2024-01-03T23:59:59.999Z;2024-01-03T09:30:00.250Z;"
    "2024-01-03T20:00:00.000Z;Bitcoin;43900;45000.75;43000;44800;3000;850000000000;"
    "2024-01-03T23:59:59.999Z"
)
SOURCE_COLS = 'id, name, timeopen, timeclose, timehigh, timelow, "timestamp", open, high, low, close, volume, marketcap, date, source_file'


def test_cmc_with_id_then_by_name(target: Target, tmp_path: Path) -> None:
    first = write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_2, CMC_DAY_1, newline="\r\n")
    report = load(target, [first], asset_id=1)
    assert report.ok and report.summary_line() == "loaded 2, updated 0, unchanged 0, rejected 0"
    assert [(f.format, f.rows_read, f.new_assets) for f in report.files] == [("cmc", 2, 1)]
    got = query(target, f'SELECT {SOURCE_COLS} FROM cmc_price_histories7 ORDER BY "timestamp"')
    assert got == [
        (
            1,
            "Bitcoin",
            ts("2024-01-01 00:00:00"),
            ts("2024-01-01 23:59:59.999"),
            ts("2024-01-01 10:00:00"),
            ts("2024-01-01 03:00:00"),
            ts("2024-01-01 23:59:59.999"),
            42000.5,
            43000.0,
            41000.0,
            42500.25,
            1000.0,
            830000000000.0,
            date(2024, 1, 1),
            "btc.csv",
        ),
        (
            1,
            "Bitcoin",
            ts("2024-01-02 00:00:00"),
            ts("2024-01-02 23:59:59.999"),
            ts("2024-01-02 12:00:00"),
            ts("2024-01-02 01:00:00"),
            ts("2024-01-02 23:59:59.999"),
            42500.0,
            44000.0,
            42000.0,
            43900.0,
            2000.0,
            840000000000.0,
            date(2024, 1, 2),
            "btc.csv",
        ),
    ]
    # the millisecond survives exactly (not rounded to the second)
    assert query(
        target, "SELECT to_char(max(\"timestamp\"), 'HH24:MI:SS.MS') FROM cmc_price_histories7"
    ) == [("23:59:59.999",)]
    assert query(target, "SELECT id, name FROM dim_assets") == [(1, "Bitcoin")]

    # the file has no id: the name is looked up in dim_assets
    second = write(tmp_path, "btc_more.csv", CMC_HEADER, CMC_DAY_3, CMC_DAY_2)
    report = load(target, [second])
    assert report.ok and report.summary_line() == "loaded 1, updated 0, unchanged 1, rejected 0"
    assert query(
        target,
        'SELECT id, timehigh, high FROM cmc_price_histories7 WHERE "timestamp" = %s',
        (ts("2024-01-03 23:59:59.999"),),
    ) == [(1, ts("2024-01-03 09:30:00.250"), 45000.75)]
    assert counts(target) == {"cmc_price_histories7": 3, "dim_assets": 1, "load_rejects": 0}


def test_cmc_unknown_name_without_id_writes_nothing(target: Target, tmp_path: Path) -> None:
    load(target, [write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_1)], asset_id=1)
    before = counts(target)
    doge = write(tmp_path, "doge.csv", CMC_HEADER, CMC_DAY_1.replace("Bitcoin", "Dogecoin"))
    with pytest.raises(InputDataError) as info:
        load(target, [doge])
    assert "doge.csv" in str(info.value) and "Dogecoin" in str(info.value)
    assert counts(target) == before
    assert query(target, "SELECT count(*) FROM dim_assets WHERE name = 'Dogecoin'") == [(0,)]


def test_cmc_circulating_supply_and_lower_case_header(target: Target, tmp_path: Path) -> None:
    header = CMC_HEADER.lower() + ";circulatingsupply"
    path = write(
        tmp_path, "eth.csv", header, CMC_DAY_1.replace("Bitcoin", "Ethereum") + ';"120000000.5"'
    )
    report = load(target, [path], asset_id=1027)
    assert report.ok
    assert query(target, "SELECT id, name, close, circulatingsupply FROM cmc_price_histories7") == [
        (1027, "Ethereum", 42500.25, 120000000.5)
    ]


def test_cmc_malformed_and_naive_rows_rejected_rest_loads(target: Target, tmp_path: Path) -> None:
    bad_number = CMC_DAY_2.replace(";43900;", ";43,900;")  # a comma is not a decimal point here
    naive = CMC_DAY_3.replace("2024-01-03T23:59:59.999Z", "2024-01-03T23:59:59.999")
    path = write(tmp_path, "m.csv", CMC_HEADER, CMC_DAY_1, bad_number, "", naive)
    report = load(target, [path], asset_id=1)
    assert not report.ok and report.rejected == 2
    assert report.summary_line() == "loaded 1, updated 0, unchanged 0, rejected 2"
    got = rejects(target)
    assert [(f, line) for f, line, _ in got] == [("m.csv", 3), ("m.csv", 5)]
    assert "close" in got[0][2] and "43,900" in got[0][2]
    assert "2024-01-03T23:59:59.999" in got[1][2] and "zone" in got[1][2].lower()
    assert query(target, 'SELECT "timestamp" FROM cmc_price_histories7') == [
        (ts("2024-01-01 23:59:59.999"),)
    ]


# --------------------------------------------------------------------------- one asset per id
def test_an_id_of_another_asset_is_refused_unless_forced(target: Target, tmp_path: Path) -> None:
    with connect(target) as conn:
        load_synthetic(conn, SyntheticConfig(n_assets=1, days=5, seed=3))
    load(target, [write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_1)], asset_id=1)
    before = counts(target)
    eth = write(tmp_path, "eth.csv", CMC_HEADER, CMC_DAY_2.replace("Bitcoin", "Ethereum"))
    good = write(tmp_path, "good.csv", GEN_HEADER, "77,2024-01-01T23:59:59.999Z,1,2,0.5,1.5,10,20")
    with pytest.raises(InputDataError) as info:
        load(target, [eth], asset_id=1)
    message = str(info.value)
    assert "eth.csv" in message and "id 1" in message and "'Bitcoin'" in message and "'Ethereum'" in message
    assert "--force" in message and "nothing was loaded" in message
    header = "id,timestamp,open,high,low,close,name,symbol"
    onto_synthetic = write(tmp_path, "syn.csv", header, "9000001,2024-01-02T23:59:59.999Z,1,2,0.5,1.5,Bitcoin,BTC")
    with pytest.raises(InputDataError) as info:  # a clash in any input refuses them all
        load(target, [good, onto_synthetic])
    assert "id 9000001 is 'Synthetic SYN9000001' (SYN9000001)" in str(info.value)
    assert "'Bitcoin' (BTC)" in str(info.value)
    assert counts(target) == before

    # forced: the prices load under id 1, dim_assets keeps its name
    report = load(target, [eth], asset_id=1, force=True)
    assert report.summary_line() == "loaded 1, updated 0, unchanged 0, rejected 0"
    assert query(target, "SELECT id, name, symbol FROM dim_assets WHERE id = 1") == [(1, "Bitcoin", None)]
    assert query(target, "SELECT name FROM cmc_price_histories7 WHERE id = 1 ORDER BY 1") == [("Bitcoin",), ("Ethereum",)]


def test_inputs_that_share_a_name_or_symbol_with_the_id_load(target: Target, tmp_path: Path) -> None:
    load(target, [write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_1)], asset_id=1)
    header = "id,timestamp,open,high,low,close,name,symbol"
    same = write(tmp_path, "same.csv", header, "1,2024-01-02T23:59:59.999Z,1,2,0.5,1.5, bitcoin ,BTC")
    assert load(target, [same]).ok  # case and surrounding spaces do not matter; the symbol is new
    assert query(target, "SELECT name, symbol FROM dim_assets WHERE id = 1") == [("Bitcoin", "BTC")]
    by_symbol = write(tmp_path, "by_symbol.csv", header, "1,2024-01-03T23:59:59.999Z,1,2,0.5,1.5,XBT Coin,btc")
    assert load(target, [by_symbol]).ok  # shares the symbol
    # a CoinMarketCap file whose name column holds the symbol it is looked up by
    cmc_symbol = write(tmp_path, "cmc_btc.csv", CMC_HEADER, CMC_DAY_3.replace("Bitcoin", "BTC"))
    assert load(target, [cmc_symbol]).ok
    unnamed = write(tmp_path, "unnamed.csv", "id,timestamp,open,high,low,close", "1,2024-01-04T23:59:59.999Z,1,2,0.5,1.5")
    assert load(target, [unnamed]).ok  # nothing to compare
    assert query(target, "SELECT count(*) FROM cmc_price_histories7 WHERE id = 1") == [(4,)]


def test_rows_the_1d_builder_will_reject_or_repair_are_counted(target: Target, tmp_path: Path) -> None:
    rows = [
        "5,2024-01-01T23:59:59.999Z,-1,2,0.5,1.5,,",  # negative open
        "5,2024-01-02T23:59:59.999Z,1,2,0,1.5,,",  # zero low
        "5,2024-01-03T23:59:59.999Z,1,0.5,2,1.5,,",  # high < low
        "5,2024-01-04T23:59:59.999Z,-1,0.5,2,1.5,,",  # both: counted as non-positive only
        "5,2024-01-05T23:59:59.999Z,1,,2,1.5,,",  # no high: nothing to compare
        "5,2024-01-06T23:59:59.999Z,1,2,0.5,1.5,,",  # fine
    ]
    report = load(target, [write(tmp_path, "odd.csv", GEN_HEADER, *rows)])
    assert report.ok and report.totals.inserted == 6  # loaded as given
    odd = report.files[0].oddities
    # the same counts, by SQL over what was stored
    expected = query(
        target,
        "SELECT count(*) FILTER (WHERE least(open, high, low, close) <= 0), "
        "count(*) FILTER (WHERE high < low AND NOT least(open, high, low, close) <= 0) FROM cmc_price_histories7",
    )
    assert (odd.non_positive_price, odd.high_below_low) == expected[0] == (3, 1)


# --------------------------------------------------------------------------- generic CSV / Parquet
def test_generic_csv_values_land_exactly(target: Target, tmp_path: Path) -> None:
    header = "id,timestamp,open,high,low,close,volume,market_cap,name,symbol,timehigh,timelow,timeopen,timeclose"
    path = write(
        tmp_path,
        "gen.csv",
        header,
        "825,2024-03-05T23:59:59.999Z,1.0001,1.002,0.9985,0.99995,123456789.25,,Tether,USDT,"
        "2024-03-05T14:30:00.123+02:00,2024-03-05T01:02:03.004Z,2024-03-05T00:00:00.000Z,2024-03-05T23:59:59.999Z",
        "5426,2024-03-05T23:59:59.999Z,130.5,135,128.25,133.125,5e9,6.1e10,Solana,SOL,,,,",
    )
    report = load(target, [path])
    assert report.ok and report.summary_line() == "loaded 2, updated 0, unchanged 0, rejected 0"
    assert report.files[0].format == "generic-csv" and report.files[0].new_assets == 2
    got = query(
        target,
        'SELECT id, "timestamp", open, high, low, close, volume, marketcap, name, timehigh, timelow, '
        "timeopen, timeclose, date, source_file FROM cmc_price_histories7 ORDER BY id",
    )
    assert got == [
        (
            825,
            ts("2024-03-05 23:59:59.999"),
            1.0001,
            1.002,
            0.9985,
            0.99995,
            123456789.25,
            None,
            "Tether",
            ts("2024-03-05 12:30:00.123"),
            ts("2024-03-05 01:02:03.004"),
            ts("2024-03-05 00:00:00"),
            ts("2024-03-05 23:59:59.999"),
            date(2024, 3, 5),
            "gen.csv",
        ),
        (
            5426,
            ts("2024-03-05 23:59:59.999"),
            130.5,
            135.0,
            128.25,
            133.125,
            5e9,
            6.1e10,
            "Solana",
            None,
            None,
            None,
            None,
            date(2024, 3, 5),
            "gen.csv",
        ),
    ]
    assert query(target, "SELECT id, symbol, name FROM dim_assets ORDER BY id") == [
        (825, "USDT", "Tether"),
        (5426, "SOL", "Solana"),
    ]


def test_parquet_values_land_exactly(target: Target, tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "id": [74, 74, 74],
            "timestamp": [
                ts("2024-05-02 23:59:59.999"),
                ts("2024-05-01 23:59:59.999"),
                ts("2024-05-03 23:59:59.999"),
            ],
            "open": [0.125, 0.12, 0.13],
            "high": [0.14, 0.13, 0.135],
            "low": [0.11, 0.115, 0.125],
            "close": [0.13, 0.125, 0.1325],
            "volume": [1.5e9, 1.25e9, 1.75e9],
            "market_cap": [1.8e10, None, 1.9e10],
            "symbol": ["DOGE", "DOGE", "DOGE"],
            "name": ["Dogecoin", "Dogecoin", "Dogecoin"],
        },
        schema_overrides={"id": pl.Int64, "timestamp": pl.Datetime("ms", "UTC")},
    )
    path = tmp_path / "doge.parquet"
    frame.write_parquet(path)
    report = load(target, [path])
    assert report.ok and report.summary_line() == "loaded 3, updated 0, unchanged 0, rejected 0"
    assert report.files[0].format == "generic-parquet"
    got = query(
        target,
        'SELECT id, "timestamp", open, high, low, close, volume, marketcap, name, source_file '
        'FROM cmc_price_histories7 ORDER BY "timestamp"',
    )
    assert got == [
        (
            74,
            ts("2024-05-01 23:59:59.999"),
            0.12,
            0.13,
            0.115,
            0.125,
            1.25e9,
            None,
            "Dogecoin",
            "doge.parquet",
        ),
        (
            74,
            ts("2024-05-02 23:59:59.999"),
            0.125,
            0.14,
            0.11,
            0.13,
            1.5e9,
            1.8e10,
            "Dogecoin",
            "doge.parquet",
        ),
        (
            74,
            ts("2024-05-03 23:59:59.999"),
            0.13,
            0.135,
            0.125,
            0.1325,
            1.75e9,
            1.9e10,
            "Dogecoin",
            "doge.parquet",
        ),
    ]
    assert query(target, "SELECT id, symbol, name FROM dim_assets") == [(74, "DOGE", "Dogecoin")]


def test_parquet_non_finite_row_rejected(target: Target, tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "id": [9, 9, 9],
            "timestamp": [
                ts("2024-05-01 23:59:59.999"),
                ts("2024-05-02 23:59:59.999"),
                ts("2024-05-03 23:59:59.999"),
            ],
            "open": [1.0, 2.0, 3.0],
            "high": [1.5, 2.5, 3.5],
            "low": [0.5, 1.5, 2.5],
            "close": [1.25, math.nan, 3.25],
        }
    )
    path = tmp_path / "nan.parquet"
    frame.write_parquet(path)
    report = load(target, [path])
    assert report.rejected == 1 and not report.ok
    assert report.summary_line() == "loaded 2, updated 0, unchanged 0, rejected 1"
    ((source, line, reason),) = rejects(target)
    assert source == "nan.parquet" and line == 3 and "close" in reason  # row index 1 + header
    assert query(target, 'SELECT close FROM cmc_price_histories7 ORDER BY "timestamp"') == [
        (1.25,),
        (3.25,),
    ]


# --------------------------------------------------------------------------- bad rows (spec 06)
GOOD_1 = "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,1000"
GOOD_3 = "7,2024-01-03T23:59:59.999Z,11,13,10,12,300,3000"

BAD_ROWS = [
    # (case, bad line 3, words the reason must contain)
    ("malformed number", "7,2024-01-02T23:59:59.999Z,10,12,9,abc,200,2000", ["close", "abc"]),
    ("two decimal points", "7,2024-01-02T23:59:59.999Z,1.2.3,12,9,11,200,2000", ["open", "1.2.3"]),
    ("malformed volume", "7,2024-01-02T23:59:59.999Z,10,12,9,11,lots,2000", ["volume", "lots"]),
    (
        "malformed instant",
        "7,2024-02-30T23:59:59.999Z,10,12,9,11,200,2000",
        ["timestamp", "2024-02-30"],
    ),
    ("not a date", "7,2024-01-32,10,12,9,11,200,2000", ["timestamp", "2024-01-32"]),
    (
        "naive timestamp",
        "7,2024-01-02T23:59:59.999,10,12,9,11,200,2000",
        ["timestamp", "2024-01-02T23:59:59.999", "zone"],
    ),
    ("NaN close", "7,2024-01-02T23:59:59.999Z,10,12,9,NaN,200,2000", ["close", "NaN"]),
    ("inf high", "7,2024-01-02T23:59:59.999Z,10,inf,9,11,200,2000", ["high", "inf"]),
    (
        "-Infinity low",
        "7,2024-01-02T23:59:59.999Z,10,12,-Infinity,11,200,2000",
        ["low", "-Infinity"],
    ),
    ("nan optional volume", "7,2024-01-02T23:59:59.999Z,10,12,9,11,nan,2000", ["volume", "nan"]),
    ("overflow to inf", "7,2024-01-02T23:59:59.999Z,10,12,9,11,200,1e400", ["market", "1e400"]),
    ("missing close", "7,2024-01-02T23:59:59.999Z,10,12,9,,200,2000", ["close", "missing"]),
    ("missing open", "7,2024-01-02T23:59:59.999Z, ,12,9,11,200,2000", ["open", "missing"]),
    ("missing timestamp", "7,,10,12,9,11,200,2000", ["timestamp", "missing"]),
    ("missing id", ",2024-01-02T23:59:59.999Z,10,12,9,11,200,2000", ["id", "missing"]),
    ("non-integer id", "7.5,2024-01-02T23:59:59.999Z,10,12,9,11,200,2000", ["id", "7.5"]),
    (
        "id out of range",
        "3000000000,2024-01-02T23:59:59.999Z,10,12,9,11,200,2000",
        ["id", "3000000000"],
    ),
    ("too few fields", "7,2024-01-02T23:59:59.999Z,10,12,9,11,200", ["8", "7", "field"]),
    ("too many fields", "7,2024-01-02T23:59:59.999Z,10,12,9,11,200,2000,x", ["8", "9", "field"]),
]


@pytest.mark.parametrize(("bad", "words"), [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_bad_row_is_rejected_with_file_line_reason_and_rest_loads(
    target: Target, tmp_path: Path, bad: str, words: list[str]
) -> None:
    path = write(tmp_path, "rows.csv", GEN_HEADER, GOOD_1, bad, GOOD_3)
    report = load(target, [path])
    assert report.rejected == 1 and report.ok is False
    assert report.summary_line() == "loaded 2, updated 0, unchanged 0, rejected 1"
    assert report.files[0].rows_read == 3
    ((source, line, reason),) = rejects(target)
    assert (source, line) == ("rows.csv", 3)
    for word in words:
        assert word.lower() in reason.lower(), (word, reason)
    assert query(target, "SELECT raw FROM load_rejects") == [(bad,)]
    assert query(
        target, 'SELECT id, "timestamp", close FROM cmc_price_histories7 ORDER BY "timestamp"'
    ) == [
        (7, ts("2024-01-01 23:59:59.999"), 11.0),
        (7, ts("2024-01-03 23:59:59.999"), 12.0),
    ]


def test_several_bad_rows_counted_and_blank_lines_kept_in_numbering(
    target: Target, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "many.csv",
        GEN_HEADER,
        GOOD_1,
        "",
        "7,2024-01-02T23:59:59.999,10,12,9,11,200,2000",
        "8,2024-01-02T23:59:59.999Z,10,12,9,x,200,2000",
        GOOD_3,
        "8,2024-01-03T23:59:59.999Z,10,12,9,11.5,,",
    )
    report = load(target, [path])
    assert report.rejected == 2
    assert report.summary_line() == "loaded 3, updated 0, unchanged 0, rejected 2"
    assert [(s, line) for s, line, _ in rejects(target)] == [("many.csv", 4), ("many.csv", 5)]
    assert query(
        target, "SELECT id, count(*) FROM cmc_price_histories7 GROUP BY id ORDER BY id"
    ) == [(7, 2), (8, 1)]
    # re-loading the same file: the good rows are unchanged, the bad ones rejected (and recorded) again
    again = load(target, [path])
    assert again.summary_line() == "loaded 0, updated 0, unchanged 3, rejected 2"
    assert counts(target)["load_rejects"] == 4


def test_out_of_order_rows_are_accepted_and_stored_by_key(target: Target, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "shuffled.csv",
        GEN_HEADER,
        "7,2024-01-03T23:59:59.999Z,11,13,10,12,300,3000",
        "8,2024-01-01T23:59:59.999Z,1,2,0.5,1.5,10,20",
        "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,1000",
        "7,2024-01-02T23:59:59.999Z,11,12.5,10.5,11.5,200,2000",
    )
    report = load(target, [path])
    assert report.ok and report.summary_line() == "loaded 4, updated 0, unchanged 0, rejected 0"
    assert query(
        target, 'SELECT id, date, close, volume FROM cmc_price_histories7 ORDER BY id, "timestamp"'
    ) == [
        (7, date(2024, 1, 1), 11.0, 100.0),
        (7, date(2024, 1, 2), 11.5, 200.0),
        (7, date(2024, 1, 3), 12.0, 300.0),
        (8, date(2024, 1, 1), 1.5, 10.0),
    ]


def test_duplicate_key_in_one_file_rejects_one_row(target: Target, tmp_path: Path) -> None:
    first = "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,1000"
    second = "7,2024-01-01T23:59:59.999Z,10,12,9,11.75,100,1000"
    path = write(tmp_path, "dup.csv", GEN_HEADER, first, GOOD_3, second)
    report = load(target, [path])
    assert report.rejected == 1
    assert report.summary_line() == "loaded 2, updated 0, unchanged 0, rejected 1"
    ((source, line, reason),) = rejects(target)
    assert source == "dup.csv" and line in (2, 4) and "duplicate" in reason.lower()
    kept_close = 11.75 if line == 2 else 11.0
    assert query(
        target,
        'SELECT close FROM cmc_price_histories7 WHERE "timestamp" = %s',
        (ts("2024-01-01 23:59:59.999"),),
    ) == [(kept_close,)]


def test_semantically_odd_rows_are_accepted(target: Target, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "odd.csv",
        GEN_HEADER,
        "7,2024-01-01T23:59:59.999Z,-5,-1,-8,-2.5,100,1000",  # negative prices
        "7,2024-01-02T23:59:59.999Z,10,8,12,11,100,1000",  # high < low
        "7,2024-01-03T23:59:59.999Z,0,0,0,0,0,0",  # zero prices
    )
    report = load(target, [path])
    assert report.ok and report.summary_line() == "loaded 3, updated 0, unchanged 0, rejected 0"
    assert query(
        target, 'SELECT open, high, low, close FROM cmc_price_histories7 ORDER BY "timestamp"'
    ) == [
        (-5.0, -1.0, -8.0, -2.5),
        (10.0, 8.0, 12.0, 11.0),
        (0.0, 0.0, 0.0, 0.0),
    ]


def test_several_files_in_one_call_and_null_transitions(target: Target, tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.csv",
        GEN_HEADER,
        "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,1000",
        "7,2024-01-02T23:59:59.999Z,11,13,10,12,,",
    )
    b = write(
        tmp_path,
        "b.csv",
        GEN_HEADER,
        "7,2024-01-02T23:59:59.999Z,11,13,10,12,,",  # identical, NULLs included
        "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,1000",  # identical
        "7,2024-01-03T23:59:59.999Z,12,14,11,13,300,3000",  # new
    )
    report = load(target, [a, b])
    assert report.ok and report.summary_line() == "loaded 3, updated 0, unchanged 2, rejected 0"
    per_file = [
        (Path(f.source).name, f.counts.inserted, f.counts.updated, f.counts.unchanged)
        for f in report.files
    ]
    assert per_file == [("a.csv", 2, 0, 0), ("b.csv", 1, 0, 2)]
    stamps = {(i, t): lt for i, t, lt in load_ts_set(target)}

    c = write(
        tmp_path,
        "c.csv",
        GEN_HEADER,
        "7,2024-01-01T23:59:59.999Z,10,12,9,11,100,",  # market cap value -> NULL
        "7,2024-01-02T23:59:59.999Z,11,13,10,12,,5",  # market cap NULL -> value
        "7,2024-01-03T23:59:59.999Z,12,14,11,13,300,3000",  # identical
    )
    report = load(target, [c])
    assert report.summary_line() == "loaded 0, updated 2, unchanged 1, rejected 0"
    assert query(
        target, 'SELECT date, marketcap FROM cmc_price_histories7 ORDER BY "timestamp"'
    ) == [
        (date(2024, 1, 1), None),
        (date(2024, 1, 2), 5.0),
        (date(2024, 1, 3), 3000.0),
    ]
    after = {(i, t): lt for i, t, lt in load_ts_set(target)}
    day = {t.date(): (i, t) for i, t in stamps}
    assert after[day[date(2024, 1, 1)]] > stamps[day[date(2024, 1, 1)]]
    assert after[day[date(2024, 1, 2)]] > stamps[day[date(2024, 1, 2)]]
    assert after[day[date(2024, 1, 3)]] == stamps[day[date(2024, 1, 3)]]


# --------------------------------------------------------------------------- unusable files
def _unusable(tmp_path: Path, kind: str) -> Path:
    if kind == "wrong generic header":
        return write(
            tmp_path, "bad.csv", "id,timestamp,open,high,low", "7,2024-01-05T23:59:59.999Z,1,2,0.5"
        )
    if kind == "unknown header":
        return write(tmp_path, "bad.csv", "date,price", "2024-01-05,1.5")
    if kind == "wrong cmc header":
        return write(tmp_path, "bad.csv", CMC_HEADER.replace("marketCap", "mcap"), CMC_DAY_1)
    if kind == "empty file":
        return write(tmp_path, "bad.csv", "", newline="")
    if kind == "blank lines only":
        return write(tmp_path, "bad.csv", "", "  ", "")
    if kind == "header only":
        return write(tmp_path, "bad.csv", GEN_HEADER)
    if kind == "cmc header only":
        return write(tmp_path, "bad.csv", CMC_HEADER)
    if kind == "unknown cmc name":
        return write(tmp_path, "bad.csv", CMC_HEADER, CMC_DAY_1.replace("Bitcoin", "Nocoin"))
    if kind == "missing file":
        return tmp_path / "bad.csv"
    if kind == "unsupported suffix":
        return write(tmp_path, "bad.txt", GEN_HEADER, GOOD_1)
    if kind == "corrupt parquet":
        path = tmp_path / "bad.parquet"
        path.write_bytes(b"PAR1 this is not parquet")
        return path
    if kind == "naive parquet instants":
        path = tmp_path / "bad.parquet"
        pl.DataFrame(
            {
                "id": [7],
                "timestamp": [datetime(2024, 1, 5, 23, 59, 59, 999000)],
                "open": [1.0],
                "high": [2.0],
                "low": [0.5],
                "close": [1.5],
            }
        ).write_parquet(path)
        return path
    if kind == "empty parquet":
        path = tmp_path / "bad.parquet"
        pl.DataFrame(
            schema={
                "id": pl.Int32,
                "timestamp": pl.Datetime("us", "UTC"),
                "open": pl.Float64,
                "high": pl.Float64,
                "low": pl.Float64,
                "close": pl.Float64,
            }
        ).write_parquet(path)
        return path
    raise AssertionError(kind)


UNUSABLE = [
    "wrong generic header",
    "unknown header",
    "wrong cmc header",
    "empty file",
    "blank lines only",
    "header only",
    "cmc header only",
    "unknown cmc name",
    "missing file",
    "unsupported suffix",
    "corrupt parquet",
    "naive parquet instants",
    "empty parquet",
]


@pytest.mark.parametrize("kind", UNUSABLE)
def test_unusable_file_refused_and_nothing_written_even_with_a_valid_file(
    target: Target, tmp_path: Path, kind: str
) -> None:
    load(
        target, [write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_1)], asset_id=1
    )  # pre-existing data
    before, stamps = counts(target), load_ts_set(target)
    valid = write(tmp_path, "valid.csv", GEN_HEADER, GOOD_1, GOOD_3)  # given first: parse-all-first
    bad = _unusable(tmp_path, kind)
    with pytest.raises(InputDataError) as info:
        load(target, [valid, bad])
    assert bad.name in str(info.value)
    assert counts(target) == before
    assert load_ts_set(target) == stamps
    assert query(target, "SELECT count(*) FROM cmc_price_histories7 WHERE id = 7") == [(0,)]


# --------------------------------------------------------------------------- transactions
def test_load_files_commits_before_returning(target: Target, tmp_path: Path) -> None:
    path = write(tmp_path, "g.csv", GEN_HEADER, GOOD_1)
    conn = connect(target)
    try:
        assert (
            load_files(conn, [path]).summary_line()
            == "loaded 1, updated 0, unchanged 0, rejected 0"
        )
        # another session sees the rows as soon as load_files has returned
        assert counts(target)["cmc_price_histories7"] == 1
    finally:
        conn.close()
    assert counts(target)["cmc_price_histories7"] == 1


def test_repeated_loads_on_one_connection(target: Target, tmp_path: Path) -> None:
    path = write(tmp_path, "g.csv", GEN_HEADER, GOOD_1, GOOD_3)
    with connect(target) as conn:
        summaries = [load_files(conn, [path]).summary_line() for _ in range(3)]
    assert summaries == [
        "loaded 2, updated 0, unchanged 0, rejected 0",
        "loaded 0, updated 0, unchanged 2, rejected 0",
        "loaded 0, updated 0, unchanged 2, rejected 0",
    ]


def test_connection_usable_after_refused_file(target: Target, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", "id,timestamp", "7,2024-01-01T23:59:59.999Z")
    good = write(tmp_path, "g.csv", GEN_HEADER, GOOD_1)
    with connect(target) as conn:
        with pytest.raises(InputDataError):
            load_files(conn, [bad])
        assert load_files(conn, [good]).ok
    assert counts(target)["cmc_price_histories7"] == 1


def test_the_inputs_of_one_command_load_all_or_none(target: Target, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every input is written in one transaction: a failure while writing the second file
    (here an error injected into its upsert) leaves nothing of the first."""
    import ta_lab2.load.service as service

    first = write(tmp_path, "btc.csv", CMC_HEADER, CMC_DAY_1)
    second = write(tmp_path, "btc2.csv", CMC_HEADER, CMC_DAY_1.replace("2024-01-01", "2024-01-02"))
    real, calls = service.upsert_source, []

    def failing_second(conn, frame, schema="public"):  # noqa: ANN001, ANN202 - upsert_source's own signature
        calls.append(frame.height)
        if len(calls) == 2:
            raise RuntimeError("the connection was lost")
        return real(conn, frame, schema)

    monkeypatch.setattr(service, "upsert_source", failing_second)
    with pytest.raises(RuntimeError):
        load(target, [first, second], asset_id=1)
    assert calls == [1, 1]
    assert query(target, "SELECT count(*) FROM cmc_price_histories7") == [(0,)]
    assert query(target, "SELECT count(*) FROM dim_assets") == [(0,)]
    monkeypatch.setattr(service, "upsert_source", real)
    report = load(target, [first, second], asset_id=1)
    assert [f.counts.inserted for f in report.files] == [1, 1]
