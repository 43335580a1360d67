"""The bar runner end to end (spec 04): stop or continue, exit codes, dry run, usage errors,
the builders' own commands, URL never in argv or output. How children start and are
scheduled is tests/test_launch.py's."""

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
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

BAR_TABLES = [
    "cmc_price_bars_1d", "cmc_price_bars_multi_tf", "cmc_price_bars_multi_tf_cal_iso",
    "cmc_price_bars_multi_tf_cal_us", "cmc_price_bars_multi_tf_cal_anchor_iso", "cmc_price_bars_multi_tf_cal_anchor_us",
]


# ---------------------------------------------------------------- the bars runner, end to end
SECRET = "Sup3rSecretPw"


@pytest.fixture(scope="module")
def loaded(db: Target) -> Target:
    with connect(db, autocommit=True) as conn:
        load_synthetic(conn, SyntheticConfig(n_assets=2, days=150, seed=3))
    # trust authentication ignores the password, so a URL carrying one still connects
    return Target(db.url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@"), "test")


def _cli(target: Target, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([sys.executable, "-m", "ta_lab2", *args, "--output-dir", str(tmp_path / "logs")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def _counts(target: Target) -> dict[str, int]:
    with psycopg.connect(target.url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in BAR_TABLES}


def _no_secret_anywhere(result: subprocess.CompletedProcess[str], folder: Path) -> None:
    assert SECRET not in result.stdout and SECRET not in result.stderr
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_dry_run_changes_nothing(loaded: Target, tmp_path: Path) -> None:
    before = _counts(loaded)
    result = _cli(loaded, tmp_path, "bars", "--ids", "all", "--full-rebuild", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "ta_lab2.bars.cli.main 1d --ids all" in result.stdout and "dry run" in result.stdout
    assert "ta_lab2.bars.cli.main multi_tf --ids all" in result.stdout and "(after 1d)" in result.stdout
    assert _counts(loaded) == before
    _no_secret_anywhere(result, tmp_path)


def test_full_run_summary_matches_tables(loaded: Target, tmp_path: Path) -> None:
    result = _cli(loaded, tmp_path, "bars", "--ids", "all", "--full-rebuild")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "logs" / "run_all_bar_builders-latest.json").read_text())
    counts = _counts(loaded)
    assert [c["name"] for c in summary["children"]] == ["1d", "multi_tf", "cal_iso", "cal_us", "cal_anchor_iso", "cal_anchor_us"]
    for child, table in zip(summary["children"], BAR_TABLES):
        assert child["status"] == "ok"
        assert child["summary"]["rows_inserted"] == counts[table], table
    _no_secret_anywhere(result, tmp_path)
    again = _cli(loaded, tmp_path, "bars", "--ids", "all")
    assert again.returncode == 0 and _counts(loaded) == counts


def test_failed_builder_stops_the_run_unless_continue(loaded: Target, tmp_path: Path) -> None:
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        # every insert into this table now fails: the builder child errors out
        conn.execute("ALTER TABLE cmc_price_bars_multi_tf_cal_iso ADD CONSTRAINT boom CHECK (false) NOT VALID")
    try:
        stop = _cli(loaded, tmp_path, "bars", "--ids", "all", "--full-rebuild")
        assert stop.returncode == 1
        summary = json.loads((tmp_path / "logs" / "run_all_bar_builders-latest.json").read_text())
        status = {c["name"]: c["status"] for c in summary["children"]}
        assert status["1d"] == "ok" and status["cal_iso"] == "failed"
        # builders run concurrently after 1d: those already running when cal_iso failed finish,
        # none starts afterwards (which ones were running depends on timing)
        assert set(status.values()) <= {"ok", "failed", "skipped"} and list(status.values()).count("failed") == 1
        for child in summary["children"]:
            if child["status"] == "skipped":
                assert child["message"] == "skipped after an earlier failure"
        assert "cal_iso: failed" in stop.stderr and "boom" in stop.stderr  # the child's output is shown
        go_on = _cli(loaded, tmp_path, "bars", "--ids", "all", "--full-rebuild", "--continue-on-error",
                     "--builders", "cal_iso,cal_us")
        assert go_on.returncode == 1
        summary = json.loads((tmp_path / "logs" / "run_all_bar_builders-latest.json").read_text())
        assert [c["status"] for c in summary["children"]] == ["failed", "ok"]
        _no_secret_anywhere(go_on, tmp_path)
    finally:
        with psycopg.connect(loaded.url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cmc_price_bars_multi_tf_cal_iso DROP CONSTRAINT boom")


def test_builders_with_worker_processes_run_from_the_fork_server(loaded: Target, tmp_path: Path) -> None:
    """A forked child can itself start (spawned) worker processes; the result is the same."""
    before = _counts(loaded)
    result = _cli(loaded, tmp_path, "bars", "--ids", "all", "--full-rebuild", "--builders", "1d,cal_us",
                  "--num-processes", "2", "--log-level", "DEBUG")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "logs" / "run_all_bar_builders-latest.json").read_text())
    assert [(c["name"], c["status"]) for c in summary["children"]] == [("1d", "ok"), ("cal_us", "ok")]
    assert _counts(loaded) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--ids", "999999"), "unknown id"),
        (("--ids", "abc"), "'abc' is not an integer id"),
        (("--ids", "all", "--builders", "weekly"), "--builders: unknown name(s) weekly"),
        (("--ids", "all", "--tz", "Mars/Base"), "not a known time zone"),
        ((), "--ids is required"),
    ],
)
def test_usage_errors_exit_2(loaded: Target, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    result = _cli(loaded, tmp_path, "bars", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr


@pytest.mark.parametrize(
    "module, args, needle",
    [
        ("ta_lab2.bars", ("weekly",), "invalid choice: 'weekly'"),
        ("ta_lab2.bars", ("1d", "--num-processes", "0"), "--num-processes: '0' is less than 1"),
        ("ta_lab2.bars", ("1d", "--wait-lock", "soon"), "--wait-lock: 'soon' is not a valid float"),
        ("ta_lab2.bars", ("1d", "--bogus"), "unrecognized arguments: --bogus"),
        ("ta_lab2.bars", ("1d", "--ids", "abc"), "error: --ids: 'abc' is not an integer id"),
        ("ta_lab2.bars", ("1d", "--tz", "Mars/Base"), "not a known time zone"),
        ("ta_lab2.bars", ("1d", "--log-level", "LOUD"), "--log-level: 'LOUD' is not one of"),
        ("ta_lab2.emas", ("v3",), "invalid choice: 'v3'"),
        ("ta_lab2.emas", ("v2", "--periods", "ten"), "--periods"),
        ("ta_lab2.emas", ("v2", "--ids", "999999"), "unknown id"),
    ],
)
def test_child_command_usage_errors_exit_2(loaded: Target, tmp_path: Path, module: str, args: tuple[str, ...],
                                           needle: str) -> None:
    """The runners' child commands parse their options without Typer (work/command.py) but
    keep the exit-code contract: 2 and a message naming the option for a usage error."""
    env = {**os.environ, "TA_LAB2_DB_URL": loaded.url}
    result = subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_child_command_failure_exits_1_with_the_cause(loaded: Target, tmp_path: Path) -> None:
    """An unexpected error in a child is one redacted line and exit 1; ``--debug`` adds the
    traceback."""
    env = {**os.environ, "TA_LAB2_DB_URL": loaded.url}
    with psycopg.connect(loaded.url, autocommit=True) as conn:
        conn.execute("ALTER TABLE cmc_price_bars_1d ADD CONSTRAINT boom CHECK (false) NOT VALID")
    try:
        argv = [sys.executable, "-m", "ta_lab2.bars", "1d", "--ids", "all", "--full-rebuild"]
        plain = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert plain.returncode == 1, (plain.stdout, plain.stderr)
        assert "internal error: CheckViolation" in plain.stderr and "boom" in plain.stderr
        assert "Traceback" not in plain.stderr
        debug = subprocess.run([*argv, "--debug"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "boom" in debug.stderr
        assert SECRET not in plain.stderr + debug.stderr
    finally:
        with psycopg.connect(loaded.url, autocommit=True) as conn:
            conn.execute("ALTER TABLE cmc_price_bars_1d DROP CONSTRAINT boom")


def test_script_path_runs(loaded: Target, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "src/ta_lab2/scripts/bars/run_all_bar_builders.py"
    env = {**os.environ, "TA_LAB2_DB_URL": loaded.url}
    result = subprocess.run([sys.executable, str(script), "--ids", "all", "--dry-run", "--output-dir", str(tmp_path)],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "planned" in result.stdout
    wide = {**os.environ, "COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                               env=wide).stdout
    for flag in ("--ids", "--db-url", "--builders", "--skip", "--full-rebuild", "--include-non-canonical",
                 "--num-processes", "--tz", "--continue-on-error", "--verbose", "--dry-run"):
        assert flag in help_text, flag


def test_refresher_order_names_every_refresher_once() -> None:
    from ta_lab2.emas.registry import REFRESHERS
    from ta_lab2.runners.plan import REFRESHER_ORDER

    assert sorted(REFRESHER_ORDER) == sorted(REFRESHERS)


def test_the_daily_refresh_runs_in_a_schema_of_its_own(db: Target, tmp_path: Path) -> None:
    """`refresh --schema S`, like `bars` and `emas`: its staleness check, ids and children all
    work on S; nothing is written to public."""
    env = {**os.environ, "TA_LAB2_DB_URL": db.url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ta_lab2", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)

    def public_rows() -> dict[str, int | None]:  # None: no such table in public
        with psycopg.connect(db.url) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]
                    if conn.execute("SELECT to_regclass(%s)", (f"public.{t}",)).fetchone()[0] else None
                    for t in BAR_TABLES}

    before = public_rows()
    loaded = run("load", "--synthetic", "1", "--days", "60", "--schema", "daily_s")
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    result = run("refresh", "--all", "--schema", "daily_s", "--output-dir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT count(*) FROM daily_s.cmc_ema_multi_tf").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM daily_s.cmc_price_bars_1d").fetchone()[0] == 60
    assert public_rows() == before
