"""Writing parsed source rows: upsert into ``cmc_price_histories7``, ``dim_assets`` and the
load rejects table. All writes go through binary COPY into a temporary stage, then one
set-based ``INSERT … ON CONFLICT`` per table.

Upsert semantics (spec 01): an identical row changes nothing (``load_ts`` untouched); a row
whose values differ is updated and gets a new ``load_ts`` (the change-detection signal of the
incremental refreshes). Provenance (``source_file``) alone is not a change.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import psycopg
from psycopg import sql

from ta_lab2.db.bulk import copy_frame, staged, table_ref
from ta_lab2.db.tables import LOAD_REJECTS, SOURCE_TABLE
from ta_lab2.load.source_schema import SOURCE_SCHEMA, SYMBOL_COLUMN, VALUE_COLUMNS


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    unchanged: int

    def __add__(self, other: "UpsertCounts") -> "UpsertCounts":
        return UpsertCounts(self.inserted + other.inserted, self.updated + other.updated, self.unchanged + other.unchanged)


def name_to_id(conn: psycopg.Connection, schema: str = "public") -> dict[str, int]:
    """Lower-cased asset name and symbol -> id, from ``dim_assets`` (for CoinMarketCap files)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT lower(btrim(name)), id FROM {t} WHERE name IS NOT NULL "
            "UNION ALL SELECT lower(btrim(symbol)), id FROM {t} WHERE symbol IS NOT NULL"
        ).format(t=sql.Identifier(schema, "dim_assets"))
    ).fetchall()
    return {key: ident for key, ident in rows}


def stored_labels(conn: psycopg.Connection, ids: list[int], schema: str = "public") -> dict[int, tuple[str | None, str | None]]:
    """``id -> (name, symbol)`` of the ``ids`` that ``dim_assets`` already has."""
    rows = conn.execute(
        sql.SQL("SELECT id, name, symbol FROM {t} WHERE id = ANY(%s)").format(t=sql.Identifier(schema, "dim_assets")),
        (ids,),
    ).fetchall()
    return {ident: (name, symbol) for ident, name, symbol in rows}


def upsert_source(conn: psycopg.Connection, frame: pl.DataFrame, schema: str = "public") -> UpsertCounts:
    """Upsert ``frame`` (SOURCE_SCHEMA, unique on (id, timestamp)) inside the caller's transaction."""
    if frame.is_empty():
        return UpsertCounts(0, 0, 0)
    cols = list(SOURCE_SCHEMA)
    value_cols = [sql.Identifier(c) for c in VALUE_COLUMNS]
    stmt = sql.SQL(
        """
        WITH up AS (
            INSERT INTO {t} AS t ({cols}, load_ts)
            SELECT {cols}, now() FROM {st}
            ON CONFLICT (id, "timestamp") DO UPDATE SET {assign}, load_ts = now()
            WHERE ({old}) IS DISTINCT FROM ({new})
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up
        """
    )
    with staged(conn, table_ref(SOURCE_TABLE, schema), frame.select(cols)) as stage:
        row = conn.execute(
            stmt.format(
                t=sql.Identifier(schema, SOURCE_TABLE),
                st=stage,
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                assign=sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols if c not in ("id", "timestamp")
                ),
                old=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in value_cols),
                new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(c) for c in value_cols),
            )
        ).fetchone()
    inserted, updated = (int(row[0]), int(row[1])) if row else (0, 0)
    return UpsertCounts(inserted, updated, frame.height - inserted - updated)


def upsert_assets(conn: psycopg.Connection, frame: pl.DataFrame, schema: str = "public") -> int:
    """One ``dim_assets`` row per id in ``frame``; known ids keep their values unless the file
    brings a name/symbol they lack. Returns the number of new ids."""
    if frame.is_empty():
        return 0
    symbol = pl.col(SYMBOL_COLUMN) if SYMBOL_COLUMN in frame.columns else pl.lit(None, pl.String)
    assets = (
        frame.select(pl.col("id"), symbol.alias("symbol"), pl.col("name"))
        .group_by("id")
        .agg(pl.col("symbol").drop_nulls().last(), pl.col("name").drop_nulls().last())
        .sort("id")
    )
    with staged(conn, table_ref("dim_assets", schema), assets) as stage:
        row = conn.execute(
            sql.SQL(
                """
                WITH up AS (
                    INSERT INTO {t} AS a (id, symbol, name) SELECT id, symbol, name FROM {st}
                    ON CONFLICT (id) DO UPDATE
                        SET symbol = COALESCE(a.symbol, EXCLUDED.symbol), name = COALESCE(a.name, EXCLUDED.name)
                        WHERE (a.symbol IS NULL AND EXCLUDED.symbol IS NOT NULL)
                           OR (a.name IS NULL AND EXCLUDED.name IS NOT NULL)
                    RETURNING (xmax = 0) AS inserted
                )
                SELECT count(*) FILTER (WHERE inserted) FROM up
                """
            ).format(t=sql.Identifier(schema, "dim_assets"), st=stage)
        ).fetchone()
    return int(row[0]) if row else 0


def record_rejects(conn: psycopg.Connection, rejects: pl.DataFrame, schema: str = "public") -> int:
    """Keep every rejected input row with its reason (nothing vanishes)."""
    if rejects.is_empty():
        return 0
    return copy_frame(conn, table_ref(LOAD_REJECTS, schema), rejects.select("source_file", "line", "reason", "raw"))
