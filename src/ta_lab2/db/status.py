"""What is in the database: per table rows, ids, first/last day and state age (``ta-lab2 status``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ta_lab2.db.schema import SCHEMA_VERSION, schema_version
from ta_lab2.db.tables import BARS_1D_REJECTS, LOAD_REJECTS, PIPELINE_TABLES, SOURCE_TABLE, state_table

#: table -> the column that orders its rows in time
_TIME_COLUMN = {SOURCE_TABLE: "timestamp", BARS_1D_REJECTS: "timestamp", LOAD_REJECTS: "rejected_at"}


def _time_column(table: str) -> str:
    if table in _TIME_COLUMN:
        return _TIME_COLUMN[table]
    if table.startswith("cmc_ema_"):
        return "ts"
    return "time_close" if table != "cmc_price_bars_1d" else "timestamp"


@dataclass(frozen=True)
class TableStatus:
    table: str
    exists: bool
    rows: int = 0
    ids: int = 0
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    state_updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class DatabaseStatus:
    location: str  # redacted
    server_version: str
    schema_version: int | None
    code_schema_version: int
    tables: tuple[TableStatus, ...]

    @property
    def initialized(self) -> bool:
        return self.schema_version is not None


STATUS_TABLES: tuple[str, ...] = (SOURCE_TABLE, "dim_assets", LOAD_REJECTS, BARS_1D_REJECTS, *PIPELINE_TABLES)


def collect_status(conn: psycopg.Connection, location: str, schema: str = "public") -> DatabaseStatus:
    version = schema_version(conn, schema)
    server = conn.execute("SHOW server_version").fetchone()
    tables = tuple(_table_status(conn, schema, t) for t in STATUS_TABLES)
    return DatabaseStatus(location, str(server[0]) if server else "?", version, SCHEMA_VERSION, tables)


def _exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)).fetchone()
    return bool(row and row[0])


def _table_status(conn: psycopg.Connection, schema: str, table: str) -> TableStatus:
    if not _exists(conn, schema, table):
        return TableStatus(table, False)
    ident = sql.Identifier(schema, table)
    if table == "dim_assets":
        row = conn.execute(sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}").format(ident)).fetchone()
        return TableStatus(table, True, int(row[0]), int(row[1])) if row else TableStatus(table, True)
    tcol = sql.Identifier(_time_column(table))
    ids = sql.SQL("count(DISTINCT id)") if table != LOAD_REJECTS else sql.SQL("0")
    row = conn.execute(
        sql.SQL("SELECT count(*), {ids}, min({t})::date, max({t})::date FROM {tbl}").format(ids=ids, t=tcol, tbl=ident)
    ).fetchone()
    state_at = None
    state = state_table(table)
    if table in PIPELINE_TABLES and _exists(conn, schema, state):
        got = conn.execute(sql.SQL("SELECT max(updated_at) FROM {}").format(sql.Identifier(schema, state))).fetchone()
        state_at = got[0] if got else None
    assert row is not None
    return TableStatus(table, True, int(row[0]), int(row[1]), row[2], row[3], state_at)
