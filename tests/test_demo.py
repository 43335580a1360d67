"""`ta-lab2 demo` end to end on a small universe: it must reach a PASS report, end with next
commands that work on its data, and never run on a database that already holds prices.

One demo run serves the module (it is the costliest command a test runs): the checks read
its console, its reports and its database."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.db, pytest.mark.slow]


def _ta_lab2(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ta_lab2", *args], env={**os.environ}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(pg_server, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]  # noqa: ANN001
    """``ta-lab2 demo`` without --db-url: its own database on the embedded server."""
    out = tmp_path_factory.mktemp("demo")
    result = _ta_lab2(out, "demo", "--assets", "2", "--days", "90", "--output-dir", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, out


def test_demo_reaches_a_pass_report(demo) -> None:  # noqa: ANN001 - fixture
    result, out = demo
    for step in ("load 2 synthetic assets", "build the 6 bar tables", "refresh the 6 EMA tables", "baseline capture"):
        assert step in result.stdout
    (report,) = out.glob("baseline-*.json")
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and len(data["tables"]) == 12
    assert (out / report.name.replace(".json", ".html")).exists()


def test_the_demo_never_runs_on_a_database_holding_prices(demo, pg_server, tmp_path: Path) -> None:  # noqa: ANN001
    """--db-url names a database of the user's: one that holds price data (here, the demo's
    own) is refused before anything is written."""
    again = _ta_lab2(tmp_path, "demo", "--db-url", pg_server.url("ta_lab2_demo"), timeout=120)
    assert again.returncode == 2 and "already holds price data" in again.stderr


def test_the_demo_says_what_to_run_next_and_those_commands_work(demo, tmp_path: Path) -> None:  # noqa: ANN001
    """The demo ends by printing the next commands, spelled the way it was run (here ``python
    -m ta_lab2``, by the interpreter's path); run exactly as printed, they work on its data
    (`--database ta_lab2_demo`), where a plain command would look at the default database."""
    result, _ = demo
    lines = result.stdout.splitlines()
    nexts = [line.strip() for line in lines[lines.index("next, on the demo's data:") + 1:] if line.strip()]
    assert f"{sys.executable} -m ta_lab2 status --database ta_lab2_demo" in nexts, result.stdout
    assert len(nexts) == 3
    for line in nexts:
        extra = ["--output-dir", str(tmp_path / "next")] if "capture" in line else []
        ran = subprocess.run([*shlex.split(line), *extra], env={**os.environ}, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        assert ran.returncode == 0, (line, ran.stdout + ran.stderr)
        if " status " in line:
            assert "cmc_ema_multi_tf" in ran.stdout and "not initialised" not in ran.stdout
    both = _ta_lab2(tmp_path, "status", "--database", "ta_lab2_demo", "--db-url", "embedded", timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr


def test_the_next_commands_are_spelled_as_the_program_was_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ta-lab2`` when that name on PATH is this program; else the path it was run by (a
    virtual environment that is not activated)."""
    from ta_lab2.cli.render import command_name

    program = tmp_path / "venv" / "bin" / "ta-lab2"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(program), "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert command_name() == str(program)
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")
    assert command_name() == "ta-lab2"
