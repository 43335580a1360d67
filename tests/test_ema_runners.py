"""The EMA runner and the daily refresh (spec 04): children per refresher, dry run, staleness
check listing stale ids, exit codes, script paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ta_lab2.db.connect import Target, connect
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig, asset_ids

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EMA_TABLES = ["cmc_ema_multi_tf", "cmc_ema_multi_tf_v2", "cmc_ema_multi_tf_cal_us", "cmc_ema_multi_tf_cal_iso",
              "cmc_ema_multi_tf_cal_anchor_us", "cmc_ema_multi_tf_cal_anchor_iso"]
IDS = asset_ids(3)
FRESH, STALE = IDS[0], IDS[1:]


@pytest.fixture(scope="module")
def loaded(db: Target) -> Target:
    import datetime as dt

    with connect(db, autocommit=True) as conn:
        # the three assets end on 2024-06-30; the first also gets rows up to today, so only it is fresh
        today = dt.datetime.now(dt.timezone.utc).date()
        load_synthetic(conn, SyntheticConfig(n_assets=1, days=120, seed=4, end_date=today))
        load_synthetic(conn, SyntheticConfig(n_assets=3, days=120, seed=5, end_date=dt.date(2024, 6, 30)))
    return db


def _run(target: Target, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([*args, "--output-dir", str(tmp_path / "logs")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)


def _counts(target: Target) -> dict[str, int]:
    with psycopg.connect(target.url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in EMA_TABLES}


def test_emas_dry_run_changes_nothing(loaded: Target, tmp_path: Path) -> None:
    result = _run(loaded, tmp_path, sys.executable, "-m", "ta_lab2", "emas", "--dry-run", "--periods", "3,5")
    assert result.returncode == 0, result.stderr
    assert "ta_lab2.emas.cli.main multi_tf --ids all" in result.stdout and "--periods 3,5" in result.stdout
    assert all(v == 0 for v in _counts(loaded).values())


def test_daily_refresh_lists_stale_ids_and_refreshes_fresh_ones(loaded: Target, tmp_path: Path) -> None:
    script = ROOT / "src/ta_lab2/scripts/run_daily_refresh.py"
    result = _run(loaded, tmp_path, sys.executable, str(script), "--all", "--ids", "all")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "logs" / "run_daily_refresh-latest.json").read_text())
    assert sorted(summary["stale_ids"]) == STALE
    assert "EMAs skipped for 2 stale ids" in result.stdout and "--skip-stale-check" in result.stdout
    names = [c["name"] for c in summary["children"]]
    assert names[:6] == ["1d", "multi_tf", "cal_iso", "cal_us", "cal_anchor_iso", "cal_anchor_us"]
    # an incremental run starts v2, the shortest refresh of a new day, last
    assert names[6:] == [f"ema_{n}" for n in ("multi_tf", "cal_us", "cal_iso", "cal_anchor_us", "cal_anchor_iso", "v2")]
    assert all(c["status"] == "ok" for c in summary["children"])
    with psycopg.connect(loaded.url) as conn:
        ids = {r[0] for r in conn.execute("SELECT DISTINCT id FROM cmc_ema_multi_tf").fetchall()}
    assert ids == {FRESH}  # only the fresh asset got EMAs
    for child in summary["children"][6:]:
        assert child["summary"]["rows_inserted"] == _counts(loaded)[child["summary"]["table"]]


def test_a_historical_data_set_refreshes_whole_and_a_lagging_id_is_named(fresh_db: Target, tmp_path: Path) -> None:
    """Staleness is measured against the newest day in the source, not the wall clock: data
    that ends in 2024 gets its EMAs; an asset whose data stops ten days before the others is
    skipped, and the console says so, why, and how to include it."""
    import datetime as dt

    with connect(fresh_db, autocommit=True) as conn:
        load_synthetic(conn, SyntheticConfig(n_assets=3, days=90, seed=7, end_date=dt.date(2024, 6, 30)))
        lagging = asset_ids(3)[2]
        conn.execute("DELETE FROM cmc_price_histories7 WHERE id = %s AND \"timestamp\" > '2024-06-20'", (lagging,))
    result = _run(fresh_db, tmp_path, sys.executable, "-m", "ta_lab2", "refresh", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "logs" / "run_daily_refresh-latest.json").read_text())
    assert summary["stale_ids"] == [lagging] and summary["newest_source_day"].startswith("2024-06-30")
    assert f"EMAs skipped for 1 stale id: {lagging}" in result.stdout and "2024-06-30" in result.stdout
    with psycopg.connect(fresh_db.url) as conn:
        ids = {r[0] for r in conn.execute("SELECT DISTINCT id FROM cmc_ema_multi_tf").fetchall()}
    assert ids == set(asset_ids(3)[:2])


def test_skip_stale_check_refreshes_everyone(loaded: Target, tmp_path: Path) -> None:
    result = _run(loaded, tmp_path, sys.executable, "-m", "ta_lab2", "refresh", "--emas", "--skip-stale-check",
                  "--ids", "all")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(loaded.url) as conn:
        ids = {r[0] for r in conn.execute("SELECT DISTINCT id FROM cmc_ema_multi_tf").fetchall()}
    assert ids == set(IDS)


def test_emas_script_and_flags(loaded: Target, tmp_path: Path) -> None:
    script = ROOT / "src/ta_lab2/scripts/emas/run_all_ema_refreshes.py"
    wide = {**os.environ, "COLUMNS": "220"}
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=wide,
                               timeout=60).stdout
    for flag in ("--ids", "--db-url", "--only", "--periods", "--full-refresh", "--include-non-canonical",
                 "--num-processes", "--continue-on-error", "--verbose", "--dry-run"):
        assert flag in help_text, flag
    ok = _run(loaded, tmp_path, sys.executable, str(script), "--ids", str(FRESH), "--only", "v2", "--full-refresh")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (("emas", "--periods", "3,x"), "'x' is not an integer period"),
        (("emas", "--only", "nope"), "unknown name"),
        (("emas", "--ids", "424242"), "unknown id"),
        (("refresh", "--ids", "all"), "choose --bars, --emas or --all"),
    ],
)
def test_usage_errors_exit_2(loaded: Target, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    result = _run(loaded, tmp_path, sys.executable, "-m", "ta_lab2", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
