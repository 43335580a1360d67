"""The real ``ta-lab2`` console command (``python -m ta_lab2``) for init / load / status / db:
exit codes (0 ok, 1 rejected rows, 2 usage or unusable input), messages naming file:line and
reason, no password in any output, and the zero-configuration embedded server."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from cli_helpers import Done, base_env, run, run_all

from ta_lab2.db.connect import Target, connect
from ta_lab2.db.schema import ensure_schema

pytestmark = pytest.mark.db

GEN_HEADER = "id,timestamp,open,high,low,close"
SECRET = "SuperSecret123"
BAD_URL = f"postgresql://u:{SECRET}@127.0.0.1:1/nodb"


def count(target: Target, table: str = "cmc_price_histories7") -> int:
    with connect(target) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def status_rows(stdout: str, table: str) -> int:
    """Row count shown for ``table`` in the status table (thousands separated by commas)."""
    match = re.search(rf"^\W*{table}\W+([\d,]+)\s", stdout, re.MULTILINE)
    assert match, stdout
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def env(db: Target) -> dict[str, str]:
    return base_env(TA_LAB2_DB_URL=db.url)


@pytest.fixture(scope="module")
def initialised(db: Target) -> Target:
    with connect(db) as conn:
        ensure_schema(conn)
    return db


@pytest.mark.slow
def test_init_twice_load_synthetic_and_status(fresh_db: Target, tmp_path: Path) -> None:
    db, env = fresh_db, base_env(TA_LAB2_DB_URL=fresh_db.url)
    for _ in range(2):
        done = run(["init"], tmp_path, env)
        assert done.returncode == 0, done.stderr
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ta_lab2_schema_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM dim_period").fetchone()[0] == 17

    before = count(db)
    done = run(["load", "--synthetic", "3", "--days", "200", "--seed", "7"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    added = count(db) - before
    assert added >= 3 * 70  # 3 assets of at least 35 % of 200 days, minus a few gap days
    assert f"loaded {added}, updated 0, unchanged 0, rejected 0" in done.stdout
    with connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM dim_assets ORDER BY id").fetchall()]
    assert ids == [9_000_001, 9_000_002, 9_000_003]  # the documented synthetic id range

    status, as_json = run_all([(["status"], tmp_path, env), (["status", "--json"], tmp_path, env)])
    assert status.returncode == 0, status.stderr
    assert status_rows(status.stdout, "cmc_price_histories7") == count(db)
    assert status_rows(status.stdout, "dim_assets") == count(db, "dim_assets")

    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    tables = {t["table"]: t for t in data["tables"]}
    assert tables["cmc_price_histories7"]["rows"] == count(db)
    assert tables["cmc_price_histories7"]["exists"] is True


def test_malformed_row_exit_1_names_file_line_and_reason(
    initialised: Target, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        f"{GEN_HEADER}\n"
        "4242,2024-01-01T23:59:59.999Z,1,2,0.5,1.5\n"
        "4242,2024-01-02T23:59:59.999Z,1,2,0.5,12x\n"
        "4242,2024-01-03T23:59:59.999Z,1,2,0.5,1.75\n"
    )
    done = run(["load", str(path)], tmp_path, env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "prices.csv:3" in done.stderr
    assert "close" in done.stderr and "12x" in done.stderr
    assert "loaded 2, updated 0, unchanged 0, rejected 1" in done.stdout
    with connect(initialised) as conn:
        assert conn.execute(
            "SELECT close FROM cmc_price_histories7 WHERE id = 4242 ORDER BY 1"
        ).fetchall() == [
            (1.5,),
            (1.75,),
        ]
        assert conn.execute(
            "SELECT line FROM load_rejects WHERE source_file = 'prices.csv'"
        ).fetchall() == [(3,)]


def test_wrong_header_exit_2_nothing_written(
    initialised: Target, env: dict[str, str], tmp_path: Path
) -> None:
    good = tmp_path / "good.csv"
    good.write_text(f"{GEN_HEADER}\n4343,2024-01-01T23:59:59.999Z,1,2,0.5,1.5\n")
    bad = tmp_path / "wrong.csv"
    bad.write_text("id,when,price\n4343,2024-01-02,1.5\n")
    tables = ("cmc_price_histories7", "dim_assets", "load_rejects")
    before = [count(initialised, t) for t in tables]
    done = run(["load", str(good), str(bad)], tmp_path, env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "wrong.csv" in done.stderr
    assert "Traceback" not in done.stderr
    assert [count(initialised, t) for t in tables] == before


def test_unknown_cmc_name_exit_2(initialised: Target, env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "cmc.csv"
    path.write_text(
        "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp\n"
        "2024-01-01T00:00:00.000Z;2024-01-01T23:59:59.999Z;2024-01-01T10:00:00.000Z;"
        "2024-01-01T03:00:00.000Z;Nosuchcoin;1;2;0.5;1.5;10;20;2024-01-01T23:59:59.999Z\n"
    )
    before = count(initialised)
    done = run(["load", str(path)], tmp_path, env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Nosuchcoin" in done.stderr and "cmc.csv" in done.stderr
    assert count(initialised) == before


CMC_HEADER = "timeOpen;timeClose;timeHigh;timeLow;name;open;high;low;close;volume;marketCap;timestamp"


def _cmc_day(day: int, name: str, sep: str = ";") -> str:
    d = f"2024-01-0{day}"
    return sep.join([f"{d}T00:00:00.000Z", f"{d}T23:59:59.999Z", f"{d}T10:00:00.000Z", f"{d}T03:00:00.000Z", name,
                     "100", "110", "90", "105", "1000", "2000", f"{d}T23:59:59.999Z"])


@pytest.mark.slow
def test_an_id_of_another_asset_is_refused_then_forced(initialised: Target, env: dict[str, str], tmp_path: Path) -> None:
    btc = tmp_path / "btc.csv"
    btc.write_text(f"{CMC_HEADER}\n{_cmc_day(1, 'Bitcoin')}\n")
    eth = tmp_path / "eth.csv"
    eth.write_text(f"{CMC_HEADER}\n{_cmc_day(2, 'Ethereum')}\n")
    assert run(["load", str(btc), "--id", "1"], tmp_path, env).returncode == 0
    tables = ("cmc_price_histories7", "dim_assets", "load_rejects")
    before = [count(initialised, t) for t in tables]
    refused = run(["load", str(eth), "--id", "1"], tmp_path, env)
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    for words in ("eth.csv", "id 1 is 'Bitcoin'", "calls it 'Ethereum'", "--force"):
        assert words in refused.stderr, (words, refused.stderr)
    assert "Traceback" not in refused.stderr
    assert [count(initialised, t) for t in tables] == before
    forced = run(["load", str(eth), "--id", "1", "--force"], tmp_path, env)
    assert forced.returncode == 0, forced.stderr
    assert "loaded 1, updated 0, unchanged 0, rejected 0" in forced.stdout
    with connect(initialised) as conn:
        assert conn.execute("SELECT name FROM dim_assets WHERE id = 1").fetchone() == ("Bitcoin",)


@pytest.mark.slow
def test_loader_rough_edges(initialised: Target, env: dict[str, str], tmp_path: Path) -> None:
    """A CoinMarketCap file saved with ',' is named as such; plain dates are the UTC day's close;
    rows the 1D builder will reject or repair are counted in a warning that says where to look."""
    commas = tmp_path / "cmc_commas.csv"
    commas.write_text(f"{CMC_HEADER.replace(';', ',')}\n{_cmc_day(1, 'Bitcoin', ',')}\n")
    dates = tmp_path / "dates.csv"
    dates.write_text(f"{GEN_HEADER}\n4646,2026-01-01,1,2,0.5,1.5\n4646,2026-01-02,1,2,0.5,1.5\n")
    odd = tmp_path / "odd.csv"
    odd.write_text(f"{GEN_HEADER}\n4747,2024-01-01T23:59:59.999Z,-1,2,0.5,1.5\n"
                   "4747,2024-01-02T23:59:59.999Z,1,2,0,1.5\n4747,2024-01-03T23:59:59.999Z,1,0.5,2,1.5\n"
                   "4747,2024-01-04T23:59:59.999Z,1,2,0.5,1.5\n")
    # The two loads that write take the source lock, which refuses a second writer at once: they
    # run one after the other (the comma file is refused before any lock).
    comma_run, dates_run = run_all([(["load", str(p)], tmp_path, env) for p in (commas, dates)])
    odd_run = run(["load", str(odd)], tmp_path, env)

    assert comma_run.returncode == 2, (comma_run.stdout, comma_run.stderr)
    assert "looks like a CoinMarketCap header with ',' — the format uses ';'" in comma_run.stderr
    assert "missing" not in comma_run.stderr

    assert dates_run.returncode == 0, dates_run.stderr
    with connect(initialised) as conn:
        got = conn.execute("SELECT to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') "
                           "FROM cmc_price_histories7 WHERE id = 4646 ORDER BY 1").fetchall()
    assert got == [("2026-01-01 23:59:59.999",), ("2026-01-02 23:59:59.999",)]

    assert odd_run.returncode == 0, odd_run.stderr
    assert "loaded 4, updated 0, unchanged 0, rejected 0" in odd_run.stdout
    assert "2 row(s) with a price ≤ 0" in odd_run.stderr and "reject" in odd_run.stderr
    assert "1 row(s) with high below low" in odd_run.stderr and "repair" in odd_run.stderr
    assert "cmc_price_bars_1d_rejects" in odd_run.stderr

    # ... and the bar runner says how many it rejected and where they are, with their reasons
    bars = run(["bars", "--ids", "4747", "--builders", "1d", "--output-dir", str(tmp_path / "logs")], tmp_path, env)
    assert bars.returncode == 0, bars.stderr
    with connect(initialised) as conn:
        reasons = conn.execute("SELECT reason FROM cmc_price_bars_1d_rejects WHERE id = 4747").fetchall()
    assert reasons == [("non_positive_price",)] * 2
    assert "1d rejected 2 source rows, the first:" in bars.stderr and "cmc_price_bars_1d_rejects" in bars.stderr


USAGE_ERRORS = [  # (argv, words stderr must contain)
    (["load", "missing.csv"], ["missing.csv"]),
    (["load"], ["--synthetic"]),
    (["load", "--synthetic", "0"], ["--synthetic"]),
    (["load", "--synthetic", "1000000"], ["--synthetic", "9,000,001 to 9,999,999"]),
    (["load", "--synthetic", "2", "--days", "abc"], ["--days"]),
    (["load", "--synthetic", "2", "--end-date", "2024-13-45"], ["--end-date", "2024-13-45"]),
    (["load", "--synthetic", "2", "--log-level", "LOUD"], ["--log-level", "LOUD"]),
    (["load", "--synthetic", "2", "--no-such-option"], ["--no-such-option"]),
    (["load", "--synthetic", "2", "gen.csv"], ["--synthetic"]),
    (["load", "--id", "5", "gen.csv"], ["--id"]),
    (["status", "--bogus"], ["--bogus"]),
]
USAGE_IDS = [" ".join(a) for a, _ in USAGE_ERRORS]


@pytest.fixture(scope="module")
def usage_runs(
    initialised: Target, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Done], tuple[int, ...], tuple[int, ...]]:
    """Every usage-error command (run concurrently), with table counts before and after."""
    cwd = tmp_path_factory.mktemp("usage")
    (cwd / "gen.csv").write_text(f"{GEN_HEADER}\n4545,2024-01-01T23:59:59.999Z,1,2,0.5,1.5\n")
    tables = ("cmc_price_histories7", "dim_assets", "load_rejects")
    before = tuple(count(initialised, t) for t in tables)
    results = run_all([(args, cwd, env) for args, _ in USAGE_ERRORS])
    after = tuple(count(initialised, t) for t in tables)
    return dict(zip(USAGE_IDS, results, strict=True)), before, after


@pytest.mark.slow
@pytest.mark.parametrize(("args", "words"), USAGE_ERRORS, ids=USAGE_IDS)
def test_usage_errors_exit_2_and_change_nothing(
    usage_runs: tuple[dict[str, Done], tuple[int, ...], tuple[int, ...]],
    args: list[str],
    words: list[str],
) -> None:
    results, before, after = usage_runs
    done = results[" ".join(args)]
    assert done.returncode == 2, (done.stdout, done.stderr)
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert "Traceback" not in done.stderr
    assert after == before


# --------------------------------------------------------------------------- secrets
def _assert_no_secret(done: Done, cwd: Path) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert SECRET not in done.stdout and SECRET not in done.stderr
    assert "***" in done.stdout + done.stderr
    assert (cwd / ".logs").is_dir()  # the command did set up its log file ...
    written = [p for p in cwd.rglob("*") if p.is_file() and p.name != "db_config.env"]
    assert any(p.parent.name == ".logs" for p in written)
    for path in written:  # ... and nothing it wrote holds the password
        assert SECRET not in path.read_text(errors="replace"), path


SECRET_CASES = [
    ("--db-url", ["status"]),
    ("TA_LAB2_DB_URL", ["status"]),
    ("TARGET_DB_URL", ["status"]),
    ("db_config.env", ["status"]),
    ("TA_LAB2_DB_URL", ["load", "--synthetic", "1", "--days", "5"]),
    ("?password=", ["status"]),
]
SECRET_IDS = [f"{where}-{command[0]}" for where, command in SECRET_CASES]


@pytest.fixture(scope="module")
def secret_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Done, Path]]:
    """Commands pointed at an unreachable server whose URL holds a password (run concurrently)."""
    jobs, cwds = [], []
    for case, (where, command) in zip(SECRET_IDS, SECRET_CASES, strict=True):
        cwd = tmp_path_factory.mktemp("secret")
        env = base_env(TA_LAB2_HOME=str(cwd / "home"))
        args = [
            "--debug",
            *command,
            "--log-level",
            "DEBUG",
        ]  # tracebacks and DEBUG lines logged too
        if where == "--db-url":
            args += ["--db-url", BAD_URL]
        elif where == "?password=":
            args += ["--db-url", f"postgresql://u@127.0.0.1:1/nodb?password={SECRET}"]
        elif where == "db_config.env":
            (cwd / "db_config.env").write_text(f"# test\nTARGET_DB_URL={BAD_URL}\n")
        else:
            env[where] = BAD_URL
        jobs.append((args, cwd, env))
        cwds.append(cwd)
    results = run_all(jobs)
    return dict(zip(SECRET_IDS, zip(results, cwds), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("case", SECRET_IDS)
def test_password_never_shown(secret_runs: dict[str, tuple[Done, Path]], case: str) -> None:
    done, cwd = secret_runs[case]
    _assert_no_secret(done, cwd)
    if not case.startswith("?"):
        assert "postgresql://u:***@127.0.0.1:1/nodb" in done.stderr


# --------------------------------------------------------------------------- zero configuration
@pytest.mark.slow
def test_no_configuration_uses_the_embedded_server(tmp_path: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="tlh", dir="/tmp"))
    env = base_env(TA_LAB2_HOME=str(home), TA_LAB2_EMBEDDED_NO_FSYNC="1")
    try:
        init = run(["init"], tmp_path, env)
        assert init.returncode == 0, init.stderr
        load = run(["load", "--synthetic", "5", "--days", "1000", "--seed", "1"], tmp_path, env)
        assert load.returncode == 0, load.stderr
        match = re.search(r"loaded (\d+), updated 0, unchanged 0, rejected 0", load.stdout)
        assert match, load.stdout
        loaded = int(match.group(1))
        assert loaded >= 5 * 350  # every asset has at least 35 % of 1000 days, minus gap days
        status = run(["status"], tmp_path, env)
        assert status.returncode == 0, status.stderr
        assert status_rows(status.stdout, "cmc_price_histories7") == loaded
        assert status_rows(status.stdout, "dim_assets") == 5
        assert (home / "pgdata" / "PG_VERSION").is_file()

        stop = run(["db", "stop"], tmp_path, env)
        assert stop.returncode == 0, stop.stderr
        state = run(["db", "status"], tmp_path, env)
        assert state.returncode == 0, state.stderr
        assert re.search(r"running:\s*False", state.stdout), state.stdout
        assert str(home) in state.stdout
    finally:
        run(["db", "stop"], tmp_path, env)
        shutil.rmtree(home, ignore_errors=True)


def test_a_quiet_console_and_everything_in_the_log_file(fresh_db: Target, tmp_path: Path) -> None:
    """By default the console shows tables and sentences, no log lines and no Python reprs;
    the log file keeps the INFO lines. A rejected source day is shown with its reason."""
    env = base_env(TA_LAB2_DB_URL=fresh_db.url)
    load = run(["load", "--synthetic", "2", "--days", "40", "--defect-rate", "0"], tmp_path, env)
    assert load.returncode == 0, load.stderr
    with connect(fresh_db, autocommit=True) as conn:  # one bad price: the 1D builder rejects it
        conn.execute("UPDATE cmc_price_histories7 SET open = -1 WHERE (id, \"timestamp\") = "
                     "(SELECT id, max(\"timestamp\") FROM cmc_price_histories7 GROUP BY id ORDER BY id LIMIT 1)")
    bars = run(["bars", "--ids", "all"], tmp_path, env)
    assert bars.returncode == 0, bars.stderr
    for out in (load, bars):
        text = out.stdout + out.stderr
        assert not re.search(r"\b(INFO|DEBUG)\b", text), text
        assert "UpsertCounts(" not in text and "{'" not in text and "Counts(" not in text
    assert "1d rejected 1 source row, the first:" in bars.stderr and "non_positive_price" in bars.stderr
    assert "cmc_price_bars_1d_rejects" in bars.stderr
    log = (tmp_path / ".logs" / "ta_lab2.log").read_text()
    assert " INFO " in log and "rows read" in log
