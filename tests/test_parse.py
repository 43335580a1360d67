"""Tests of ta_lab2.load.parse: pure file parsing, no database. Expected values are hand-written."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from ta_lab2.errors import InputDataError, UsageError
from ta_lab2.load.parse import ParseResult, detect_format, parse_cmc_csv, parse_file, parse_generic
from ta_lab2.load.source_schema import REJECT_SCHEMA, SOURCE_SCHEMA

CMC_HEADER = (
    "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp"
)
GEN_HEADER = "id,timestamp,open,high,low,close"


def ts(text: str) -> datetime:
    """Hand-written UTC instant, e.g. ts('2024-01-01 23:59:59.999')."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rejects(result: ParseResult) -> list[tuple[int, str]]:
    return list(
        zip(result.rejects["line"].to_list(), result.rejects["reason"].to_list(), strict=True)
    )


def gen(tmp_path: Path, *rows: str, header: str = GEN_HEADER) -> ParseResult:
    return parse_generic(write(tmp_path, "g.csv", header, *rows))


# --------------------------------------------------------------------------- CoinMarketCap
CMC_ROW_1 = (
    '"2024-01-01T00:00:00.000Z";"2024-01-01T23:59:59.999Z";"2024-01-01T10:00:00.000Z";'
    '"2024-01-01T03:00:00.000Z";"Bitcoin";"42000.5";"43000";"41000";"42500.25";"1000";'
    '"830000000000";"2024-01-01T23:59:59.999Z"'
)
CMC_ROW_2 = (
    "2024-01-02T00:00:00.000Z;2024-01-02T23:59:59.999Z;2024-01-02T12:00:00.000Z;"
    "2024-01-02T01:00:00.000Z;Bitcoin;42500;44000;42000;43900;2000;840000000000;2024-01-02T23:59:59.999Z"
)


def test_cmc_with_asset_id(tmp_path: Path) -> None:
    path = write(tmp_path, "btc.csv", CMC_HEADER, CMC_ROW_2, CMC_ROW_1)  # out of order
    result = parse_cmc_csv(path, asset_id=1, name_to_id={})
    assert result.format == "cmc" and result.rows_read == 2 and result.rejects.height == 0
    assert result.frame.schema == pl.Schema(SOURCE_SCHEMA)
    frame = result.frame
    assert frame["id"].to_list() == [1, 1]
    assert frame["timestamp"].to_list() == [
        ts("2024-01-01 23:59:59.999"),
        ts("2024-01-02 23:59:59.999"),
    ]
    assert frame["date"].to_list() == [date(2024, 1, 1), date(2024, 1, 2)]
    assert frame.row(0, named=True) == {
        "id": 1,
        "name": "Bitcoin",
        "timeopen": ts("2024-01-01 00:00:00"),
        "timeclose": ts("2024-01-01 23:59:59.999"),
        "timehigh": ts("2024-01-01 10:00:00"),
        "timelow": ts("2024-01-01 03:00:00"),
        "timestamp": ts("2024-01-01 23:59:59.999"),
        "open": 42000.5,
        "high": 43000.0,
        "low": 41000.0,
        "close": 42500.25,
        "volume": 1000.0,
        "marketcap": 830000000000.0,
        "circulatingsupply": None,
        "date": date(2024, 1, 1),
        "source_file": "btc.csv",
    }


def test_cmc_header_case_column_order_circulating_supply_and_name_mapping(tmp_path: Path) -> None:
    header = (
        "NAME;TIMESTAMP;timeclose;TimeOpen;timehigh;timelow;"
        "OPEN;High;low;Close;VOLUME;MARKETCAP;CirculatingSupply"
    )
    row = (
        '"Bitcoin ";"2024-01-01T23:59:59.999Z";"2024-01-01T23:59:59.999Z";'
        '"2024-01-01T00:00:00.000Z";;;"1";"2";"0.5";"1.5";"10";"20";"19000000"'
    )
    path = write(tmp_path, "x.csv", header, row)
    assert detect_format(path) == "cmc"
    result = parse_file(path, name_to_id={"  BITCOIN": 7})
    assert result.rejects.height == 0
    assert result.frame.select(
        "id", "name", "open", "high", "low", "close", "circulatingsupply"
    ).row(0) == (
        7,
        "Bitcoin",
        1.0,
        2.0,
        0.5,
        1.5,
        19000000.0,
    )
    assert result.frame["timehigh"].to_list() == [None]
    assert result.frame["timestamp"].to_list() == [ts("2024-01-01 23:59:59.999")]


def test_cmc_unknown_name_refuses_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "alts.csv", CMC_HEADER, CMC_ROW_1, CMC_ROW_2.replace("Bitcoin", "Dogecoin")
    )
    with pytest.raises(InputDataError) as info:
        parse_file(path, name_to_id={"bitcoin": 1})
    text = str(info.value)
    assert "alts.csv" in text and "'Dogecoin'" in text and "'Bitcoin'" not in text
    assert "pass --id or add the asset to dim_assets" in text
    # with --id the same file loads
    assert parse_file(path, asset_id=5).frame["id"].to_list() == [5, 5]


def test_cmc_empty_name_without_id_is_a_row_reject(tmp_path: Path) -> None:
    path = write(tmp_path, "b.csv", CMC_HEADER, CMC_ROW_1, CMC_ROW_2.replace("Bitcoin", ""))
    result = parse_file(path, name_to_id={"bitcoin": 1})
    assert result.frame.height == 1
    assert rejects(result) == [(3, "name: missing, cannot look up the asset id (pass --id)")]


def test_cmc_malformed_rows_line_and_raw(tmp_path: Path) -> None:
    bad = CMC_ROW_2.replace(";43900;", ";abc;")
    ragged = "2024-01-03T00:00:00.000Z;Bitcoin;1"
    path = write(tmp_path, "m.csv", CMC_HEADER, CMC_ROW_1, "", bad, ragged)
    result = parse_cmc_csv(path, asset_id=1, name_to_id={})
    assert result.rows_read == 3 and result.frame.height == 1
    assert rejects(result) == [
        (4, "close: 'abc' is not a number"),
        (5, "expected 12 fields, found 3"),
    ]
    assert result.rejects["raw"].to_list() == [bad, ragged]
    assert result.rejects["source_file"].to_list() == ["m.csv", "m.csv"]
    assert result.rejects.schema == pl.Schema(REJECT_SCHEMA)


def test_cmc_wrong_header(tmp_path: Path) -> None:
    path = write(tmp_path, "w.csv", CMC_HEADER.replace("marketCap", "mcap"), CMC_ROW_1)
    with pytest.raises(InputDataError, match="marketCap"):
        detect_format(path)
    with pytest.raises(InputDataError, match=r"w\.csv.*missing required column\(s\) marketCap"):
        parse_cmc_csv(path, asset_id=1, name_to_id={})


def test_bad_asset_id_is_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "btc.csv", CMC_HEADER, CMC_ROW_1)
    with pytest.raises(UsageError):
        parse_file(path, asset_id=2**31)
    generic = write(tmp_path, "g.csv", GEN_HEADER, "1,2024-01-01T23:59:59.999Z,1,2,0.5,1.5")
    with pytest.raises(UsageError):
        parse_file(generic, asset_id=1)


# --------------------------------------------------------------------------- generic CSV
def test_generic_csv_valid_with_optional_and_unknown_columns(tmp_path: Path) -> None:
    header = "ID,Timestamp,open,high,low,close,Market_Cap,volume,Symbol,name,extra,timehigh"
    path = write(
        tmp_path,
        "gen.csv",
        header,
        "2,2024-01-02T23:59:59.999Z,10,11,9,10.5,1e9,5,ETH,Ethereum,zzz,2024-01-02T13:00:00Z",
        "1,2024-01-01T23:59:59.999Z,1,,,1.5,,,BTC,Bitcoin,,",
    )
    assert detect_format(path) == "generic-csv"
    result = parse_file(path)
    assert result.format == "generic-csv" and result.rows_read == 2 and result.rejects.height == 0
    assert result.frame.columns == [*SOURCE_SCHEMA, "symbol"]
    assert result.frame.select(
        "id", "symbol", "name", "high", "low", "close", "marketcap", "volume"
    ).rows() == [
        (1, "BTC", "Bitcoin", None, None, 1.5, None, None),
        (2, "ETH", "Ethereum", 11.0, 9.0, 10.5, 1e9, 5.0),
    ]
    assert result.frame["timehigh"].to_list() == [None, ts("2024-01-02 13:00:00")]
    assert result.frame["source_file"].to_list() == ["gen.csv", "gen.csv"]


def test_offsets_converted_to_utc_and_millis_preserved(tmp_path: Path) -> None:
    result = gen(
        tmp_path,
        "1,2024-01-02T01:59:59.999+02:00,1,2,0.5,1.5",
        "2,2024-01-01T23:59:59.999Z,1,2,0.5,1.5",
        "3,2023-12-31T20:00:00-05:30,1,2,0.5,1.5",
        "4,2024-01-01T23:59:59.123456Z,1,2,0.5,1.5",
    )
    assert result.rejects.height == 0
    assert result.frame["timestamp"].to_list() == [
        ts("2024-01-01 23:59:59.999"),
        ts("2024-01-01 23:59:59.999"),
        ts("2024-01-01 01:30:00"),
        ts("2024-01-01 23:59:59.123456"),
    ]
    assert result.frame["date"].to_list() == [date(2024, 1, 1)] * 4


def test_out_of_order_rows_are_sorted(tmp_path: Path) -> None:
    result = gen(
        tmp_path,
        "2,2024-01-01T23:59:59.999Z,1,2,0.5,1.5",
        "1,2024-01-03T23:59:59.999Z,3,2,0.5,1.5",
        "1,2024-01-02T23:59:59.999Z,2,2,0.5,1.5",
    )
    assert result.frame.select("id", "open").rows() == [(1, 2.0), (1, 3.0), (2, 1.0)]


def test_semantically_odd_rows_are_accepted(tmp_path: Path) -> None:
    result = gen(tmp_path, "1,2024-01-01T23:59:59.999Z,-1,0.5,2,0")  # negative open, high < low
    assert result.rejects.height == 0 and result.frame.select("open", "high", "low", "close").row(
        0
    ) == (-1.0, 0.5, 2.0, 0.0)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("1,2024-01-01T23:59:59.999Z,abc,2,0.5,1.5", "open: 'abc' is not a number"),
        ("1,2024-01-01T23:59:59.999Z,1,2,0.5,1;5", "close: '1;5' is not a number"),
        ("1,2024-01-01 23:59:59,1,2,0.5,1.5", "timestamp: '2024-01-01 23:59:59' has no time zone"),
        (
            "1,2024-01-01T23:59:59.999,1,2,0.5,1.5",
            "timestamp: '2024-01-01T23:59:59.999' has no time zone",
        ),
        ("1,yesterday,1,2,0.5,1.5", "timestamp: 'yesterday' is not an ISO-8601 instant"),
        (
            "1,2024-02-30T23:59:59Z,1,2,0.5,1.5",
            "timestamp: '2024-02-30T23:59:59Z' is not an ISO-8601 instant",
        ),
        ("1,2024-13-01,1,2,0.5,1.5", "timestamp: '2024-13-01' is not an ISO-8601 instant"),
        ("1,2024-1-5,1,2,0.5,1.5", "timestamp: '2024-1-5' is not an ISO-8601 instant"),
        ("1,2024-01-01T23:59:59.999Z,NaN,2,0.5,1.5", "open: 'NaN' is not finite"),
        ("1,2024-01-01T23:59:59.999Z,1,inf,0.5,1.5", "high: 'inf' is not finite"),
        ("1,2024-01-01T23:59:59.999Z,1,2,-inf,1.5", "low: '-inf' is not finite"),
        ("1,2024-01-01T23:59:59.999Z,1,2,0.5,", "close: missing required value"),
        ("1,,1,2,0.5,1.5", "timestamp: missing required value"),
        (",2024-01-01T23:59:59.999Z,1,2,0.5,1.5", "id: missing required value"),
        ("1,2024-01-01T23:59:59.999Z, ,2,0.5,1.5", "open: missing required value"),
        ("1.5,2024-01-01T23:59:59.999Z,1,2,0.5,1.5", "id: '1.5' is not an integer"),
        ("x,2024-01-01T23:59:59.999Z,1,2,0.5,1.5", "id: 'x' is not an integer"),
        (
            "9999999999,2024-01-01T23:59:59.999Z,1,2,0.5,1.5",
            "id: '9999999999' is out of the 32-bit integer range",
        ),
        ("1,2024-01-01T23:59:59.999Z,1,2,0.5", "expected 6 fields, found 5"),
        ('1,"2024-01-01T23:59:59.999Z,1,2,0.5,1.5', "unbalanced double quotes"),
    ],
)
def test_generic_csv_malformed_row(tmp_path: Path, row: str, reason: str) -> None:
    good = "7,2024-01-05T23:59:59.999Z,1,2,0.5,1.5"
    result = gen(tmp_path, good, row, good.replace("01-05", "01-06"))
    assert result.rows_read == 3
    assert result.frame["id"].to_list() == [7, 7]
    assert rejects(result) == [(3, reason)]
    assert result.rejects["raw"].to_list() == [row]


def test_plain_dates_mean_the_day(tmp_path: Path) -> None:
    """A plain date is that UTC day: its close instant in timestamp / timeclose, its start in
    timeopen; in timehigh / timelow it is refused (the instant of an extreme needs a time)."""
    header = "id,timestamp,open,high,low,close,timeopen,timeclose,timehigh"
    result = gen(
        tmp_path,
        "1,2026-01-01,1,2,0.5,1.5,2026-01-01,2026-01-01,2026-01-01T12:00:00Z",
        "1,2026-01-02T23:59:59.999Z,1,2,0.5,1.5,,,",
        "1,2024-02-29,1,2,0.5,1.5,,,",
        "1,2026-01-03,1,2,0.5,1.5,,,2026-01-03",
        "2,2026-01-02,1,2,0.5,1.5,,,",
        "2,2026-01-02T23:59:59.999Z,1,2,0.5,1.6,,,",  # the same instant as the line above
        header=header,
    )
    assert result.frame.select("id", "timestamp", "timeopen", "timeclose", "date").rows() == [
        (1, ts("2024-02-29 23:59:59.999"), None, None, date(2024, 2, 29)),
        (1, ts("2026-01-01 23:59:59.999"), ts("2026-01-01 00:00:00"), ts("2026-01-01 23:59:59.999"), date(2026, 1, 1)),
        (1, ts("2026-01-02 23:59:59.999"), None, None, date(2026, 1, 2)),
        (2, ts("2026-01-02 23:59:59.999"), None, None, date(2026, 1, 2)),
    ]
    assert result.frame.filter(pl.col("id") == 2)["close"].to_list() == [1.6]
    assert rejects(result) == [
        (5, "timehigh: '2026-01-03' is a date without a time of day"),
        (6, "duplicate (id, timestamp) in file; line 7 kept"),
    ]


def test_parquet_date_column_is_a_plain_date(tmp_path: Path) -> None:
    path = tmp_path / "dates.parquet"
    pl.DataFrame({"id": [3], "timestamp": [date(2026, 1, 1)], "open": [1.0], "high": [2.0], "low": [0.5],
                  "close": [1.5]}).write_parquet(path)
    result = parse_file(path)
    assert result.rejects.height == 0
    assert result.frame["timestamp"].to_list() == [ts("2026-01-01 23:59:59.999")]


def test_cmc_header_with_commas_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "btc.csv", CMC_HEADER.replace(";", ","), CMC_ROW_2.replace(";", ","))
    with pytest.raises(InputDataError) as err:
        parse_file(path, asset_id=1)
    message = str(err.value)
    assert "btc.csv" in message and "looks like a CoinMarketCap header with ','" in message
    assert "the format uses ';'" in message and "missing" not in message
    # with an id column it is a generic CSV that happens to carry the same columns
    generic = write(tmp_path, "gen.csv", "id," + CMC_HEADER.replace(";", ","), "5," + CMC_ROW_2.replace(";", ","))
    assert parse_file(generic).frame["id"].to_list() == [5]


def test_nonfinite_optional_column(tmp_path: Path) -> None:
    result = gen(
        tmp_path, "1,2024-01-01T23:59:59.999Z,1,2,0.5,1.5,inf", header=GEN_HEADER + ",volume"
    )
    assert rejects(result) == [(2, "volume: 'inf' is not finite")]


def test_integral_float_id_is_accepted(tmp_path: Path) -> None:
    assert gen(tmp_path, "3.0,2024-01-01T23:59:59.999Z,1,2,0.5,1.5").frame["id"].to_list() == [3]


def test_duplicate_keys_keep_last(tmp_path: Path) -> None:
    result = gen(
        tmp_path,
        "1,2024-01-01T23:59:59.999Z,1,2,0.5,1.5",  # line 2
        "1,2024-01-02T01:59:59.999+02:00,2,2,0.5,1.5",  # line 3: same instant as line 2
        "2,2024-01-01T23:59:59.999Z,9,9,9,9",  # line 4: other id, not a duplicate
        "1,2024-01-01T23:59:59.999Z,3,2,0.5,1.5",  # line 5: kept
        "1,abc,3,2,0.5,1.5",  # line 6: malformed, not part of the duplicate check
    )
    assert result.rows_read == 5
    assert result.frame.select("id", "open").rows() == [(1, 3.0), (2, 9.0)]
    assert rejects(result) == [
        (2, "duplicate (id, timestamp) in file; line 5 kept"),
        (3, "duplicate (id, timestamp) in file; line 5 kept"),
        (6, "timestamp: 'abc' is not an ISO-8601 instant"),
    ]


def test_crlf_and_blank_lines_keep_physical_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(
        b"id,timestamp,open,high,low,close\r\n\r\n1,2024-01-01T23:59:59.999Z,1,2,0.5,1.5\r\n1,bad,1,2,0.5,1.5\r\n"
    )
    result = parse_generic(path)
    assert result.rows_read == 2 and result.frame.height == 1
    assert rejects(result) == [(4, "timestamp: 'bad' is not an ISO-8601 instant")]
    assert result.rejects["raw"].to_list() == ["1,bad,1,2,0.5,1.5"]


@pytest.mark.parametrize(
    ("header", "missing"),
    [("id,timestamp,open,high,low", "close"), ("ident,time,open,high,low,close", "id, timestamp")],
)
def test_generic_wrong_header(tmp_path: Path, header: str, missing: str) -> None:
    path = write(tmp_path, "h.csv", header, "1,2,3,4,5,6")
    with pytest.raises(InputDataError, match=rf"h\.csv.*missing required column\(s\) {missing}"):
        parse_file(path)


def test_duplicate_header_column_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.csv",
        GEN_HEADER + ",marketcap,market_cap",
        "1,2024-01-01T23:59:59.999Z,1,2,0.5,1.5,1,2",
    )
    with pytest.raises(InputDataError, match="more than once"):
        parse_file(path)


def test_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"")
    blank = write(tmp_path, "b.csv", "", "  ")
    for path in (empty, blank):
        with pytest.raises(InputDataError, match="empty file"):
            parse_file(path)
        with pytest.raises(InputDataError, match="empty file"):
            parse_generic(path)
    empty_pq = tmp_path / "e.parquet"
    empty_pq.write_bytes(b"")
    with pytest.raises(InputDataError, match="empty file"):
        parse_file(empty_pq)


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="no data rows"):
        parse_file(write(tmp_path, "h.csv", GEN_HEADER))
    with pytest.raises(InputDataError, match="no data rows"):
        parse_file(write(tmp_path, "c.csv", CMC_HEADER), asset_id=1)


def test_detect_format_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="unsupported file type"):
        detect_format(write(tmp_path, "x.txt", GEN_HEADER))
    with pytest.raises(InputDataError, match="cannot read"):
        detect_format(tmp_path / "missing.csv")
    assert detect_format(tmp_path / "whatever.PARQUET") == "generic-parquet"


# --------------------------------------------------------------------------- Parquet
def test_parquet_valid_tz_aware_and_string_columns(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame(
        {
            "Id": [2, 1],
            "timestamp": [
                datetime(2024, 1, 2, 1, 59, 59, 999000),
                datetime(2024, 1, 1, 1, 0, 0),
            ],  # Athens wall time
            "open": [1.0, 2.0],
            "high": [0.1 + 0.2, 3.0],
            "low": [0.5, 1.0],
            "close": ["1.5", "2.5"],
            "market_cap": [None, 7.0],
            "timehigh": ["2024-01-01T12:00:00Z", None],
            "ignored": [[1], [2]],
        },
    ).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ms")).dt.replace_time_zone("Europe/Athens")
    ).write_parquet(path)
    result = parse_file(path)
    assert (
        result.format == "generic-parquet" and result.rows_read == 2 and result.rejects.height == 0
    )
    assert result.frame.select(
        "id", "timestamp", "high", "close", "marketcap", "timehigh", "date"
    ).rows() == [
        (1, ts("2023-12-31 23:00:00"), 3.0, 2.5, 7.0, None, date(2023, 12, 31)),  # UTC+2 in winter
        (
            2,
            ts("2024-01-01 23:59:59.999"),
            0.30000000000000004,
            1.5,
            None,
            ts("2024-01-01 12:00:00"),
            date(2024, 1, 1),
        ),
    ]


def test_parquet_naive_datetime_refused(tmp_path: Path) -> None:
    path = tmp_path / "naive.parquet"
    pl.DataFrame(
        {
            "id": [1],
            "timestamp": [datetime(2024, 1, 1, 23, 59, 59)],
            "open": [1.0],
            "high": [1.0],
            "low": [1.0],
            "close": [1.0],
        }
    ).write_parquet(path)
    with pytest.raises(InputDataError, match=r"naive\.parquet.*'timestamp'.*without a time zone"):
        parse_file(path)


def test_parquet_bad_rows_line_and_raw(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pl.DataFrame(
        {
            "id": [1, 1, 1],
            "timestamp": [
                "2024-01-01T23:59:59.999Z",
                "2024-01-02 23:59:59",
                "2024-01-03T23:59:59.999Z",
            ],
            "open": [1.0, 1.0, float("nan")],
            "high": [2.0, 2.0, 2.0],
            "low": [0.5, 0.5, 0.5],
            "close": [1.5, None, 1.5],
        }
    ).write_parquet(path)
    result = parse_file(path)
    assert result.rows_read == 3 and result.frame.height == 1
    assert rejects(result) == [
        (3, "timestamp: '2024-01-02 23:59:59' has no time zone"),
        (4, "open: 'NaN' is not finite"),
    ]
    assert result.rejects["raw"].to_list() == [
        "1,2024-01-02 23:59:59,1.0,2.0,0.5,",
        "1,2024-01-03T23:59:59.999Z,NaN,2.0,0.5,1.5",
    ]


def test_parquet_missing_column_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pl.DataFrame({"id": [1], "timestamp": ["2024-01-01T23:59:59Z"], "open": [1.0]}).write_parquet(
        path
    )
    with pytest.raises(InputDataError, match=r"missing required column\(s\) high, low, close"):
        parse_file(path)
    empty = tmp_path / "z.parquet"
    pl.DataFrame(schema={c: pl.String for c in GEN_HEADER.split(",")}).write_parquet(empty)
    with pytest.raises(InputDataError, match="no data rows"):
        parse_file(empty)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputDataError, match="cannot read Parquet"):
        parse_file(garbage)


# --------------------------------------------------------------------------- awkward text files
def test_a_quote_inside_an_unquoted_field_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    """Balanced quotes that do not enclose a whole field: the row is rejected with its line;
    the other rows load."""
    result = gen(tmp_path, "1,2024-01-01T23:59:59Z,1,2,0.5,1.5,\"Bitcoin\" (BTC)",
                 "1,2024-01-02T23:59:59Z,1,2,0.5,1.5,Bitcoin", header=GEN_HEADER + ",name")
    assert result.frame.height == 1 and result.rows_read == 2
    assert rejects(result) == [(2, 'a double quote inside a field: quote the whole field ("…"), doubling any quote '
                                   'inside it')]


def test_a_nul_byte_is_a_reject_shown_escaped(tmp_path: Path) -> None:
    result = gen(tmp_path, "1,2024-01-01T23:59:59Z,1,2,0.5,1.5\x00", "1,2024-01-02T23:59:59Z,1,2,0.5,1.5")
    assert result.frame.height == 1
    assert rejects(result) == [(2, "contains a NUL byte (shown as \\0), which a text column cannot hold")]
    assert result.rejects["raw"].to_list() == ["1,2024-01-01T23:59:59Z,1,2,0.5,1.5\\0"]


def test_cr_only_line_endings_are_lines(tmp_path: Path) -> None:
    path = tmp_path / "mac.csv"
    path.write_bytes(f"{GEN_HEADER}\r1,2024-01-01T23:59:59Z,1,2,0.5,1.5\r1,2024-01-02T23:59:59Z,1,2,0.5,1.5\r".encode())
    result = parse_generic(path)
    assert result.frame.height == 2 and result.rejects.height == 0


def test_a_quoted_header_name_may_hold_the_separator(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = gen(tmp_path, "1,2024-01-01T23:59:59Z,1,2,0.5,1.5,7", header=GEN_HEADER + ',"vol,ume"')
    assert result.frame.height == 1 and result.rejects.height == 0
    assert "ignoring column(s) vol,ume" in caplog.text


def test_unknown_columns_are_named_not_dropped_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    result = gen(tmp_path, "1,2024-01-01T23:59:59Z,1,2,0.5,1.5,10,20", header=GEN_HEADER + ",vol,marketCapUSD")
    assert result.frame.height == 1 and result.frame["volume"].to_list() == [None]
    assert "g.csv: ignoring column(s) vol, marketcapusd, which this format does not read" in caplog.text


def test_only_one_pair_of_quotes_around_a_number_is_removed(tmp_path: Path) -> None:
    # a quoted 1 followed by a doubled quote is the CSV value 1": not a number, since only the
    # one pair of quotes around a value is removed
    result = gen(tmp_path, '1,2024-01-01T23:59:59Z,"1""",2,0.5,1.5', '1,2024-01-03T23:59:59Z, "3" ,4,0.5,1.5')
    assert rejects(result) == [(2, "open: '1\"' is not a number")]
    assert result.frame["open"].to_list() == [3.0]  # spaces, then one quoted value


def test_a_leap_second_is_rejected_not_moved_to_the_next_day(tmp_path: Path) -> None:
    result = gen(tmp_path, "1,2016-12-31T23:59:60Z,1,2,0.5,1.5", "1,2016-12-30T23:59:59.5+00,1,2,0.5,1.5",
                 "1,2016-12-29 18:59:59-0500,1,2,0.5,1.5")
    assert rejects(result) == [(2, "timestamp: '2016-12-31T23:59:60Z' is a leap second (:60), which a timestamp "
                                   "cannot hold; write :59.999")]
    assert result.frame["timestamp"].to_list() == [ts("2016-12-29 23:59:59"), ts("2016-12-30 23:59:59.5")]
