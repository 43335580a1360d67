"""The baseline capture (spec 05): every defect the spec warns about must be caught.

One small pipeline per module (2 assets, every bar table, EMAs with periods 3 and 5 on every
table); captures run through the real command (subprocesses, real runners) or the library API.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import jsonschema
import psycopg
import pytest

from bars_helpers import built_pipeline, BAR_TABLES, EMA_TABLES, build_all, refresh_all
from proc_helpers import wait_sessions_gone
from ta_lab2.baseline.capture import CaptureOptions, compare_existing, run_capture
from ta_lab2.baseline.comparison_utils import Sampling
from ta_lab2.baseline.naming import make_suffix, snapshot_name
from ta_lab2.db.connect import Target, connect
from ta_lab2.errors import DatabaseError, UsageError
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "src/ta_lab2/scripts/baseline/capture_baseline.py"
SECRET = "Bas3lineSecretPw"
PERIODS = (3, 5)
ALL_TABLES = [*BAR_TABLES, *EMA_TABLES]
STATE_TABLES = [f"{t}_state" for t in ALL_TABLES]


@pytest.fixture(scope="module")
def pipeline(db: Target) -> Target:
    return built_pipeline(db, SyntheticConfig(n_assets=2, days=120, seed=17, gap_rate=0.03, defect_rate=0.02), PERIODS)


def _secret_target(t: Target) -> Target:
    return Target(t.url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@"), "test")


def _checksums(target: Target, tables: list[str], where: str = "TRUE") -> dict[str, str]:
    with psycopg.connect(target.url) as conn:
        return {t: conn.execute(f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
                                f"FROM {t} x WHERE {where}").fetchone()[0] for t in tables}


def _cli(target: Target, tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--output-dir", str(tmp_path / "out")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def _report(tmp_path: Path) -> dict:
    (path,) = sorted((tmp_path / "out").glob("baseline-*.json"))[-1:]
    return json.loads(path.read_text())


def _skip_rebuild_capture_result(target: Target, tmp_path: Path, ids: list[int] | None = None):  # type: ignore[no-untyped-def]
    return run_capture(target, CaptureOptions(ids=ids, skip_rebuild=True, output_dir=tmp_path))


def _skip_rebuild_capture(target: Target, tmp_path: Path, ids: list[int] | None = None) -> str:
    result = _skip_rebuild_capture_result(target, tmp_path, ids)
    assert result.verdict == "PASS", result.summary
    return result.suffix


@contextmanager
def _self_check(target: Target, tmp_path: Path) -> Iterator[str]:
    """A passing --skip-rebuild capture; afterwards the live tables get its rows back and the
    capture is dropped, whatever the test did to them."""
    from ta_lab2.baseline.snapshots import restore

    suffix = _skip_rebuild_capture(target, tmp_path)
    try:
        yield suffix
    finally:
        with connect(target, autocommit=True) as conn:
            restore(conn, suffix)
        _drop(target, suffix)


def _drop(target: Target, suffix: str) -> None:
    from ta_lab2.baseline.snapshots import drop

    with connect(target, autocommit=True) as conn:
        drop(conn, suffix)


# ----------------------------------------------------------------------------- end to end
def test_identical_rebuild_passes_and_compares_every_table(pipeline: Target, tmp_path: Path) -> None:
    result = _cli(_secret_target(pipeline), tmp_path, "--ids", "all", "--log-level", "DEBUG")
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(tmp_path)
    jsonschema.validate(report, json.loads((ROOT / "docs/baseline-report.schema.json").read_text()))
    assert report["verdict"] == "PASS" and report["summary"]["severity_counts"] == {"CRITICAL": 0, "WARNING": 0, "INFO": 0}
    assert sorted(t["table"] for t in report["tables"]) == sorted(ALL_TABLES)
    assert "cmc_price_bars_multi_tf_cal_anchor_iso" in {t["table"] for t in report["tables"]}
    longest = snapshot_name("cmc_price_bars_multi_tf_cal_anchor_iso", report["suffix"])
    assert len(longest.encode()) == 63
    for t in report["tables"]:
        assert t["rows_snapshot"] == t["rows_rebuilt"] > 0 and t["rows_compared"] > 0 and t["match_rate"] == 1.0
    assert [r["name"] for r in report["rebuild"]] == ["bars", "emas"] and all(r["ok"] for r in report["rebuild"])
    # no password anywhere: console, log, JSON, HTML, metadata
    assert SECRET not in result.stdout + result.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert "postgres:***@" in (tmp_path / "out" / f"metadata-{report['suffix']}.json").read_text()
    # the HTML renders: verdict first, the tables listed
    html_text = (tmp_path / "out" / f"baseline-{report['suffix']}.html").read_text()
    parser = _Collect()
    parser.feed(html_text)
    assert parser.ids["verdict"] == "PASS" and "tables" in parser.ids
    assert all(t in html_text for t in ALL_TABLES)
    listing = subprocess.run([sys.executable, "-m", "ta_lab2", "baseline", "list", "--json"],
                             env={**os.environ, "TA_LAB2_DB_URL": pipeline.url}, capture_output=True, text=True, timeout=60)
    assert report["suffix"] in listing.stdout and '"verdict": "PASS"' in listing.stdout
    _drop(pipeline, report["suffix"])


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ident = dict(attrs).get("id")
        if ident:
            self.ids[ident] = ""
            self._current = ident

    def handle_data(self, data: str) -> None:
        if self._current and not self.ids[self._current]:
            self.ids[self._current] = data.strip()


def test_dry_run_changes_nothing(pipeline: Target, tmp_path: Path) -> None:
    before = _checksums(pipeline, ALL_TABLES)
    result = _cli(_secret_target(pipeline), tmp_path, "--ids", "all", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "snapshot: CREATE TABLE public.cmc_price_bars_1d_snapshot_" in result.stdout
    assert "run_all_bar_builders.py --ids all --full-rebuild" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert _checksums(pipeline, ALL_TABLES) == before
    with psycopg.connect(pipeline.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '%\\_snapshot\\_%'").fetchone()[0] == 0


def test_ids_subset_leaves_other_ids_untouched(pipeline: Target, tmp_path: Path) -> None:
    with psycopg.connect(pipeline.url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM dim_assets ORDER BY id").fetchall()]
    keep, other = ids[0], ids[1]
    before = _checksums(pipeline, ALL_TABLES + STATE_TABLES, f"id = {other}")
    result = _cli(pipeline, tmp_path, "--ids", str(keep))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _checksums(pipeline, ALL_TABLES + STATE_TABLES, f"id = {other}") == before
    report = _report(tmp_path)
    assert report["ids"] == [keep] and all(t["rows_snapshot"] > 0 for t in report["tables"])
    _drop(pipeline, report["suffix"])


def test_scratch_schema_leaves_live_tables_untouched(pipeline: Target, tmp_path: Path) -> None:
    before = _checksums(pipeline, ALL_TABLES + STATE_TABLES)
    result = _cli(pipeline, tmp_path, "--ids", "all", "--scratch-schema", "scratch_rebuild", "--full")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _checksums(pipeline, ALL_TABLES + STATE_TABLES) == before
    report = _report(tmp_path)
    assert all(t["rebuilt"].replace('"', "").startswith("scratch_rebuild.") for t in report["tables"])
    assert all(t["rows_compared"] == t["rows_snapshot"] for t in report["tables"])  # --full
    _drop(pipeline, report["suffix"])


def _drop_snapshot_copies(conn: psycopg.Connection, suffix: str) -> None:
    from ta_lab2.baseline.naming import aux_schema
    from ta_lab2.db.tables import PIPELINE_TABLES

    for t in PIPELINE_TABLES:
        conn.execute(f"DROP TABLE IF EXISTS {snapshot_name(t, suffix)}")
    conn.execute(f"DROP SCHEMA IF EXISTS {aux_schema(suffix)} CASCADE")


def _copies_of(conn: psycopg.Connection, suffix: str) -> int:
    return conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relname LIKE %s OR n.nspname = %s",
                        (f"%_snapshot_{suffix}", f"baseline_{suffix}")).fetchone()[0]


def test_snapshots_over_two_transactions_equal_those_of_one(pipeline: Target) -> None:
    """A helper connection splits the copies between two transactions on one exported
    snapshot: the same tables, keys, counts and rows as one transaction copies."""
    from ta_lab2.baseline.snapshots import _helper_share, take_snapshots
    from ta_lab2.db.tables import PIPELINE_TABLES

    one, two = "20000101_000001", "20000101_000002"
    with connect(pipeline, autocommit=True) as conn, connect(pipeline, autocommit=True) as helper:
        share = _helper_share(conn, PIPELINE_TABLES, "public")
        assert share and set(share) < set(PIPELINE_TABLES)  # both sides copy something
        try:
            serial = take_snapshots(conn, one, PIPELINE_TABLES, None)
            split = take_snapshots(conn, two, PIPELINE_TABLES, None, helper=helper)
            assert [(i.table, i.rows, i.key) for i in split] == [(i.table, i.rows, i.key) for i in serial]
            assert all(i.rows > 0 for i in split if i.table in PIPELINE_TABLES)
            for info in split:
                live = info.table if info.table in PIPELINE_TABLES else f"public.{info.table}"
                assert _checksums(pipeline, [info.snapshot])[info.snapshot] == _checksums(pipeline, [live])[live]
                keyed = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s) AND indisprimary",
                                     (info.snapshot,)).fetchone()[0]
                assert keyed == (1 if info.key else 0)
        finally:
            _drop_snapshot_copies(conn, one)
            _drop_snapshot_copies(conn, two)


@pytest.mark.parametrize("side", ["first", "helper"])
def test_snapshot_failure_on_either_transaction_creates_nothing(pipeline: Target, side: str) -> None:
    from ta_lab2.baseline.snapshots import _helper_share, take_snapshots
    from ta_lab2.db.tables import PIPELINE_TABLES

    suffix = "20000101_000003"
    with connect(pipeline, autocommit=True) as conn, connect(pipeline, autocommit=True) as helper:
        share = _helper_share(conn, PIPELINE_TABLES, "public")
        # the smallest table of that side: its copy fails after the other side's largest began
        victim = [t for t in PIPELINE_TABLES if (t in share) == (side == "helper")][-1]
        conn.execute(f"CREATE TABLE {snapshot_name(victim, suffix)} (x int)")
        try:
            with pytest.raises(psycopg.errors.DuplicateTable):
                take_snapshots(conn, suffix, PIPELINE_TABLES, None, helper=helper)
            conn.execute(f"DROP TABLE {snapshot_name(victim, suffix)}")
            assert _copies_of(conn, suffix) == 0
            assert helper.execute("SELECT 1").fetchone() == (1,)  # the helper is usable again
        finally:
            _drop_snapshot_copies(conn, suffix)


def test_snapshot_failure_truncates_nothing(pipeline: Target, tmp_path: Path) -> None:
    before = _checksums(pipeline, ALL_TABLES)
    # An event trigger fails the snapshot transaction once it has copied cmc_ema_multi_tf_v2
    # (other tables' copies are made in the same transaction, before and after it).
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION test_refuse_snapshot() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() WHERE object_identity LIKE "
                     "'public.cmc_ema_multi_tf_v2\\_snapshot\\_%') THEN RAISE EXCEPTION 'snapshot refused by the test'; "
                     "END IF; END $$")
        conn.execute("CREATE EVENT TRIGGER test_refuse_snapshot ON ddl_command_end WHEN TAG IN ('CREATE TABLE AS') "
                     "EXECUTE FUNCTION test_refuse_snapshot()")
    try:
        result = _cli(pipeline, tmp_path, "--ids", "all")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "snapshot refused by the test" in result.stderr
        assert _checksums(pipeline, ALL_TABLES) == before
        with psycopg.connect(pipeline.url) as conn:
            suffix, status = conn.execute(
                "SELECT suffix, status FROM baseline_snapshots ORDER BY suffix DESC LIMIT 1").fetchone()
            assert status == "snapshot_failed"
            # the failed snapshot transaction left no copies behind, of that table or any other
            assert _copies_of(conn, suffix) == 0
            assert conn.execute("SELECT to_regnamespace(%s)", (f"baseline_{suffix}",)).fetchone()[0] is None
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("DROP EVENT TRIGGER IF EXISTS test_refuse_snapshot")
            conn.execute("DROP FUNCTION IF EXISTS test_refuse_snapshot()")
            for (suffix,) in conn.execute("SELECT suffix FROM baseline_snapshots WHERE status = 'snapshot_failed'").fetchall():
                conn.execute("DELETE FROM baseline_snapshots WHERE suffix = %s", (suffix,))


def test_captures_within_one_second_get_later_suffixes(pipeline: Target) -> None:
    """Suffixes have one-second resolution: a capture starting in the second of the latest one
    (or before it: a clock set back) is named one second after it."""
    from ta_lab2.baseline.snapshots import capture_instant

    now = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    with connect(pipeline) as conn:  # rolled back: the registry rows are the test's own
        insert = ("INSERT INTO baseline_snapshots (suffix, captured_at, status, aux_schema) "
                  "VALUES (%s, now(), 'snapshot_failed', 'x')")
        conn.execute(insert, (make_suffix(now),))
        assert capture_instant(conn, now) == now + dt.timedelta(seconds=1)
        assert capture_instant(conn, now + dt.timedelta(seconds=1)) == now + dt.timedelta(seconds=1)
        conn.execute(insert, (make_suffix(now + dt.timedelta(hours=1)),))
        assert capture_instant(conn, now) == now + dt.timedelta(hours=1, seconds=1)
        conn.rollback()


def test_killed_capture_is_restored_exactly(pipeline: Target, tmp_path: Path) -> None:
    tables = ALL_TABLES + STATE_TABLES + ["cmc_price_bars_1d_rejects"]
    before = _checksums(pipeline, tables)
    env = {**os.environ, "TA_LAB2_DB_URL": pipeline.url}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--ids", "all", "--output-dir", str(tmp_path / "out")],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    suffix = None
    deadline = time.monotonic() + 300
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT suffix, status FROM baseline_snapshots ORDER BY suffix DESC LIMIT 1").fetchone()
            if row and row[1] == "rebuilding":
                suffix = row[0]
                break
            time.sleep(0.05)
        assert suffix is not None, "the capture never reached the rebuild"
        # kill it once the rebuild has written rows into the truncated tables (bars first: 1D)
        while not conn.execute("SELECT EXISTS (SELECT 1 FROM cmc_price_bars_1d)").fetchone()[0]:
            assert time.monotonic() < deadline and proc.poll() is None, "the rebuild wrote no row"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # its rebuild children die with it: nothing writes once their sessions have ended
        assert wait_sessions_gone(conn), "sessions of the killed capture remain"
    restore = subprocess.run([sys.executable, "-m", "ta_lab2", "baseline", "restore", suffix, "--yes"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert _checksums(pipeline, tables) == before
    listing = subprocess.run([sys.executable, "-m", "ta_lab2", "baseline", "list"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert suffix in listing.stdout and "restored" in listing.stdout
    _drop(pipeline, suffix)


# ----------------------------------------------------------------------------- defects caught
def _compare(target: Target, suffix: str, full: bool = False):  # type: ignore[no-untyped-def]
    return compare_existing(target, suffix, CaptureOptions(ids=None, sampling=Sampling(full=full)))


def _by_table(result) -> dict:  # type: ignore[no-untyped-def]
    return {t.table: t for t in result.comparisons}


def test_changed_source_price_is_critical_downstream_with_first_divergence(pipeline: Target, tmp_path: Path) -> None:
    suffix = _skip_rebuild_capture(pipeline, tmp_path)
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        ident, day = conn.execute("SELECT id, \"timestamp\" FROM cmc_price_bars_1d ORDER BY id, \"timestamp\" "
                                  "OFFSET 60 LIMIT 1").fetchone()
        conn.execute("UPDATE cmc_price_histories7 SET close = close * 1.2, high = high * 1.3, load_ts = now() "
                     "WHERE id = %s AND \"timestamp\" = %s", (ident, day))
    with connect(pipeline, autocommit=True) as conn:
        build_all(conn, full=False)
        refresh_all(conn, full=False, periods=PERIODS)
    try:
        result = _compare(pipeline, suffix, full=True)
        tables = _by_table(result)
        assert result.verdict == "FAIL"
        daily = tables["cmc_price_bars_1d"]
        assert daily.severity_counts["CRITICAL"] >= 1 and not daily.passed
        assert [d.first_ts for d in daily.divergences] == [day.isoformat()]
        for name in ALL_TABLES:
            t = tables[name]
            assert not t.passed, name  # every table downstream of the change
            for d in t.divergences:
                assert d.series["id"] == ident and d.first_ts >= day.isoformat(), (name, d)
        ema = tables["cmc_ema_multi_tf"]
        series = {(d.series["tf"], d.series["period"]): d for d in ema.divergences}
        one_day = series[("1D", 3)]
        # the spike decays below tolerance after a few weeks: the divergence ends before the series does
        assert one_day.first_ts == day.isoformat() and not one_day.persists_to_end
        assert daily.divergences[0].last_ts == day.isoformat() and daily.divergences[0].count == 1
        # an EMA series names the first differing row of the table it reads (the 1D row here)
        assert one_day.cause.kind == "inherited" and one_day.cause.parent == {
            "table": "cmc_price_bars_1d", "series": {"id": ident}, "ts": day.isoformat()}
        assert all(d.cause.kind == "inherited" and d.cause.root == 0 for d in ema.divergences)
        assert ema.top_differences[0].severity == "CRITICAL"
        assert next(c for c in ema.columns if c.column == "ema").critical > 0
        sampled = _by_table(_compare(pipeline, suffix, full=False))["cmc_ema_multi_tf"]
        # sampling never decides what is found: the same divergences, the same counts
        assert sampled.divergences == ema.divergences and sampled.severity_counts == ema.severity_counts
        assert sampled.rows_compared == ema.rows_compared and sampled.mismatching_rows == ema.mismatching_rows
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_price_histories7 SET close = close / 1.2, high = high / 1.3, load_ts = now() "
                         "WHERE id = %s AND \"timestamp\" = %s", (ident, day))
        from ta_lab2.baseline.snapshots import restore

        with connect(pipeline, autocommit=True) as conn:
            restore(conn, suffix)
        _drop(pipeline, suffix)


def test_deleted_source_day_reports_rows_only_in_snapshot(pipeline: Target, tmp_path: Path) -> None:
    suffix = _skip_rebuild_capture(pipeline, tmp_path)
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        row = conn.execute("SELECT * FROM cmc_price_histories7 ORDER BY id, \"timestamp\" OFFSET 30 LIMIT 1")
        cols = [d.name for d in row.description]
        saved = row.fetchone()
        conn.execute("DELETE FROM cmc_price_histories7 WHERE id = %s AND \"timestamp\" = %s",
                     (saved[cols.index("id")], saved[cols.index("timestamp")]))
    with connect(pipeline, autocommit=True) as conn:
        build_all(conn, full=False)
        refresh_all(conn, full=False, periods=PERIODS)
    try:
        result = _compare(pipeline, suffix)
        daily = _by_table(result)["cmc_price_bars_1d"]
        assert result.verdict == "FAIL"
        assert daily.only_in_snapshot == 1 and daily.rows_snapshot == daily.rows_rebuilt + 1
        assert any(d.column == "(row)" and d.reason == "only in the snapshot" for d in daily.top_differences)
    finally:
        from ta_lab2.baseline.snapshots import restore

        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute(f"INSERT INTO cmc_price_histories7 ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})", saved)
        with connect(pipeline, autocommit=True) as conn:
            restore(conn, suffix)
        _drop(pipeline, suffix)


@pytest.mark.parametrize(
    "damage, table",
    [
        ("DELETE FROM cmc_ema_multi_tf_cal_us", "cmc_ema_multi_tf_cal_us"),  # an empty rebuilt table
        # bar_seq shifted by one (in two steps: the unique indexes are checked row by row)
        ("UPDATE cmc_price_bars_multi_tf SET bar_seq = -bar_seq; UPDATE cmc_price_bars_multi_tf SET bar_seq = 1 - bar_seq",
         "cmc_price_bars_multi_tf"),
        ("DELETE FROM cmc_ema_multi_tf_v2 WHERE ts < (SELECT max(ts) - interval '20 days' FROM cmc_ema_multi_tf_v2)",
         "cmc_ema_multi_tf_v2"),  # only recent rows rebuilt
        ("UPDATE cmc_price_bars_1d SET market_cap = NULL WHERE bar_seq % 7 = 0 AND market_cap IS NOT NULL",
         "cmc_price_bars_1d"),  # NULL vs value
    ],
)
def test_damaged_rebuild_never_passes(pipeline: Target, tmp_path: Path, damage: str, table: str) -> None:
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute(damage)
        result = _compare(pipeline, suffix)
        t = _by_table(result)[table]
        assert result.verdict == "FAIL" and not t.passed
        assert t.severity_counts["CRITICAL"] > 0
        # the share of the keys of either side whose rows are equal, counted in SQL here
        snap = snapshot_name(table, suffix)
        with psycopg.connect(pipeline.url) as conn:
            key = ", ".join(r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary", (table,)))
            equal, both, n_snap, n_live = conn.execute(
                f"SELECT (SELECT count(*) FROM (SELECT * FROM {snap} INTERSECT ALL SELECT * FROM {table}) x), "
                f"(SELECT count(*) FROM {snap} JOIN {table} USING ({key})), "
                f"(SELECT count(*) FROM {snap}), (SELECT count(*) FROM {table})").fetchone()
        assert t.match_rate == pytest.approx(equal / (n_snap + n_live - both)) and t.match_rate < 1.0
        others = [x for x in result.comparisons if x.table != table]
        assert all(x.passed for x in others)


def test_float_noise_within_tolerance_is_info_and_passes(pipeline: Target, tmp_path: Path) -> None:
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_ema_multi_tf SET ema = ema * (1 + 1e-9)")
            conn.execute("UPDATE cmc_price_bars_multi_tf SET volume = volume + 1e-5")
        result = _compare(pipeline, suffix, full=True)
        ema = _by_table(result)["cmc_ema_multi_tf"]
        assert result.verdict == "PASS"
        assert ema.severity_counts["INFO"] == ema.rows_compared and ema.match_rate == 1.0
        col = next(c for c in ema.columns if c.column == "ema")
        assert col.mismatches == ema.rows_compared and col.max_rel_diff is not None and col.max_rel_diff < 1e-8
        # a real change, 0.5 %: WARNING; 5 %: CRITICAL
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_ema_multi_tf SET ema = ema * 1.005 WHERE period = 3")
            conn.execute("UPDATE cmc_ema_multi_tf SET ema = ema * 1.05 WHERE period = 5")
        ema = _by_table(_compare(pipeline, suffix))["cmc_ema_multi_tf"]
        assert ema.severity_counts["WARNING"] > 0 and ema.severity_counts["CRITICAL"] > 0 and not ema.passed


def test_all_null_column_does_not_crash(pipeline: Target, tmp_path: Path) -> None:
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            for t in ("cmc_price_bars_multi_tf_cal_us", snapshot_name("cmc_price_bars_multi_tf_cal_us", suffix)):
                conn.execute(f"UPDATE {t} SET market_cap = NULL, missing_days_where = NULL")
        result = _compare(pipeline, suffix, full=True)
        t = _by_table(result)["cmc_price_bars_multi_tf_cal_us"]
        assert t.passed and t.error is None
        col = next(c for c in t.columns if c.column == "market_cap")
        assert col.mismatches == 0 and col.max_abs_diff is None


def test_expected_diffs_allow_list_turns_differences_into_info(pipeline: Target, tmp_path: Path) -> None:
    from ta_lab2.cli.baseline_cmds import parse_expected

    allow = tmp_path / "allow.toml"
    allow.write_text('[[expected]]\ntable = "cmc_ema_multi_tf"\ncolumns = ["ema"]\nreason = "new rounding"\n')
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_ema_multi_tf SET ema = ema * 1.05")
        result = compare_existing(pipeline, suffix, CaptureOptions(ids=None, expected=parse_expected(allow)))
        ema = _by_table(result)["cmc_ema_multi_tf"]
        assert ema.passed and ema.severity_counts["INFO"] > 0
        assert all(d.reason == "new rounding" for d in ema.top_differences)


def test_unknown_id_and_bad_options_exit_2(pipeline: Target, tmp_path: Path) -> None:
    assert _cli(pipeline, tmp_path, "--ids", "987654").returncode == 2
    assert _cli(pipeline, tmp_path, "--ids", "all", "--tables", "cmc_nope").returncode == 2
    bad = tmp_path / "tol.toml"
    bad.write_text("[columns.ema]\nrtol = 'x'\n")
    result = _cli(pipeline, tmp_path, "--ids", "all", "--tolerances", str(bad))
    assert result.returncode == 2 and "rtol" in result.stderr


def test_split_compare_equals_single_pass(pipeline: Target, tmp_path: Path) -> None:
    """The pass over every row split over two connections (a table compared on its own) finds
    exactly what the single pass finds: differences on both sides of the split, one-sided rows
    on both sides, in the sampled and the full mode."""
    from dataclasses import asdict, replace

    from psycopg import sql

    from ta_lab2.baseline.compare import _split_point, compare_table
    from ta_lab2.baseline.comparison_utils import Tolerances
    from ta_lab2.baseline.tables import table_spec

    table = "cmc_ema_multi_tf"
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            ids = [r[0] for r in conn.execute(f"SELECT DISTINCT id FROM {table} ORDER BY id").fetchall()]
            assert len(ids) == 2
            for ident in ids:  # damage both halves: a value, a deleted row, an extra row
                conn.execute(f"UPDATE {table} SET ema = ema * 1.5 WHERE id = %s AND tf = '1D' AND period = 3 "
                             "AND ts = (SELECT min(ts) + interval '40 days' FROM {table} WHERE id = %s)".replace(
                                 "{table}", table), (ident, ident))
                conn.execute(f"DELETE FROM {table} WHERE id = %s AND tf = '1D' AND period = 5 "
                             "AND ts = (SELECT max(ts) FROM {table} WHERE id = %s)".replace("{table}", table),
                             (ident, ident))
                cols = "id, tf, ts, period, tf_days, roll, ema, d1, d2, d1_roll, d2_roll"
                conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols.replace('ts,', 'ts + interval ' + repr('1000 days') + ',')} "
                             f"FROM {table} WHERE id = %s AND tf = '1D' AND period = 3 ORDER BY ts DESC LIMIT 1", (ident,))
        with connect(pipeline, autocommit=True) as conn, connect(pipeline, autocommit=True) as helper:
            spec = table_spec(conn, table, suffix, "public")
            assert _split_point(conn, spec.snapshot, [sql.Identifier("id")]) == (ids[1],)
            merged = replace(spec, presorted=True)  # two index scans merged instead of a hash join
            for sampling in (Sampling(), Sampling(full=True)):
                with conn.transaction():
                    single = compare_table(conn, spec, None, sampling, Tolerances())
                with conn.transaction():
                    split = compare_table(conn, spec, None, sampling, Tolerances(), helper=helper)
                assert asdict(split) == asdict(single)
                for helped in (None, helper):
                    with conn.transaction():
                        assert asdict(compare_table(conn, merged, None, sampling, Tolerances(), helper=helped)) == asdict(single)
                assert not single.passed and single.only_in_snapshot == 2 and single.only_in_rebuilt == 2
                assert {d.series["id"] for d in single.divergences} == set(ids)


def test_a_capture_of_some_tables_rebuilds_those_tables_only(pipeline: Target, tmp_path: Path) -> None:
    """--tables: the runners are told to rebuild the chosen tables (--builders / --only), so
    the tables it neither snapshots nor compares keep their rows as they were — not rewritten
    behind the capture's back."""
    chosen = ["cmc_price_bars_multi_tf_cal_iso", "cmc_ema_multi_tf_v2"]

    def written() -> dict[str, object]:  # when each table's rows were last written
        with psycopg.connect(pipeline.url) as conn:
            return {t: conn.execute(f"SELECT max(ingested_at) FROM {t}").fetchone()[0] for t in ALL_TABLES}

    before = written()
    plan = _cli(pipeline, tmp_path, "--ids", "all", "--tables", ",".join(chosen), "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "--builders cal_iso" in plan.stdout and "--only v2" in plan.stdout
    result = _cli(pipeline, tmp_path, "--ids", "all", "--tables", ",".join(chosen))
    assert result.returncode == 0, result.stdout + result.stderr
    after = written()
    assert {t for t in ALL_TABLES if after[t] != before[t]} == set(chosen)
    _drop(pipeline, _report(tmp_path)["suffix"])


def test_the_helpers_rows_take_their_types_from_every_row(pipeline: Target) -> None:
    """A table compared in two halves reads the helper's per-series rows into a frame; the
    identical series come first with no first difference (NULL): a value after the first
    hundred rows must still be read, not fail the table's comparison."""
    from psycopg import sql as psql

    from ta_lab2.baseline.compare import _fetch_frame

    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        rows = _fetch_frame(conn, psql.SQL("SELECT i, CASE WHEN i > 150 THEN timestamptz '2024-01-02' END AS first "
                                           "FROM generate_series(1, 151) i"), {})
    assert rows.height == 151 and rows["first"].null_count() == 150
    assert rows["first"][150] == dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)


def test_an_error_during_the_rebuild_leaves_a_capture_that_must_be_restored(
        pipeline: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error after the truncation (not a failing child: here the rebuild's own
    set-up raises) leaves the live tables empty: the capture FAILs, says to restore, is listed
    as such, and `drop` refuses to remove the only copy of the rows without --force."""
    import ta_lab2.baseline.capture as capture
    from ta_lab2.baseline.snapshots import capture_state, drop, registry_row, restore

    tables = ALL_TABLES + STATE_TABLES
    before = _checksums(pipeline, tables)

    def broken(*args: object) -> None:
        raise RuntimeError("the rebuild could not start")

    monkeypatch.setattr(capture, "rebuild_config", broken)
    result = run_capture(pipeline, CaptureOptions(ids=None, output_dir=tmp_path))
    assert result.verdict == "FAIL"
    assert any("baseline restore" in p for p in result.problems), result.problems
    with connect(pipeline, autocommit=True) as conn:
        row = registry_row(conn, result.suffix)
        assert row["status"] == "rebuild_failed"
        state, hint = capture_state(row, running=False)
        assert hint is not None and "restore" in hint
        with pytest.raises(UsageError, match="only copy"):
            drop(conn, result.suffix)
        restore(conn, result.suffix)
    assert _checksums(pipeline, tables) == before
    _drop(pipeline, result.suffix)


def test_a_compare_waits_for_no_writer_and_lets_readers_in(pipeline: Target, tmp_path: Path) -> None:
    """`baseline compare` reads every table in several passes: a refresh writing meanwhile could
    make it see no single state of them. It is refused while a writer holds its locks, and
    runs beside another reader."""
    from ta_lab2.db.locks import BARS_LOCK, advisory_lock

    with _self_check(pipeline, tmp_path) as suffix:
        with connect(pipeline, autocommit=True) as holder:
            with advisory_lock(holder, BARS_LOCK):  # a bar build
                with pytest.raises(DatabaseError, match="bars"):
                    compare_existing(pipeline, suffix, CaptureOptions(ids=None, output_dir=tmp_path))
            with advisory_lock(holder, BARS_LOCK, shared=True):  # another compare
                assert compare_existing(pipeline, suffix, CaptureOptions(ids=None, output_dir=tmp_path)).verdict == "PASS"


def test_a_column_on_one_side_only_fails_the_table_and_names_it(pipeline: Target, tmp_path: Path) -> None:
    """The columns compared come from both sides: a column the rebuilt table has and its
    snapshot lacks (or the reverse) fails that table, naming the column, where it was left out
    of the comparison before."""
    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cmc_ema_multi_tf_v2 ADD COLUMN d3 double precision")
        try:
            result = _compare(pipeline, suffix)
        finally:
            with psycopg.connect(pipeline.url, autocommit=True) as conn:
                conn.execute("ALTER TABLE cmc_ema_multi_tf_v2 DROP COLUMN d3")
        v2 = _by_table(result)["cmc_ema_multi_tf_v2"]
        assert result.verdict == "FAIL" and not v2.passed
        assert "d3 only in the rebuilt table" in (v2.error or ""), v2.error
        assert all(t.passed for t in result.comparisons if t.table != "cmc_ema_multi_tf_v2")
        # the reverse: a column the snapshot holds and the rebuilt table lacks was never compared
        snap = snapshot_name("cmc_ema_multi_tf_v2", suffix)
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {snap} ADD COLUMN d3 double precision DEFAULT 1")
        try:
            result = _compare(pipeline, suffix)
        finally:
            with psycopg.connect(pipeline.url, autocommit=True) as conn:
                conn.execute(f"ALTER TABLE {snap} DROP COLUMN d3")
        v2 = _by_table(result)["cmc_ema_multi_tf_v2"]
        assert result.verdict == "FAIL" and "d3 only in the snapshot" in (v2.error or ""), v2.error


def test_a_state_the_rebuild_left_otherwise_fails_the_capture(pipeline: Target, tmp_path: Path) -> None:
    """The state tables say where the next incremental refresh resumes: a state row of the
    rebuild that differs from the snapshot's (here one bar series' last bar number) is named,
    and it is a problem of the capture, hence a FAIL."""
    from ta_lab2.baseline.tables import state_differences

    with _self_check(pipeline, tmp_path) as suffix:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            assert state_differences(conn, suffix, ALL_TABLES, None, "public") == []
            conn.execute("UPDATE cmc_price_bars_multi_tf_cal_us_state SET last_bar_seq = last_bar_seq + 1 "
                         "WHERE (id, tf) = (SELECT id, tf FROM cmc_price_bars_multi_tf_cal_us_state ORDER BY id, tf "
                         "LIMIT 1)")
            found = state_differences(conn, suffix, ALL_TABLES, None, "public")
            assert len(found) == 1 and found[0].startswith("cmc_price_bars_multi_tf_cal_us_state: 1 rows of the "
                                                           "snapshot and 1 of the rebuild differ in"), found
            assert "last_bar_seq" in found[0]
            assert state_differences(conn, suffix, ["cmc_price_bars_multi_tf"], None, "public") == []



def test_a_capture_reports_its_state_differences_and_fails(pipeline: Target, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture runs the state comparison after the tables' and a difference found there is
    one of its problems: FAIL, though every table passes."""
    import ta_lab2.baseline.capture as capture

    seen = []

    def differing(conn, suffix, tables, ids, rebuilt_schema):  # noqa: ANN001, ANN202 - the function's own signature
        seen.append((suffix, tuple(tables), rebuilt_schema))
        return ["cmc_price_bars_1d_state: 1 rows of the snapshot and 1 of the rebuild differ"]

    monkeypatch.setattr(capture, "state_differences", differing)
    result = _skip_rebuild_capture_result(pipeline, tmp_path)
    assert seen == [(result.suffix, tuple(ALL_TABLES), "public")]
    assert all(t.passed for t in result.comparisons)
    assert result.verdict == "FAIL" and any("_state:" in p for p in result.problems), result.problems
    _drop(pipeline, result.suffix)
