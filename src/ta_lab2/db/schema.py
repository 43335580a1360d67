"""Idempotent schema management (spec 01 "Schema management", 02, 03).

:func:`ensure_schema` creates every table, index, constraint, trigger and seeded dimension
row that is missing and leaves everything present alone; it records the schema version and
refuses a database whose version is newer than this code understands.

Longer than the ~400 lines a module should be: about 300 of them are the DDL itself, one
statement per table family, kept together so the whole schema reads in one place.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from ta_lab2 import __version__
from ta_lab2.db.tables import (
    ANCHORED_BAR_TABLES,
    BAR_TABLES,
    BARS_1D,
    BARS_1D_DELETIONS,
    BARS_1D_REJECTS,
    DUAL_EMA_TABLES,
    EMA_TABLES,
    LOAD_REJECTS,
    SOURCE_TABLE,
    state_table,
)
from ta_lab2.errors import DatabaseError
from ta_lab2.timeframes import DEFAULT_PERIODS, seed_timeframes

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6  # 2: cmc_price_bars_1d_deletions; 3: bar tables indexed by (id, ingested_at); 4: the 1D table too;
#                     5: EMA state rows keep their series' ends; 6: a trigger stamps load_ts on every source update
VERSION_TABLE = "ta_lab2_schema_version"
SCHEMA_LOCK_KEY = 0x7A_1AB2_0001  # advisory lock serialising concurrent `init`s

#: A source row's values: the same columns, in the same order, in the source and its rejects table.
_SOURCE_VALUES_DDL = """    open double precision,
    high double precision,
    low double precision,
    close double precision,
    volume double precision,
    marketcap double precision,
    circulatingsupply double precision,
    date date,
    source_file text,
"""

_SOURCE_DDL = f"""
CREATE TABLE IF NOT EXISTS {{s}}.{SOURCE_TABLE} (
    id integer NOT NULL,
    name text,
    timeopen timestamptz,
    timeclose timestamptz,
    timehigh timestamptz,
    timelow timestamptz,
    "timestamp" timestamptz NOT NULL,
{_SOURCE_VALUES_DDL}    load_ts timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp")
);
CREATE INDEX IF NOT EXISTS {SOURCE_TABLE}_load_ts_idx ON {{s}}.{SOURCE_TABLE} (id, load_ts);

-- load_ts is the change signal of every incremental refresh and of a capture's root causes:
-- any UPDATE that changes a source row stamps it, also one made by hand in SQL. The clock,
-- not the transaction start: a long transaction must not stamp a row below the watermark a
-- refresh recorded while it ran.
CREATE OR REPLACE FUNCTION {{s}}.ta_lab2_stamp_load_ts() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.load_ts := clock_timestamp();
    RETURN NEW;
END
$fn$;
CREATE OR REPLACE TRIGGER {SOURCE_TABLE}_stamp_load_ts
    BEFORE UPDATE ON {{s}}.{SOURCE_TABLE}
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION {{s}}.ta_lab2_stamp_load_ts();

CREATE TABLE IF NOT EXISTS {{s}}.dim_assets (
    id integer PRIMARY KEY,
    symbol text,
    name text,
    asset_class text NOT NULL DEFAULT 'CRYPTO',
    created_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS {{s}}.{LOAD_REJECTS} (
    reject_id bigserial PRIMARY KEY,
    source_file text NOT NULL,
    line bigint,
    reason text NOT NULL,
    raw text,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
"""

_DIM_DDL = """
CREATE TABLE IF NOT EXISTS {s}.dim_timeframe (
    tf text PRIMARY KEY,
    label text,
    family text NOT NULL CHECK (family IN ('1d', 'rolling', 'cal', 'cal_anchor')),
    base_unit text NOT NULL CHECK (base_unit IN ('D', 'W', 'M', 'Y')),
    tf_qty integer NOT NULL CHECK (tf_qty > 0),
    tf_days_nominal integer NOT NULL CHECK (tf_days_nominal > 0),
    calendar_scheme text CHECK (calendar_scheme IN ('US', 'ISO')),
    calendar_anchor boolean NOT NULL DEFAULT false,
    allow_partial_start boolean NOT NULL DEFAULT false,
    allow_partial_end boolean NOT NULL DEFAULT true,
    tf_days_min integer,
    tf_days_max integer,
    is_canonical boolean NOT NULL DEFAULT false,
    sort_order integer,
    description text
);

CREATE TABLE IF NOT EXISTS {s}.dim_period (
    period integer PRIMARY KEY CHECK (period > 0),
    label text
);

CREATE TABLE IF NOT EXISTS {s}.ema_alpha_lookup (
    tf text NOT NULL,
    period integer NOT NULL,
    tf_days_nominal integer NOT NULL,
    alpha_bar double precision NOT NULL,
    alpha_ema_dailyspace double precision NOT NULL,
    alpha_bar_preview_daily double precision NOT NULL,
    PRIMARY KEY (tf, period)
);

-- ema_alpha_lookup is derived: one row per dim_timeframe x dim_period, re-synced by
-- statement triggers whenever either dimension changes. Divisions are float8 (IEEE, the same
-- result Python's 2/(p+1) gives), never numeric.
CREATE OR REPLACE FUNCTION {s}.ta_lab2_sync_ema_alpha_lookup() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM {s}.ema_alpha_lookup l
    WHERE NOT EXISTS (SELECT 1 FROM {s}.dim_timeframe t WHERE t.tf = l.tf)
       OR NOT EXISTS (SELECT 1 FROM {s}.dim_period p WHERE p.period = l.period);
    INSERT INTO {s}.ema_alpha_lookup AS l
        (tf, period, tf_days_nominal, alpha_bar, alpha_ema_dailyspace, alpha_bar_preview_daily)
    SELECT t.tf, p.period, t.tf_days_nominal,
           2.0::float8 / (p.period + 1),
           2.0::float8 / (t.tf_days_nominal::float8 * p.period + 1),
           1.0::float8 - power(1.0::float8 - 2.0::float8 / (p.period + 1), 1.0::float8 / t.tf_days_nominal)
    FROM {s}.dim_timeframe t CROSS JOIN {s}.dim_period p
    ON CONFLICT (tf, period) DO UPDATE SET
        tf_days_nominal = EXCLUDED.tf_days_nominal,
        alpha_bar = EXCLUDED.alpha_bar,
        alpha_ema_dailyspace = EXCLUDED.alpha_ema_dailyspace,
        alpha_bar_preview_daily = EXCLUDED.alpha_bar_preview_daily
    WHERE (l.tf_days_nominal, l.alpha_bar, l.alpha_ema_dailyspace, l.alpha_bar_preview_daily)
          IS DISTINCT FROM (EXCLUDED.tf_days_nominal, EXCLUDED.alpha_bar,
                            EXCLUDED.alpha_ema_dailyspace, EXCLUDED.alpha_bar_preview_daily);
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER dim_timeframe_sync_alpha
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {s}.dim_timeframe
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.ta_lab2_sync_ema_alpha_lookup();
CREATE OR REPLACE TRIGGER dim_period_sync_alpha
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {s}.dim_period
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.ta_lab2_sync_ema_alpha_lookup();
"""

#: A bar's instants and OHLCV values: the same columns, in the same order, in every bar table.
_BAR_VALUES_DDL = """    time_open timestamptz NOT NULL,
    time_close timestamptz NOT NULL,
    time_high timestamptz NOT NULL,
    time_low timestamptz NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision,
    market_cap double precision,
"""

_BARS_1D_DDL = f"""
CREATE TABLE IF NOT EXISTS {{s}}.{BARS_1D} (
    id integer NOT NULL,
    tf text NOT NULL DEFAULT '1D',
    bar_seq integer NOT NULL,
    "timestamp" timestamptz NOT NULL,
{_BAR_VALUES_DDL}    is_partial_start boolean NOT NULL DEFAULT false,
    is_partial_end boolean NOT NULL DEFAULT false,
    is_missing_days boolean NOT NULL DEFAULT false,
    repaired_timehigh boolean NOT NULL DEFAULT false,
    repaired_timelow boolean NOT NULL DEFAULT false,
    repaired_high boolean NOT NULL DEFAULT false,
    repaired_low boolean NOT NULL DEFAULT false,
    src_name text,
    src_file text,
    src_load_ts timestamptz,
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp"),
    UNIQUE (id, tf, bar_seq)
);
-- what an incremental bar build asks first: what was written since its watermark, the newest write
CREATE INDEX IF NOT EXISTS {BARS_1D}_ingested_idx ON {{s}}.{BARS_1D} (id, ingested_at) INCLUDE ("timestamp");

CREATE TABLE IF NOT EXISTS {{s}}.{BARS_1D_REJECTS} (
    id integer NOT NULL,
    "timestamp" timestamptz NOT NULL,
    bar_seq integer NOT NULL,
    name text,
    timeopen timestamptz,
    timeclose timestamptz,
    timehigh timestamptz,
    timelow timestamptz,
{_SOURCE_VALUES_DDL}    load_ts timestamptz,
    reason text NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp")
);

-- Deletion log of the 1D table: readers (bar builders, EMA refreshers) find "a day left the
-- grid after my watermark" with a point lookup instead of an anti-join over their own rows.
CREATE TABLE IF NOT EXISTS {{s}}.{BARS_1D_DELETIONS} (
    id integer NOT NULL,
    from_ts timestamptz NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, deleted_at)
);

CREATE TABLE IF NOT EXISTS {{s}}.{state_table(BARS_1D)} (
    id integer PRIMARY KEY,
    tz text NOT NULL,
    watermark_load_ts timestamptz,
    source_rows integer NOT NULL,
    first_day date,
    last_day date,
    last_bar_seq integer,
    last_time_close timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

_MULTI_TF_DDL = """
CREATE TABLE IF NOT EXISTS {s}.{t} (
    id integer NOT NULL,
    tf text NOT NULL,
    tf_days integer NOT NULL,
    bar_seq integer NOT NULL,
""" + _BAR_VALUES_DDL + """    "timestamp" timestamptz NOT NULL,
    last_ts_half_open timestamptz NOT NULL,
    pos_in_bar integer NOT NULL,
    is_partial_start boolean NOT NULL,
    is_partial_end boolean NOT NULL,
    is_missing_days boolean NOT NULL,
    count_days integer NOT NULL,
    count_days_remaining integer NOT NULL,
    count_missing_days integer NOT NULL,
    count_missing_days_start integer NOT NULL,
    count_missing_days_end integer NOT NULL,
    count_missing_days_interior integer NOT NULL,
    missing_days_where text,
    first_missing_day date,
    last_missing_day date,
    ingested_at timestamptz NOT NULL DEFAULT now(),{extra}
    PRIMARY KEY (id, tf, bar_seq, time_close)
);
CREATE UNIQUE INDEX IF NOT EXISTS {t}_canon_close_uq ON {s}.{t} (id, tf, time_close) WHERE NOT is_partial_end;
CREATE UNIQUE INDEX IF NOT EXISTS {t}_canon_bar_uq ON {s}.{t} (id, tf, bar_seq) WHERE NOT is_partial_end;
-- what an EMA refresh asks first: which bars were written since its watermark (index-only)
CREATE INDEX IF NOT EXISTS {t}_ingested_idx ON {s}.{t} (id, ingested_at) INCLUDE (tf, time_close);

CREATE TABLE IF NOT EXISTS {s}.{t}_state (
    id integer NOT NULL,
    tf text NOT NULL,
    watermark_ingested_at timestamptz,
    first_day date,
    last_day date,
    last_bar_seq integer,
    last_time_close timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, tf)
);
"""

_EMA_DDL = """
CREATE TABLE IF NOT EXISTS {s}.{t} (
    id integer NOT NULL,
    tf text NOT NULL,
    ts timestamptz NOT NULL,
    period integer NOT NULL,
    tf_days integer NOT NULL,
    roll boolean NOT NULL,
    ema double precision NOT NULL,
    d1 double precision,
    d2 double precision,
    d1_roll double precision,
    d2_roll double precision,{extra}
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, tf, period, ts)
);
CREATE UNIQUE INDEX IF NOT EXISTS {t}_canon_uq ON {s}.{t} (id, tf, period, ts) WHERE NOT roll;

CREATE TABLE IF NOT EXISTS {s}.{t}_state (
    id integer NOT NULL,
    tf text NOT NULL,
    period integer NOT NULL,
    watermark_ingested_at timestamptz,
    last_ts timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, tf, period)
);
-- the series' ends (schema version 5): its newest row and newest canonical row, what an
-- appended day's rows are computed from (NULL: unknown, the series is recomputed); pages half
-- full, so that the daily update of every row stays on its page (HOT: no key index entry)
{ends}"""

#: (column, type) of an EMA series' ends in its state row; the dual tables add DUAL_EMA_ENDS
EMA_ENDS = (("last_ema", "double precision"), ("last_d1_roll", "double precision"), ("canon_ts", "timestamptz"),
         ("canon_ema", "double precision"), ("canon_d1", "double precision"))
DUAL_EMA_ENDS = (("last_ema_bar", "double precision"), ("last_d1_roll_bar", "double precision"),
              ("canon_ema_bar", "double precision"), ("canon_d1_bar", "double precision"))


def _ends_ddl(s: str, t: str, dual: bool) -> str:
    """ADD COLUMN IF NOT EXISTS: creates the ends on a new state table and on one of version 4."""
    cols = EMA_ENDS + (DUAL_EMA_ENDS if dual else ())
    return (f"ALTER TABLE {s}.{t}_state SET (fillfactor = 50), "
            + ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {ty}" for c, ty in cols) + ";\n")

_DUAL_EMA_EXTRA = """
    ema_bar double precision,
    d1_bar double precision,
    d2_bar double precision,
    roll_bar boolean,
    d1_roll_bar double precision,
    d2_roll_bar double precision,"""

_BASELINE_DDL = """
CREATE TABLE IF NOT EXISTS {s}.baseline_snapshots (
    suffix text PRIMARY KEY,
    captured_at timestamptz NOT NULL,
    status text NOT NULL,
    ids integer[],
    scratch_schema text,
    aux_schema text NOT NULL,
    tables jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    message text,
    verdict text,
    report text,
    metadata jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

_VERSION_DDL = f"""
CREATE TABLE IF NOT EXISTS {{s}}.{VERSION_TABLE} (
    version integer PRIMARY KEY,
    package_version text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def _ddl(schema: str) -> list[str]:
    s = f'"{schema}"'
    parts = [_VERSION_DDL.format(s=s), _SOURCE_DDL.format(s=s), _DIM_DDL.format(s=s), _BARS_1D_DDL.format(s=s),
             _BASELINE_DDL.format(s=s)]
    parts += [family_ddl(schema, table) for table in (*list(BAR_TABLES.values())[1:], *EMA_TABLES.values())]
    return parts


def family_ddl(schema: str, table: str) -> str:
    """The DDL of one multi-timeframe bar table or EMA table and its state table, with the
    index and constraint names ``ensure_schema`` gives them (a shadow table built from it can
    take the real one's place)."""
    s = f'"{schema}"'
    if table in list(BAR_TABLES.values())[1:]:
        extra = "\n    bar_anchor_offset integer NOT NULL," if table in ANCHORED_BAR_TABLES else ""
        return _MULTI_TF_DDL.format(s=s, t=table, extra=extra)
    if table in EMA_TABLES.values():
        dual = table in DUAL_EMA_TABLES
        return _EMA_DDL.format(s=s, t=table, extra=_DUAL_EMA_EXTRA if dual else "", ends=_ends_ddl(s, table, dual))
    raise ValueError(f"{table} is not a multi-timeframe bar table or an EMA table")


def _table_names() -> list[str]:
    """Every table the DDL creates (read from the DDL, so the list cannot drift)."""
    import re

    return re.findall(r'CREATE TABLE IF NOT EXISTS "[^"]+"\.(\w+)', "\n".join(_ddl("x")))


def schema_version(conn: psycopg.Connection, schema: str = "public") -> int | None:
    """The recorded schema version, or None when the database has never been initialised."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".{VERSION_TABLE}',)).fetchone()
    if not exists or exists[0] is None:
        return None
    row = conn.execute(
        sql.SQL("SELECT max(version) FROM {}").format(sql.Identifier(schema, VERSION_TABLE))
    ).fetchone()
    return row[0] if row else None


def check_version(conn: psycopg.Connection, schema: str = "public") -> int | None:
    version = schema_version(conn, schema)
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseError(
            f"the database schema is version {version}, newer than this ta_lab2 "
            f"({__version__}) understands (version {SCHEMA_VERSION})",
            hint="upgrade ta_lab2 (pip install -U ta_lab2); nothing was changed",
        )
    return version


def ensure_schema(conn: psycopg.Connection, schema: str = "public", *, repair: bool = False) -> bool:
    """Create what is missing, in one transaction. Returns True if anything was created.

    Safe to run concurrently (an advisory lock serialises it) and any number of times. When
    the schema is at the current version and every table exists, nothing is executed unless
    ``repair`` (``ta-lab2 init``): the DDL would otherwise queue behind a bulk rebuild's lock
    on a table and serialise runners that have nothing to create.
    """
    if not repair:
        with conn.transaction():
            current = schema_version(conn, schema) == SCHEMA_VERSION
            names = [f'"{schema}"."{t}"' for t in _table_names()]
            missing = conn.execute("SELECT count(*) FROM unnest(%s::text[]) n WHERE to_regclass(n) IS NULL",
                                   (names,)).fetchone()[0]
        if current and not missing:
            return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        before = check_version(conn, schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        tables_before = _count_objects(conn, schema)
        # NOTICEs ("relation already exists, skipping") are expected noise on re-runs.
        conn.execute("SET LOCAL client_min_messages = warning")
        for statement in _ddl(schema):
            conn.execute(statement)
        seeded = _seed_dimensions(conn, schema)
        if before is None or before < SCHEMA_VERSION:
            conn.execute(
                sql.SQL("INSERT INTO {} (version, package_version) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(schema, VERSION_TABLE)
                ),
                (SCHEMA_VERSION, __version__),
            )
        created = _count_objects(conn, schema) != tables_before or seeded > 0 or before is None
    return created


def _count_objects(conn: psycopg.Connection, schema: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (schema,),
    ).fetchone()
    return int(row[0]) if row else 0


def _seed_dimensions(conn: psycopg.Connection, schema: str) -> int:
    """Insert seeded dimension rows that are missing; rows already present are left alone
    (a user's edit to a seeded row survives ``init``). Returns the number inserted."""
    # imported here: a command that only reads the schema (status, baseline list, a usage
    # error) then starts without polars and numpy (~0.15 s of every such invocation)
    import polars as pl

    from ta_lab2.db.bulk import staged, table_ref

    inserted = 0
    timeframes = pl.DataFrame([tf.as_row() for tf in seed_timeframes()])
    periods = pl.DataFrame({"period": list(DEFAULT_PERIODS), "label": [f"{p}" for p in DEFAULT_PERIODS]})
    for table, frame, key in (("dim_timeframe", timeframes, "tf"), ("dim_period", periods, "period")):
        target = sql.Identifier(schema, table)
        with staged(conn, table_ref(table, schema), frame) as stage:
            cur = conn.execute(
                sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM {st} ON CONFLICT ({k}) DO NOTHING").format(
                    t=target, st=stage, k=sql.Identifier(key),
                    cols=sql.SQL(", ").join(map(sql.Identifier, frame.columns)),
                )
            )
            inserted += cur.rowcount
    return inserted
