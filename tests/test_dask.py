"""The Dask executor (``--executor dask``) against a real cluster of this machine
(``distributed.LocalCluster``: two worker processes of one thread) and a database whose role
has a real password (the server checks it, as in tests/test_passwords.py).

* a full rebuild of the 12 tables through the cluster equals the local executor's, row for row
  (SQL ``EXCEPT`` both ways; only the write-time columns are left out), and leaves no shadow
  schema behind;
* a worker SIGKILLed mid-run — once right after a unit committed (the unit runs again
  elsewhere), once as a unit starts — still ends with every table equal to the local build;
* the password reaches the workers only through their environment: no task key, no task's
  pickled function and arguments, no scheduler or worker log, no output of the runner holds
  any form of it.

The kills are deterministic: a worker plugin kills its own worker process when a chosen task
reaches a chosen state, once (a marker file created with ``O_EXCL``).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="the Dask executor needs the 'distributed' package: pip install -e '.[dask]'")

from test_passwords import PASSWORD, WRONG, Server, _connects, _leaks, server  # noqa: F401

from ta_lab2.cluster.client import local_cluster
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.tables import PIPELINE_TABLES, state_table
from ta_lab2.load.service import load_synthetic
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

#: columns that say when a row was written, not what it holds
WRITE_TIME = {"ingested_at", "updated_at", "rejected_at", "watermark_ingested_at", "watermark_load_ts"}
PERIODS = "5,10"


class Recorder(distributed.diagnostics.plugin.SchedulerPlugin):
    """On the scheduler: every task's key and pickled run spec (its function and arguments)
    as it starts processing."""

    name = "ta_lab2_recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing":
            task = self.scheduler.tasks.get(key)
            self.seen.append((str(key), pickle.dumps(task.run_spec) if task is not None else b""))

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler


class KillOnce(distributed.diagnostics.plugin.WorkerPlugin):
    """On a worker: SIGKILL this worker process when a task whose key starts with ``prefix``
    goes from ``start`` to ``finish`` — once per marker file, whichever worker gets there first."""

    def __init__(self, prefix: str, start: str, finish: str, marker: str) -> None:
        self.prefix, self.start, self.finish, self.marker = prefix, start, finish, marker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if str(key).startswith(self.prefix) and (start, finish) == (self.start, self.finish):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def secured(server: Server) -> Target:  # noqa: F811 - the password server of tests/test_passwords.py
    """The password role's database, loaded with a small universe; its URL holds the password."""
    assert not _connects(server, WRONG)
    target = Target(server.uri(PASSWORD), "test")
    with connect(target, autocommit=True) as conn:
        load_synthetic(conn, SyntheticConfig(n_assets=3, days=400, seed=11))
    return target


@pytest.fixture(scope="module")
def cluster(secured: Target) -> Iterator[tuple[str, Any]]:
    """A two-worker cluster of this machine whose workers have the URL in their environment,
    the recorder on its scheduler, and a client of it."""
    with local_cluster(secured.url, 2) as address, distributed.Client(address, set_as_default=False) as client:
        client.register_plugin(Recorder())
        yield address, client


@pytest.fixture(scope="module")
def expected(secured: Target, tmp_path_factory: pytest.TempPathFactory) -> Target:
    """The 12 tables and their state built by the local executor, copied to schema ``expected``."""
    cwd = tmp_path_factory.mktemp("local")
    for command in (["bars", "--full-rebuild"], ["emas", "--full-refresh", "--periods", PERIODS]):
        result = _cli(secured, cwd, *command, "--ids", "all", "--executor", "local")
        assert result.returncode == 0, result.stderr
    with connect(secured, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA expected")
        for table in _all_tables():
            conn.execute(f"CREATE TABLE expected.{table} AS SELECT * FROM public.{table}")
    return secured


def _all_tables() -> list[str]:
    return [t for table in PIPELINE_TABLES for t in (table, state_table(table))]


def _cli(target: Target, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([sys.executable, "-m", "ta_lab2", *args, "--output-dir", str(cwd / "logs")], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900, check=False)


def _dask_rebuild(target: Target, cwd: Path, address: str) -> list[dict[str, Any]]:
    """Full rebuild of the 12 tables through the cluster; the runners' JSON summaries."""
    summaries = []
    for command, runner in ((["bars", "--full-rebuild"], "run_all_bar_builders"),
                            (["emas", "--full-refresh", "--periods", PERIODS], "run_all_ema_refreshes")):
        result = _cli(target, cwd, *command, "--ids", "all", "--executor", "dask", "--scheduler", address)
        assert result.returncode == 0, result.stdout + result.stderr
        assert not _leaks(result.stdout + result.stderr)
        summaries.append(json.loads((cwd / "logs" / f"{runner}-latest.json").read_text()))
    return summaries


def _differences(target: Target) -> dict[str, tuple[int, int]]:
    """Per table: (rows only in public, rows only in expected), write-time columns left out."""
    out = {}
    with connect(target, autocommit=True) as conn:
        for table in _all_tables():
            columns = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'expected' "
                "AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall() if r[0] not in WRITE_TIME]
            cols = ", ".join(f'"{c}"' for c in columns)
            one, other = (conn.execute(f"SELECT count(*) FROM (SELECT {cols} FROM {a}.{table} EXCEPT ALL "
                                       f"SELECT {cols} FROM {b}.{table}) d").fetchone()[0]
                          for a, b in (("public", "expected"), ("expected", "public")))
            if one or other:
                out[table] = (one, other)
    return out


def _shadows(target: Target) -> list[str]:
    with connect(target, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ta_lab2_shadow_%'").fetchall()]


def test_full_rebuild_on_dask_equals_local(expected: Target, cluster: tuple[str, Any], tmp_path: Path) -> None:
    address, _ = cluster
    summaries = _dask_rebuild(expected, tmp_path, address)
    assert _differences(expected) == {}
    assert _shadows(expected) == []
    children = [c for s in summaries for c in s["children"]]
    assert len(children) == 12 and all(c["status"] == "ok" for c in children)
    with connect(expected, autocommit=True) as conn:
        for child in children:
            table = child["summary"]["table"]
            assert child["summary"]["rows_inserted"] == conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_a_killed_worker_leaves_every_table_right(expected: Target, cluster: tuple[str, Any], tmp_path: Path) -> None:
    address, client = cluster
    after_commit = tmp_path / "killed-after-commit"
    at_start = tmp_path / "killed-at-start"
    client.register_plugin(KillOnce("cmc_price_bars_multi_tf_cal_iso-", "executing", "memory", str(after_commit)),
                           name="kill-after-commit")
    client.register_plugin(KillOnce("cmc_ema_multi_tf-", "ready", "executing", str(at_start)),
                           name="kill-at-start")
    try:
        _dask_rebuild(expected, tmp_path, address)
    finally:
        for name in ("kill-after-commit", "kill-at-start"):
            client.unregister_worker_plugin(name)
    assert after_commit.exists() and at_start.exists(), "a worker should have been killed twice"
    assert _differences(expected) == {}
    assert _shadows(expected) == []
    client.wait_for_workers(2, timeout=60)  # the nannies restarted the killed workers


def test_subset_rebuild_and_incremental_runs_on_dask(expected: Target, cluster: tuple[str, Any], tmp_path: Path) -> None:
    """A full rebuild of some ids (deleted, then written by the tasks), then incremental runs
    of every runner through the cluster: the tables stay what the local executor built."""
    address, _ = cluster
    ids = ",".join(str(i) for i in _ids(expected)[:2])
    for command in (["bars", "--full-rebuild", "--ids", ids], ["emas", "--full-refresh", "--ids", ids, "--periods", PERIODS],
                    ["refresh", "--bars", "--ids", "all"], ["emas", "--ids", "all", "--periods", PERIODS]):
        result = _cli(expected, tmp_path, *command, "--executor", "dask", "--scheduler", address)
        assert result.returncode == 0, result.stdout + result.stderr
    assert _differences(expected) == {}


def _ids(target: Target) -> list[int]:
    with connect(target, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT id FROM cmc_price_bars_1d ORDER BY 1").fetchall()]


def test_the_password_never_reaches_the_scheduler(expected: Target, cluster: tuple[str, Any], tmp_path: Path) -> None:
    """Everything the scheduler saw during this module's runs (tasks are forgotten once done,
    so the recorder kept them), and both kinds of logs."""
    address, client = cluster

    def recorded() -> list[tuple[str, bytes]]:
        return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins[Recorder.name].seen)

    if not any(key.startswith("cmc_ema_multi_tf-") for key, _ in recorded()):  # this test alone: run some tasks
        _dask_rebuild(expected, tmp_path, address)
    seen = recorded()
    assert len(seen) >= 12, "the recorder saw no tasks"
    keys = " ".join(key for key, _ in seen)
    assert "cmc_price_bars_multi_tf-" in keys and "cmc_ema_multi_tf-" in keys
    assert not _leaks(keys)
    for key, spec in seen:
        assert not _leaks(spec.decode("latin-1")), key
    logs = [client.get_scheduler_logs(), *client.get_worker_logs().values(),
            *client.get_worker_logs(nanny=True).values()]
    assert not _leaks(repr(logs))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert not _leaks(path.read_text(errors="replace")), path


def test_workers_of_a_run_cluster_start_with_the_units_code_loaded(secured: Target) -> None:
    """A cluster started for a run preloads, in each worker, the code its units run — the
    compiled EMA kernel only for a run that recomputes series."""
    from ta_lab2.runners.plan import worker_preload

    assert "ta_lab2.emas.kernel_preload" not in worker_preload(("bars", "emas"), kernel=False)
    assert worker_preload(("bars",), kernel=False) == ("pyarrow", "pgpq", "ta_lab2.bars.cli")

    def loaded() -> list[str]:
        return sorted(m for m in ("ta_lab2.bars.cli", "ta_lab2.emas.cli", "ta_lab2.emas.kernel_preload", "pgpq")
                      if m in sys.modules)

    with local_cluster(secured.url, 1, preload=worker_preload(("bars", "emas"), kernel=True)) as address, \
            distributed.Client(address, set_as_default=False) as client:
        assert list(client.run(loaded).values()) == [
            ["pgpq", "ta_lab2.bars.cli", "ta_lab2.emas.cli", "ta_lab2.emas.kernel_preload"]]


def test_executor_comes_from_option_or_environment() -> None:
    from ta_lab2.errors import UsageError
    from ta_lab2.flags import resolve_executor

    assert resolve_executor(None, None, {}) == ("local", None)
    assert resolve_executor(None, None, {"TA_LAB2_EXECUTOR": "dask"}) == ("dask", None)
    assert resolve_executor(None, None, {"TA_LAB2_EXECUTOR": "dask", "TA_LAB2_DASK_SCHEDULER": "tcp://h:8786"}) == (
        "dask", "tcp://h:8786")
    assert resolve_executor(None, "tcp://h:1", {}) == ("dask", "tcp://h:1")
    assert resolve_executor("local", None, {"TA_LAB2_DASK_SCHEDULER": "tcp://h:8786"}) == ("local", None)
    with pytest.raises(UsageError):
        resolve_executor("local", "tcp://h:1", {})
    with pytest.raises(UsageError):
        resolve_executor(None, None, {"TA_LAB2_EXECUTOR": "spark"})


def test_dry_run_shows_the_executor_and_no_password(secured: Target, tmp_path: Path) -> None:
    result = _cli(secured, tmp_path, "refresh", "--all", "--dry-run", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    assert "--executor dask --scheduler tcp://127.0.0.1:1" in result.stdout
    assert not _leaks(result.stdout + result.stderr)
