"""``--scratch-schema``: a rebuild into a schema of its own, never the live tables.

A capture only ever drops a schema it created itself and marked as its own (a comment on the
schema). Preflight refuses, before anything changes: a name that is not a plain lower-case
identifier, ``public``, PostgreSQL's system schemas, any ``baseline_*`` name (a capture's
auxiliary copies live there), and any existing schema that is not a scratch schema of ours.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ta_lab2.db.schema import ensure_schema
from ta_lab2.errors import UsageError
from ta_lab2.flags import check_schema_name

MARK = "ta_lab2 scratch schema"
#: what the scratch schema receives from the live one before the rebuild
COPIED = ("dim_assets", "cmc_price_histories7", "dim_timeframe", "dim_period")


def check_scratch(conn: psycopg.Connection, name: str) -> str:
    """Preflight: ``name`` may be used (created, or dropped and recreated) as a scratch schema."""
    check_schema_name(name, "--scratch-schema")
    if name == "public" or name.startswith("baseline_") or name == "information_schema" or name.startswith("pg_"):
        raise UsageError(f"--scratch-schema: {name!r} is reserved (public, system and baseline_* schemas never are "
                         "scratch schemas)", hint="name a new schema, e.g. --scratch-schema ta_lab2_scratch")
    row = conn.execute("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
                       (name,)).fetchone()
    if row is not None and not (row[0] or "").startswith(MARK):
        raise UsageError(f"--scratch-schema: schema {name!r} already exists and is not a scratch schema of ta_lab2; "
                         "it is never dropped", hint="name a schema that does not exist yet")
    return name


def prepare_scratch(conn: psycopg.Connection, name: str, suffix: str) -> None:
    """(Re)create scratch schema ``name`` — dropping it only if it is marked as ours — with the
    same source, assets and dimensions as the live schema, and mark it."""
    check_scratch(conn, name)
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(sql.Identifier(name),
                                                                  sql.Literal(f"{MARK} (capture {suffix})")))
    ensure_schema(conn, name)
    with conn.transaction():
        for table in COPIED:
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(name, table)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(name, table),
                                                                           sql.Identifier("public", table)))
