"""Nothing of the user's destroyed, no capture left in limbo: every command run for real
against the embedded server (one small pipeline per module)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from bars_helpers import built_pipeline, BAR_TABLES, EMA_TABLES
from proc_helpers import wait_sessions_gone
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import SOURCE_LOCK, WRITER_LOCKS, advisory_lock
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "src/ta_lab2/scripts/baseline/capture_baseline.py"
PERIODS = (3, 5)
ALL_TABLES = [*BAR_TABLES, *EMA_TABLES]
EVERYTHING = [*ALL_TABLES, *(f"{t}_state" for t in ALL_TABLES), "cmc_price_bars_1d_rejects",
              "cmc_price_bars_1d_deletions"]


@pytest.fixture(scope="module")
def pipeline(db: Target) -> Target:
    return built_pipeline(db, SyntheticConfig(n_assets=2, days=90, seed=31, gap_rate=0.03, defect_rate=0.02), PERIODS)


def _env(target: Target) -> dict[str, str]:
    return {**os.environ, "TA_LAB2_DB_URL": target.url}


def _capture(target: Target, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=_env(target), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _ta_lab2(target: Target, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ta_lab2", *args], env=_env(target), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def _checksums(target: Target, tables: list[str]) -> dict[str, str]:
    with psycopg.connect(target.url) as conn:
        return {t: conn.execute(f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
                                ).fetchone()[0] for t in tables}


def _captures(target: Target) -> int:
    with psycopg.connect(target.url) as conn:
        return conn.execute("SELECT count(*) FROM baseline_snapshots").fetchone()[0]


def _drop_all(target: Target, cwd: Path) -> None:
    with psycopg.connect(target.url) as conn:
        suffixes = [r[0] for r in conn.execute("SELECT suffix FROM baseline_snapshots").fetchall()]
    for suffix in suffixes:
        _ta_lab2(target, cwd, "baseline", "drop", suffix, "--yes", "--force")


# ----------------------------------------------------------------------------- scratch schemas
def test_a_scratch_schema_never_drops_what_it_did_not_create(pipeline: Target, tmp_path: Path) -> None:
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA mydata")
        conn.execute("CREATE TABLE mydata.precious AS SELECT 42 AS answer")
    before = _captures(pipeline)
    try:
        for name in ("mydata", "public", "information_schema", "pg_catalog", "baseline_20200101_000000",
                     "Mixed", "x; DROP TABLE mydata.precious"):
            result = _capture(pipeline, tmp_path, "--ids", "all", "--scratch-schema", name, "--output-dir", "out")
            assert result.returncode == 2, (name, result.stdout + result.stderr)
            assert "--scratch-schema" in result.stderr and "Traceback" not in result.stderr
        with psycopg.connect(pipeline.url) as conn:
            assert conn.execute("SELECT answer FROM mydata.precious").fetchone() == (42,)
            # the system schemas, the default one and the user's are all still there
            assert conn.execute("SELECT to_regnamespace('information_schema') IS NOT NULL AND to_regnamespace("
                                "'pg_catalog') IS NOT NULL AND to_regnamespace('public') IS NOT NULL AND "
                                "to_regclass('information_schema.tables') IS NOT NULL").fetchone()[0]
        assert _captures(pipeline) == before  # refused in preflight: no capture began
        # a schema of its own is created, marked, and reused by the next capture
        for _ in range(2):
            ok = _capture(pipeline, tmp_path, "--ids", "all", "--scratch-schema", "ta_lab2_scratch", "--output-dir", "out")
            assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS mydata CASCADE")
            conn.execute("DROP SCHEMA IF EXISTS ta_lab2_scratch CASCADE")
        _drop_all(pipeline, tmp_path)


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("toml, key, value", [
    ("[columns.ema]\nrtol = nan\natol = 1e-6\n", "rtol", "nan"),
    ("[default]\nrtol = 1e-5\natol = -inf\n", "atol", "-inf"),
    ("[tables.cmc_ema_multi_tf.ema]\nrtol = -0.1\natol = 0\n", "rtol", "-0.1"),
])
def test_unusable_tolerances_exit_2_naming_file_key_and_value(pipeline: Target, tmp_path: Path, toml: str, key: str,
                                                              value: str) -> None:
    path = tmp_path / "tolerances.toml"
    path.write_text(toml)
    before, captures = _checksums(pipeline, ALL_TABLES), _captures(pipeline)
    result = _capture(pipeline, tmp_path, "--ids", "all", "--tolerances", str(path), "--output-dir", "out")
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(path) in result.stderr and key in result.stderr and value in result.stderr
    assert _checksums(pipeline, ALL_TABLES) == before and _captures(pipeline) == captures


def test_a_non_integer_id_in_expected_diffs_is_a_usage_error(pipeline: Target, tmp_path: Path) -> None:
    path = tmp_path / "allow.toml"
    path.write_text('[[expected]]\ntable = "cmc_ema_multi_tf"\nids = ["one"]\nreason = "x"\n')
    result = _capture(pipeline, tmp_path, "--ids", "all", "--expected-diffs", str(path), "--output-dir", "out")
    assert result.returncode == 2 and "'one' is not an integer id" in result.stderr, result.stderr


@pytest.mark.parametrize("schema", ["public; DROP TABLE cmc_price_bars_1d", "Public", "1abc", "a" * 64])
def test_schema_names_are_checked_before_anything_runs(pipeline: Target, tmp_path: Path, schema: str) -> None:
    with psycopg.connect(pipeline.url) as conn:
        schemas = conn.execute("SELECT count(*) FROM pg_namespace").fetchone()[0]
    for args in (["bars", "--ids", "all"], ["emas"], ["status"], ["init"], ["load", "--synthetic", "1"]):
        result = _ta_lab2(pipeline, tmp_path, *args, "--schema", schema)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        assert "--schema" in result.stderr and "not a schema name" in result.stderr
    with psycopg.connect(pipeline.url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace").fetchone()[0] == schemas


# ----------------------------------------------------------------------------- locks
def test_a_busy_pipeline_refuses_a_capture_and_a_load_at_once(pipeline: Target, tmp_path: Path) -> None:
    """Another writer holds the locks (a capture, here simulated by holding them): a second
    capture and a load are refused at once with a hint; --wait-lock waits, saying for what."""
    before = _captures(pipeline)
    with connect(pipeline, autocommit=True) as holder:
        # each command is refused at once: one waiting for the lock would wait past its
        # subprocess timeout, the lock being held until the end of the block
        with advisory_lock(holder, SOURCE_LOCK):
            refused = _capture(pipeline, tmp_path, "--ids", "all", "--output-dir", "out", timeout=120)
            assert refused.returncode == 2 and "--wait-lock" in refused.stderr, refused.stderr
            load = _ta_lab2(pipeline, tmp_path, "load", "--synthetic", "1", "--days", "40", timeout=120)
            assert load.returncode == 2 and "--wait-lock" in load.stderr, load.stderr
            waited = _ta_lab2(pipeline, tmp_path, "load", "--synthetic", "1", "--days", "40", "--wait-lock", "1",
                              "--log-level", "WARNING", timeout=120)
            assert waited.returncode == 2 and "waiting up to 1 s" in waited.stderr, waited.stderr
    assert _captures(pipeline) == before


def test_a_waiting_capture_takes_its_suffix_when_it_starts_working(pipeline: Target, tmp_path: Path) -> None:
    released: list[dt.datetime] = []
    holder = connect(pipeline, autocommit=True)
    lock = advisory_lock(holder, WRITER_LOCKS["baseline"][1][0])  # the bars lock
    lock.__enter__()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--ids", "all", "--skip-rebuild", "--wait-lock", "120",
                             "--output-dir", "out"], env=_env(pipeline), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # release once the capture is waiting (it says so), then note when
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        line = ""
        while "waiting up to" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        released.append(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
        lock.__exit__(None, None, None)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        suffix = json.loads(next((tmp_path / "out").glob("baseline-*.json")).read_text())["suffix"]
        assert dt.datetime.strptime(suffix, "%Y%m%d_%H%M%S").replace(tzinfo=dt.timezone.utc) >= released[0]
    finally:
        proc.kill()
        holder.close()
        _drop_all(pipeline, tmp_path)


# ----------------------------------------------------------------------------- running, interrupted
def _wait_for_status(target: Target, status: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    with psycopg.connect(target.url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT suffix, status FROM baseline_snapshots ORDER BY suffix DESC LIMIT 1").fetchone()
            if row and row[1] == status:
                return str(row[0])
            time.sleep(0.05)  # polling a table the capture writes; the assertion below is on its content
    raise AssertionError(f"the capture never reached {status}")


def test_a_running_capture_is_kept_and_a_killed_one_shows_how_to_recover(pipeline: Target, tmp_path: Path) -> None:
    before = _checksums(pipeline, EVERYTHING)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--ids", "all", "--output-dir", "out"], env=_env(pipeline),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        suffix = _wait_for_status(pipeline, "rebuilding")
        # The truncated tables are being rebuilt: a table the rebuild writes and the compare
        # reads, held here, keeps the capture running (however fast) while it is looked at.
        with psycopg.connect(pipeline.url) as holder:
            holder.execute("LOCK TABLE cmc_ema_multi_tf_v2 IN ACCESS EXCLUSIVE MODE")
            # running: listed as such, never dropped or restored under its feet
            listing = _ta_lab2(pipeline, tmp_path, "baseline", "list", "--json")
            row = next(r for r in json.loads(listing.stdout) if r["suffix"] == suffix)
            assert row["state"] == "running", row
            for command in (["drop", suffix, "--yes", "--force"], ["restore", suffix, "--yes"]):
                refused = _ta_lab2(pipeline, tmp_path, "baseline", *command)
                assert refused.returncode == 2 and "is running" in refused.stderr, refused.stderr
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        with psycopg.connect(pipeline.url, autocommit=True) as conn:  # its sessions end once freed
            assert wait_sessions_gone(conn), "sessions of the killed capture remain"
        # interrupted after truncating: the listing says how to recover, drop needs --force
        listing = _ta_lab2(pipeline, tmp_path, "baseline", "list")
        assert "interrupted" in listing.stdout and f"ta-lab2 baseline restore {suffix}" in listing.stdout, listing.stdout
        refused = _ta_lab2(pipeline, tmp_path, "baseline", "drop", suffix, "--yes")
        assert refused.returncode == 2 and "only copy" in refused.stderr and "--force" in refused.stderr
        restore = _ta_lab2(pipeline, tmp_path, "baseline", "restore", suffix, "--yes")
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert _checksums(pipeline, EVERYTHING) == before
        dropped = _ta_lab2(pipeline, tmp_path, "baseline", "drop", suffix, "--yes")
        assert dropped.returncode == 0, dropped.stderr
    finally:
        proc.kill()
        _drop_all(pipeline, tmp_path)


def test_a_capture_of_empty_tables_says_it_proved_nothing(fresh_db: Target, tmp_path: Path) -> None:
    with connect(fresh_db, autocommit=True) as conn:
        load_synthetic(conn, SyntheticConfig(n_assets=1, days=40, seed=3))
    result = _capture(fresh_db, tmp_path, "--ids", "all", "--skip-rebuild", "--output-dir", "out")
    report = json.loads(next((tmp_path / "out").glob("baseline-*.json")).read_text())
    assert any("empty" in n and "proves nothing" in n for n in report["notes"]), report["notes"]
    assert "proves nothing" in result.stderr, result.stderr


def test_drop_and_restore_of_an_unknown_capture_are_usage_errors(pipeline: Target, tmp_path: Path) -> None:
    for command in (["drop", "20000101_000000", "--yes"], ["restore", "20000101_000000", "--yes"]):
        result = _ta_lab2(pipeline, tmp_path, "baseline", *command)
        assert result.returncode == 2 and "no capture with suffix" in result.stderr


@pytest.mark.parametrize("entry, message", [
    ('table = "cmc_ema_multi_tf"\ncolumn = ["ema"]\nreason = "x"', "unknown key(s) column"),
    ('table = "cmc_ema_multi_tf"\ncolumns = "ema"\nreason = "x"', "columns = 'ema' must be a non-empty list"),
    ('table = "cmc_ema_multi_tf"\ntfs = []\nreason = "x"', "tfs = [] must be a non-empty list"),
    ('table = "cmc_ema_multi_tf"\nids = []\nreason = "x"', "ids = [] must be a non-empty list"),
    ('table = "cmc_ema"\nreason = "x"', "table 'cmc_ema' is not one of the 12 tables"),
    ('table = "cmc_ema_multi_tf"\nreason = " "', "reason must say why"),
    ('table = "cmc_ema_multi_tf"\ntfs = [7]\nreason = "x"', "tfs = 7 is not a name"),
])
def test_an_expected_diffs_entry_covers_exactly_what_it_says_or_is_refused(tmp_path: Path, entry: str,
                                                                            message: str) -> None:
    """An allow-list entry that would silently cover more (a misspelt key, an empty list) or
    nothing (a string for a list, an unknown table) is a usage error naming it."""
    from ta_lab2.cli.baseline_cmds import parse_expected
    from ta_lab2.errors import UsageError

    path = tmp_path / "allow.toml"
    path.write_text(f"[[expected]]\n{entry}\n")
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_expected(path)
    path.write_text('[[expected]]\ntable = "cmc_ema_multi_tf"\ncolumns = ["ema"]\ntfs = ["7D"]\nids = [1]\nreason = "x"\n')
    (entry_ok,) = parse_expected(path)
    assert (entry_ok.columns, entry_ok.tfs, entry_ok.ids) == (("ema",), ("7D",), (1,))
