"""The shadow rebuild behind a Dask full rebuild (:mod:`ta_lab2.db.shadow`), its units run in
this process: the swapped-in table equals the local executor's bulk rebuild, a failed run
leaves no schema behind and the old table as it was, and a unit of an abandoned run creates
nothing, and what a killed run left is dropped by the next one. (tests/test_dask.py runs the
same path on a real cluster.)"""

from __future__ import annotations

import pytest
from psycopg import sql

from bars_helpers import build_all, built_pipeline, table_columns
from ta_lab2.bars.build import BuildOptions, build_batch
from ta_lab2.bars.registry import BUILDERS, load_timeframes
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema
from ta_lab2.db.shadow import SHADOW_PREFIX, Shadow, fill_unit, shadow_rebuild, sweep_abandoned
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = pytest.mark.db

TABLE = BUILDERS["cal_us"].table


@pytest.fixture(scope="module")
def pipeline(db: Target) -> Target:
    return built_pipeline(db, SyntheticConfig(n_assets=3, days=120, seed=17, gap_rate=0.03), (3, 5))


def _shadows(conn) -> list[str]:  # type: ignore[no-untyped-def]  # noqa: ANN001
    return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                                       (SHADOW_PREFIX,)).fetchall()]


def _content(conn, table: str) -> list[tuple]:  # type: ignore[no-untyped-def]  # noqa: ANN001
    cols = sql.SQL(", ").join(map(sql.Identifier, table_columns(conn, "public", table)))
    return conn.execute(sql.SQL("SELECT {c} FROM {t} ORDER BY {c}").format(c=cols, t=sql.Identifier(table))).fetchall()


def _definition(conn, schema: str, table: str) -> tuple:  # type: ignore[no-untyped-def]  # noqa: ANN001
    """What a table is, as the catalog says, with its schema's name taken out."""
    rel = f'"{schema}"."{table}"'
    columns = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
        "a.attcollation FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (rel,)).fetchall()
    # NOT NULLs are in the columns; PostgreSQL 18 also names them, with a numbered suffix when a
    # long name collides with one already in the schema, which differs between schemas
    constraints = sorted(conn.execute(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s) "
        "AND contype <> 'n'", (rel,)).fetchall())
    indexes = sorted(r[0].replace(f"{schema}.", "") for r in conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = to_regclass(%s)", (rel,)).fetchall())
    options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = to_regclass(%s)", (rel,)).fetchone()
    return columns, constraints, indexes, options


def _options(conn) -> BuildOptions:  # type: ignore[no-untyped-def]  # noqa: ANN001
    tfs = load_timeframes(conn, BUILDERS["cal_us"], False, "public")
    return BuildOptions("cal_us", tuple(tfs), "UTC", True, "public")


def test_units_in_tables_of_their_own_swap_in_the_bulk_rebuilds_table(pipeline: Target) -> None:
    with connect(pipeline, autocommit=True) as conn:
        build_all(conn, full=True)  # the local executor's bulk rebuild: the expected table
        expected = _content(conn, TABLE), _content(conn, f"{TABLE}_state")
        ids = [r[0] for r in conn.execute("SELECT id FROM dim_assets ORDER BY id").fetchall()]
        units = [ids[:1], ids[1:]]
        with shadow_rebuild(conn, "public", TABLE) as shadow:
            unit = shadow.units(build_batch)
            for ids_ in units:
                unit(conn, _options(conn), ids_)
            unit(conn, _options(conn), units[0])  # a unit run again (its worker died): nothing doubles
            assert len(_shadows(conn)) == 1 + len(units)
        assert (_content(conn, TABLE), _content(conn, f"{TABLE}_state")) == expected
        assert _shadows(conn) == []
        indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s", (TABLE,)).fetchone()[0]
        assert indexes >= 2  # the primary key and the other indexes, built at the swap
        # the swapped-in tables are defined as the schema's own: columns, NOT NULLs, defaults,
        # constraints, indexes, storage options
        ensure_schema(conn, "ddl_ref")
        for table in (TABLE, f"{TABLE}_state"):
            assert _definition(conn, "public", table) == _definition(conn, "ddl_ref", table)
        conn.execute("DROP SCHEMA ddl_ref CASCADE")


def test_a_failed_run_leaves_the_old_table_and_no_schema(pipeline: Target) -> None:
    with connect(pipeline, autocommit=True) as conn:
        before = _content(conn, TABLE)
        ids = [r[0] for r in conn.execute("SELECT id FROM dim_assets ORDER BY id").fetchall()]
        with pytest.raises(RuntimeError, match="a unit failed"):
            with shadow_rebuild(conn, "public", TABLE) as shadow:
                shadow.units(build_batch)(conn, _options(conn), ids[:1])
                raise RuntimeError("a unit failed")
        assert _shadows(conn) == [] and _content(conn, TABLE) == before


def test_a_unit_of_an_abandoned_run_creates_nothing(pipeline: Target) -> None:
    with connect(pipeline, autocommit=True) as conn:
        gone = Shadow(f"{SHADOW_PREFIX}000000000000", "public", TABLE, ())
        with pytest.raises(RuntimeError, match="abandoned"):
            fill_unit(gone, build_batch, conn, _options(conn), [9_000_001])
        assert _shadows(conn) == []


def test_what_a_killed_run_left_is_dropped_by_the_next_and_a_live_run_is_left_alone(
        pipeline: Target, caplog: pytest.LogCaptureFixture) -> None:
    ids = [9_000_001]
    late_unit = f"{SHADOW_PREFIX}0123456789ab_u1"
    with connect(pipeline, autocommit=True) as conn, connect(pipeline, autocommit=True) as alive_conn:
        before = _content(conn, TABLE)
        # a run still alive, between two of its units
        with shadow_rebuild(alive_conn, "public", TABLE) as alive:
            alive.units(build_batch)(alive_conn, _options(alive_conn), ids)
            # a run whose process dies after a unit has written: its connection ends, its
            # schemas stay
            killed = connect(pipeline, autocommit=True)
            dead_run = shadow_rebuild(killed, "public", TABLE)  # kept: closing it would clean up
            dead = dead_run.__enter__()
            dead.units(build_batch)(killed, _options(killed), ids)
            # its backend ended by the server, which waits until it has (a client's close
            # returns before the backend exits and lets go of the run's lock)
            assert conn.execute("SELECT pg_terminate_backend(%s, 60000)", (killed.info.backend_pid,)).fetchone()[0]
            killed.close()
            # a unit of an ended run, committed late by a worker thought dead: its mark is gone
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(late_unit)))
            assert set(_shadows(conn)) == {dead.name, dead.unit_schema(ids), alive.name, alive.unit_schema(ids),
                                           late_unit}
            with caplog.at_level("WARNING", logger="ta_lab2.db.shadow"):
                assert sweep_abandoned(conn) == sorted([dead.name, late_unit.removesuffix("_u1")])
            assert set(_shadows(conn)) == {alive.name, alive.unit_schema(ids)}
            assert dead.name in caplog.text and late_unit in caplog.text
        # the live run went on to its end: its table, of its one id, swapped in
        assert _shadows(conn) == [] and sweep_abandoned(conn) == []
        assert {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT id FROM {}").format(sql.Identifier(TABLE)))} == set(ids)
        build_all(conn, full=True)
        assert _content(conn, TABLE) == before
