"""Parse source files into source-table frames (spec 01 "Loaders" 1-2, "Time conventions").

Pure functions of file contents, no database. A :class:`ParseResult` holds the accepted rows in
exactly the :func:`~ta_lab2.load.source_schema.conform` shape (+ ``symbol`` when the input has
one) sorted by ``(id, timestamp)``, and the rejects (``REJECT_SCHEMA``) sorted by ``line``.

* A file unusable as a whole (unreadable, empty, header only, wrong header, unknown CoinMarketCap
  name, naive Parquet Datetime column) raises ``InputDataError`` before anything is written.
* Instants are ISO-8601 with a time zone; a plain date (``2026-01-01``, or a Parquet ``Date``)
  in ``timestamp`` / ``timeclose`` means that UTC day's close, 23:59:59.999Z, in ``timeopen``
  its start, 00:00:00.000Z (:data:`PLAIN_DATE_TIME`).
* A malformed row (bad number or instant, instant without time zone, missing required field,
  non-finite number, non-integer id, wrong field count, duplicate key) becomes one reject whose
  reason names the column and the value; the rest loads. Semantically odd but well-formed values
  (negative prices, high < low) are accepted: a later validation stage judges them.

Validation is vectorised: values are read as strings, cast with ``strict=False``, and a non-empty
input that became null is a reject. ``line`` is the physical 1-based line of a text file (blank
lines are skipped but counted); Parquet has no lines, so ``line`` = row index + 2 (as if it had a
header line). ``raw`` is the physical line; for Parquet the recognised columns' values (instants
as UTC ISO strings) joined by ``,``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import polars as pl

from ta_lab2.errors import InputDataError, UsageError
from ta_lab2.load.source_schema import REJECT_SCHEMA, SYMBOL_COLUMN, UTC_US, conform

log = logging.getLogger(__name__)

CMC_HEADER = ("timeOpen", "timeClose", "timeHigh", "timeLow", "name", "open", "high", "low")
CMC_HEADER += ("close", "volume", "marketCap", "timestamp")
_CMC_COLUMNS = {c.lower(): c.lower() for c in (*CMC_HEADER, "circulatingSupply")}
GENERIC_REQUIRED = ("id", "timestamp", "open", "high", "low", "close")
#: Generic header name (lower case) -> source column. ``circulatingsupply`` is accepted as a bonus.
_GENERIC_COLUMNS = (
    {c: c for c in (*GENERIC_REQUIRED, "volume", "marketcap", "name", SYMBOL_COLUMN)}
    | {c: c for c in ("timehigh", "timelow", "timeopen", "timeclose", "circulatingsupply")}
    | {"market_cap": "marketcap", "circulating_supply": "circulatingsupply"}
)

INSTANT_COLUMNS = ("timestamp", "timeopen", "timeclose", "timehigh", "timelow")
NUMBER_COLUMNS = ("open", "high", "low", "close", "volume", "marketcap", "circulatingsupply")
REQUIRED_VALUES = ("id", "timestamp", "open", "close")
_INT32 = (-(2**31), 2**31 - 1)
_LINE, _RAW, _REASON = "__line", "__raw", "__reason"
_NO_REJECTS = pl.DataFrame(schema={_LINE: pl.Int64, _REASON: pl.String, _RAW: pl.String})
_INSTANT_RE = (
    r"^(?<date>\d{4}-\d{2}-\d{2})(?:[Tt ](?<time>\d{2}:\d{2}:\d{2})(?<frac>\.\d{1,9})?"
    r"(?<tz>[Zz]|[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?)?)?$"
)
#: The UTC time of day a plain date (``2026-01-01``) stands for, per instant column: a day's
#: close is 23:59:59.999 (as in CoinMarketCap files), its open 00:00:00.000. A plain date in
#: ``timehigh`` / ``timelow`` is refused: the instant of an extreme needs a time of day.
PLAIN_DATE_TIME = {"timestamp": "23:59:59.999", "timeclose": "23:59:59.999", "timeopen": "00:00:00.000"}


@dataclass(frozen=True)
class ParseResult:
    """Accepted rows (``conform`` shape), rejects (``REJECT_SCHEMA``), data-row count, format."""

    frame: pl.DataFrame
    rejects: pl.DataFrame
    rows_read: int  # data rows in the file = accepted + rejected
    format: str  # "cmc" | "generic-csv" | "generic-parquet"


# --------------------------------------------------------------------------- file reading
def _first_line(path: Path) -> str:
    """First non-blank line of a text file; InputDataError if unreadable or empty."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            for line in fh:
                if line.strip():
                    return line.rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read file as UTF-8 text ({exc})") from exc
    raise InputDataError(f"{path}: empty file (no header line)")


def _header_names(header: str, sep: str) -> list[str]:
    """The header's column names, lower case; a quoted name may hold the separator."""
    return [f.strip().lower() for f in next(csv.reader([header], delimiter=sep, skipinitialspace=True))]


def _well_quoted(sep: str) -> str:
    """A regex matching a line whose every field is either unquoted (no ``"``) or one quoted
    value (``""`` for a quote inside it) with nothing but spaces around it."""
    quoted, plain = r'\s*"(?:[^"]|"")*"\s*', f'[^"{re.escape(sep)}]*'
    field = f"(?:{quoted}|{plain})"
    return f"^{field}(?:{re.escape(sep)}{field})*$"


def _read_text_table(
    path: Path, sep: str, known: Mapping[str, str], required: Sequence[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a delimited text file as strings; InputDataError if empty, header-only or wrong header.

    Returns (table of the recognised columns as String + line + raw, structural rejects:
    unbalanced quotes or wrong field count, with line, raw and reason).
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read file as UTF-8 text ({exc})") from exc
    if "\n" not in text and "\r" in text:  # old Mac line endings: CR alone
        text = text.replace("\r", "\n")
    lines = pl.DataFrame({_RAW: text.split("\n")}, schema={_RAW: pl.String})
    lines = lines.with_row_index(_LINE, offset=1).with_columns(
        pl.col(_LINE).cast(pl.Int64), pl.col(_RAW).str.strip_suffix("\r")
    )
    lines = lines.filter(pl.col(_RAW).str.strip_chars() != "")
    if lines.height == 0:
        raise InputDataError(f"{path}: empty file (no header line)")
    names = _header_names(lines[_RAW][0], sep)
    picked = _select_columns(path, names, known, required)
    body = lines.slice(1)
    if body.height == 0:
        raise InputDataError(f"{path}: no data rows (header only)")
    fields = pl.col(_RAW).str.replace_all(r'"[^"]*"', "").str.count_matches(sep, literal=True) + 1
    body = body.with_columns(
        pl.when(pl.col(_RAW).str.contains("\x00", literal=True))
        .then(pl.lit("contains a NUL byte (shown as \\0), which a text column cannot hold"))
        .when(pl.col(_RAW).str.count_matches('"', literal=True) % 2 == 1)
        .then(pl.lit("unbalanced double quotes"))
        .when(~pl.col(_RAW).str.contains(_well_quoted(sep)))
        .then(pl.lit('a double quote inside a field: quote the whole field ("…"), doubling any quote inside it'))
        .when(fields != len(names))
        .then(pl.format(f"expected {len(names)} fields, found {{}}", fields))
        .alias(_REASON)
    )
    good = body.filter(pl.col(_REASON).is_null())
    cols = {f"__c{i}": pl.String for i in range(len(names))}
    if good.height:
        buf = good.select(pl.col(_RAW).str.join("\n")).item().encode()
        try:
            table = pl.read_csv(io.BytesIO(buf), has_header=False, separator=sep, quote_char='"', schema=cols)
        except pl.exceptions.PolarsError as exc:  # the checks above should leave nothing it cannot split
            raise InputDataError(f"{path}: rows could not be split into fields ({str(exc).splitlines()[0]})") from exc
        if table.height != good.height:  # cannot happen once field counts are checked
            raise InputDataError(f"{path}: rows could not be split reliably")
    else:
        table = pl.DataFrame(schema=cols)
    table = table.select(pl.col(f"__c{i}").alias(c) for c, i in picked.items())
    structural = body.filter(pl.col(_REASON).is_not_null()).with_columns(
        pl.col(_RAW).str.replace_all("\x00", "\\0", literal=True))
    return table.hstack(good.select(_LINE, _RAW)), structural


def _select_columns(
    path: Path, names: list[str], known: Mapping[str, str], required: Sequence[str]
) -> dict[str, int]:
    """Map source column -> header position; InputDataError on missing or duplicate columns."""
    picked: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in known:
            col = known[name]
            if col in picked:
                raise InputDataError(f"{path}: column {col!r} appears more than once in the header")
            picked[col] = i
    ignored = [name for name in names if name not in known]
    if ignored:  # said, not silent: a misspelt optional column would otherwise vanish
        log.warning("%s: ignoring column(s) %s, which this format does not read (it reads %s)", path.name,
                    ", ".join(ignored), ", ".join(sorted(known)))
    missing = [c for c in required if known.get(c.lower(), c.lower()) not in picked]
    if missing:
        found = ", ".join(names)
        raise InputDataError(
            f"{path}: header is missing required column(s) {', '.join(missing)} (found: {found})"
        )
    return picked


# --------------------------------------------------------------------------- validation
def _clean(col: str) -> pl.Expr:
    """Strip whitespace (and, for non-text columns, surrounding quotes); empty -> null."""
    s = pl.col(col).str.strip_chars()
    if col not in ("name", SYMBOL_COLUMN):  # one pair around the value (a field after spaces)
        s = s.str.replace(r'^"(.*)"$', "$1").str.strip_chars()
    return pl.when(s == "").then(None).otherwise(s).alias(col)


def _parse_number(c: str) -> tuple[pl.Expr, pl.Expr]:
    s, v = pl.col(c), pl.col(c).cast(pl.Float64, strict=False)
    reason = (
        pl.when(s.is_not_null() & v.is_null())
        .then(pl.format(f"{c}: '{{}}' is not a number", s))
        .when(v.is_not_null() & ~v.is_finite())
        .then(pl.format(f"{c}: '{{}}' is not finite", s))
    )
    return v.alias(c), reason


def _parse_instant(c: str) -> tuple[pl.Expr, pl.Expr]:
    """ISO-8601 with ``Z``, ``±HH:MM``, ``±HHMM`` or ``±HH`` (fraction optional, ≤ 9 digits) -> UTC µs;
    a plain date ``YYYY-MM-DD`` -> that UTC day at :data:`PLAIN_DATE_TIME` ``[c]``."""
    s = pl.col(c)
    g = s.str.extract_groups(_INSTANT_RE)
    date, time = g.struct.field("date"), g.struct.field("time")
    plain = date.is_not_null() & time.is_null()
    day_time = PLAIN_DATE_TIME.get(c)
    tz = g.struct.field("tz")
    local = pl.concat_str(date, pl.lit("T"), time, g.struct.field("frac").fill_null(""))
    if day_time is not None:
        local = pl.when(plain).then(pl.concat_str(date, pl.lit(f"T{day_time}"))).otherwise(local)
        tz = pl.when(plain).then(pl.lit("Z")).otherwise(tz)
    naive = local.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", time_unit="us", strict=False)
    sign = pl.when(tz.str.starts_with("-")).then(-1).otherwise(1)
    digits = tz.str.replace(":", "", literal=True)
    hh, mm = (digits.str.slice(i, 2).cast(pl.Int64, strict=False) for i in (1, 3))
    mm = mm.fill_null(0)  # an offset of whole hours: +00, -05
    minutes = pl.when(tz.str.to_uppercase() == "Z").then(0).otherwise(sign * (hh * 60 + mm))
    value = (naive - pl.duration(minutes=minutes)).dt.replace_time_zone("UTC").cast(UTC_US)
    bad = pl.format(f"{c}: '{{}}' is not an ISO-8601 instant", s)
    reason = (
        pl.when(s.is_not_null() & date.is_null())
        .then(bad)
        .when(s.is_not_null() & plain & pl.lit(day_time is None))
        .then(pl.format(f"{c}: '{{}}' is a date without a time of day", s))
        .when(s.is_not_null() & tz.is_null())
        .then(pl.format(f"{c}: '{{}}' has no time zone", s))
        .when(s.is_not_null() & time.str.ends_with(":60"))
        .then(pl.format(f"{c}: '{{}}' is a leap second (:60), which a timestamp cannot hold; write :59.999", s))
        .when(s.is_not_null() & naive.is_null())
        .then(bad)
    )
    return value.alias(c), reason


def _parse_id() -> tuple[pl.Expr, pl.Expr]:
    s = pl.col("id")
    as_float = s.cast(pl.Float64, strict=False)
    whole = pl.when(as_float.is_finite() & (as_float == as_float.floor())).then(
        as_float.cast(pl.Int64, strict=False)
    )
    v = pl.coalesce(s.cast(pl.Int64, strict=False), whole)
    reason = (
        pl.when(s.is_not_null() & v.is_null())
        .then(pl.format("id: '{}' is not an integer", s))
        .when((v < _INT32[0]) | (v > _INT32[1]))
        .then(pl.format("id: '{}' is out of the 32-bit integer range", s))
    )
    return v.alias("id"), reason


def _validate(
    table: pl.DataFrame, structural: pl.DataFrame, name: str, fmt: str, missing_id: str
) -> ParseResult:
    """Turn String source columns (+ line, raw) into accepted rows and rejects (+ structural)."""
    cols = [c for c in table.columns if c not in (_LINE, _RAW, _REASON)]
    table = table.with_columns(_clean(c) for c in cols)
    order = ["id", *INSTANT_COLUMNS[:1], *NUMBER_COLUMNS, *INSTANT_COLUMNS[1:]]
    values: list[pl.Expr] = [pl.col(c) for c in cols if c not in order]  # name, symbol
    reasons: list[pl.Expr] = []
    for c in (c for c in order if c in cols):
        if c in REQUIRED_VALUES:
            msg = missing_id if c == "id" else f"{c}: missing required value"
            reasons.append(pl.when(pl.col(c).is_null()).then(pl.lit(msg)))
        parse = _parse_instant if c in INSTANT_COLUMNS else _parse_number
        value, reason = _parse_id() if c == "id" else parse(c)
        values.append(value)
        reasons.append(reason)
    checked = table.select(*values, _LINE, _RAW, pl.coalesce(reasons).alias(_REASON))
    ok = checked.filter(pl.col(_REASON).is_null())
    kept = pl.col(_LINE).max().over("id", "timestamp")
    ok = ok.with_columns(
        pl.when(pl.col(_LINE) != kept)
        .then(pl.format("duplicate (id, timestamp) in file; line {} kept", kept))
        .alias(_REASON)
    )
    parts = (f.select(_LINE, _REASON, _RAW) for f in (checked, ok, structural))
    rejects = pl.concat(parts).filter(pl.col(_REASON).is_not_null())
    accepted = ok.filter(pl.col(_REASON).is_null()).with_columns(
        pl.col("timestamp").dt.date().alias("date"), pl.lit(name).alias("source_file")
    )
    rejects = rejects.select(
        pl.lit(name).alias("source_file"),
        pl.col(_LINE).alias("line"),
        pl.col(_REASON).alias("reason"),
        pl.col(_RAW).alias("raw"),
    ).cast(REJECT_SCHEMA)  # type: ignore[arg-type]
    rows_read = table.height + structural.height
    frame = conform(accepted).sort("id", "timestamp")
    return ParseResult(frame, rejects.sort("line"), rows_read, fmt)


# --------------------------------------------------------------------------- public parsers
def parse_cmc_csv(
    path: Path, *, asset_id: int | None, name_to_id: Mapping[str, int]
) -> ParseResult:
    """Parse a CoinMarketCap ``;``-separated export (header case-insensitive, any column order).

    The id is ``asset_id`` when given, else each row's ``name`` looked up (case-insensitive,
    stripped) in ``name_to_id``. A name missing from the mapping refuses the whole file
    (InputDataError naming the file and the names) before anything is written; a row with an
    empty name (and no ``asset_id``) is rejected.
    """
    path = Path(path)
    if asset_id is not None and not _INT32[0] <= asset_id <= _INT32[1]:
        raise UsageError(f"--id: {asset_id} is not a 32-bit integer")
    table, structural = _read_text_table(path, ";", _CMC_COLUMNS, CMC_HEADER)
    if asset_id is not None:
        table = table.with_columns(pl.lit(str(asset_id)).alias("id"))
    else:
        lookup = {k.strip().lower(): v for k, v in name_to_id.items()}
        key = pl.col("name").str.strip_chars().str.to_lowercase()
        unknown = table.filter(key.is_not_null() & (key != "") & ~key.is_in(list(lookup)))
        if unknown.height:
            found = unknown.get_column("name").str.strip_chars().unique(maintain_order=True)
            raise InputDataError(
                f"{path}: unknown asset name(s) {', '.join(map(repr, found))}; the file has no id",
                hint="pass --id or add the asset to dim_assets",
            )
        ids = key.replace_strict(lookup, default=None, return_dtype=pl.Int64)
        table = table.with_columns(ids.cast(pl.String).alias("id"))
    no_id = "name: missing, cannot look up the asset id (pass --id)"
    return _validate(table, structural, path.name, "cmc", no_id)


def parse_generic(path: Path) -> ParseResult:
    """Parse a generic OHLCV file: ``.csv`` (comma-separated) or ``.parquet``, chosen by suffix.

    Required columns ``id, timestamp, open, high, low, close``; optional ``volume, market_cap``
    (or ``marketcap``), ``circulatingsupply``, ``name, symbol, timehigh, timelow, timeopen,
    timeclose``; header case-insensitive; other columns ignored. Parquet Datetime columns must be
    tz-aware (converted to UTC); a naive one refuses the file.
    """
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return _parse_parquet(path)
    table, structural = _read_text_table(path, ",", _GENERIC_COLUMNS, GENERIC_REQUIRED)
    return _validate(table, structural, path.name, "generic-csv", "id: missing required value")


def _parse_parquet(path: Path) -> ParseResult:
    if path.exists() and path.stat().st_size == 0:
        raise InputDataError(f"{path}: empty file")
    try:
        df = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputDataError(f"{path}: cannot read Parquet file ({exc})") from exc
    names = [c.strip().lower() for c in df.columns]
    picked = _select_columns(path, names, _GENERIC_COLUMNS, GENERIC_REQUIRED)
    if df.height == 0:
        raise InputDataError(f"{path}: no data rows")
    exprs: list[pl.Expr] = []
    for col, i in sorted(picked.items(), key=lambda kv: kv[1]):
        src, dtype = pl.col(df.columns[i]), df.dtypes[i]
        naive = isinstance(dtype, pl.Datetime) and dtype.time_zone is None  # a Date is a plain date
        if col in INSTANT_COLUMNS and naive:
            raise InputDataError(
                f"{path}: column {df.columns[i]!r} holds {dtype} values without a time zone; "
                "naive instants are never guessed (store them tz-aware, e.g. UTC)"
            )
        if isinstance(dtype, pl.Datetime):
            src = src.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
        exprs.append(src.cast(pl.String).alias(col))
    try:
        table = df.select(exprs)
    except pl.exceptions.PolarsError as exc:
        raise InputDataError(f"{path}: a column has an unsupported type ({exc})") from exc
    table = table.with_columns(
        pl.int_range(2, pl.len() + 2, dtype=pl.Int64).alias(_LINE),
        pl.concat_str([pl.col(c).fill_null("") for c in table.columns], separator=",").alias(_RAW),
    )
    return _validate(table, _NO_REJECTS, path.name, "generic-parquet", "id: missing required value")


def detect_format(path: Path) -> str:
    """``"cmc"`` for a ``.csv`` whose header is ``;``-separated and holds the CoinMarketCap columns,
    ``"generic-csv"`` for another ``.csv``, ``"generic-parquet"`` for ``.parquet``/``.pq``.

    InputDataError for any other suffix, an unreadable or empty file, a ``;``-separated
    header that is not the CoinMarketCap header (generic CSV is comma-separated), or the
    CoinMarketCap header separated by ``,`` without an ``id`` column.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "generic-parquet"
    if suffix != ".csv":
        raise InputDataError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; expected .csv or .parquet"
        )
    header = _first_line(path)
    if header.count(";") > header.count(","):
        names = _header_names(header, ";")
        missing = [c for c in CMC_HEADER if c.lower() not in names]
        if missing:
            raise InputDataError(
                f"{path}: ';'-separated header is not the CoinMarketCap header; missing column(s) "
                f"{', '.join(missing)} (generic CSV files must be comma-separated)"
            )
        return "cmc"
    names = _header_names(header, ",")
    if "id" not in names and all(c.lower() in names for c in CMC_HEADER):
        raise InputDataError(
            f"{path}: looks like a CoinMarketCap header with ',' — the format uses ';'",
            hint="save the file with ';' as the separator (as CoinMarketCap's download does), "
                 "or add an id column to load it as a generic CSV",
        )
    return "generic-csv"


def parse_file(
    path: Path, *, asset_id: int | None = None, name_to_id: Mapping[str, int] = MappingProxyType({})
) -> ParseResult:
    """Detect the format of ``path`` and parse it. ``asset_id`` applies only to CoinMarketCap files
    (UsageError otherwise: generic files carry their own ids)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "cmc":
        return parse_cmc_csv(path, asset_id=asset_id, name_to_id=name_to_id)
    if asset_id is not None:
        raise UsageError(
            f"--id: only valid for CoinMarketCap files; {path} is {fmt} and carries its own ids"
        )
    return parse_generic(path)
