"""Shared helpers for bar tests: run the builders, copy a source into a scratch schema,
compare two schemas' tables column by column (everything but ``ingested_at``)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ta_lab2.bars.build import build
from ta_lab2.bars.registry import BUILDERS
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.emas.refresh import refresh
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig

BAR_TABLES = [b.table for b in BUILDERS.values()]
EMA_TABLES = [r.table for r in REFRESHERS.values()]
TEST_PERIODS = (2, 3, 5, 10)  # small periods keep the tests fast and still exercise every rule
VOLATILE = {"ingested_at", "rejected_at", "updated_at"}


def build_all(conn: psycopg.Connection, *, full: bool, schema: str = "public", tz: str = "UTC") -> None:
    for name in BUILDERS:
        build(conn, name, None, full_rebuild=full, tz=tz, schema=schema)


def refresh_all(conn: psycopg.Connection, *, full: bool, schema: str = "public",
                periods: tuple[int, ...] = TEST_PERIODS) -> None:
    for name in REFRESHERS:
        refresh(conn, name, None, full_refresh=full, periods=periods, schema=schema)


def built_pipeline(db: Target, config: SyntheticConfig, periods: tuple[int, ...]) -> Target:
    """``db`` with the synthetic universe of ``config`` loaded and all 12 tables built in full
    (EMAs for ``periods``): the starting point of the capture tests."""
    with connect(db, autocommit=True) as conn:
        load_synthetic(conn, config)
        build_all(conn, full=True)
        refresh_all(conn, full=True, periods=periods)
    return db


def clone_source(conn: psycopg.Connection, src: str, dst: str) -> None:
    """A fresh schema ``dst`` holding the same source rows and assets as ``src``."""
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(dst)))
    ensure_schema(conn, dst)
    for table in ("dim_assets", "cmc_price_histories7"):
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(dst, table), sql.Identifier(src, table)))


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    return [r[0] for r in rows if r[0] not in VOLATILE]


def diff_tables(conn: psycopg.Connection, a: str, b: str, table: str, limit: int = 5) -> list[str]:
    """Rows of ``a.table`` missing from ``b.table`` and vice versa (multiset difference)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, table_columns(conn, a, table)))
    problems = []
    for x, y in ((a, b), (b, a)):
        rows = conn.execute(
            sql.SQL("SELECT {c} FROM {x} EXCEPT ALL SELECT {c} FROM {y} LIMIT {n}").format(
                c=cols, x=sql.Identifier(x, table), y=sql.Identifier(y, table), n=sql.Literal(limit)
            )
        ).fetchall()
        problems += [f"{table}: only in {x}: {r}" for r in rows]
    return problems


def diff_schemas(conn: psycopg.Connection, a: str, b: str, tables: list[str] | None = None) -> list[str]:
    out: list[str] = []
    for table in tables or [*BAR_TABLES, "cmc_price_bars_1d_rejects"]:
        out += diff_tables(conn, a, b, table)
    return out
