"""`ta-lab2 demo` end to end on a small universe: it must reach a PASS report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ta_lab2.db.connect import Target

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_demo_reaches_a_pass_report(fresh_db: Target, tmp_path: Path) -> None:
    env = {**os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "ta_lab2", "demo", "--db-url", fresh_db.url, "--assets", "2", "--days", "90",
         "--output-dir", str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("load 2 synthetic assets", "build the 6 bar tables", "refresh the 6 EMA tables", "baseline capture"):
        assert step in result.stdout
    (report,) = tmp_path.glob("baseline-*.json")
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and len(data["tables"]) == 12
    assert (tmp_path / report.name.replace(".json", ".html")).exists()
    again = subprocess.run([sys.executable, "-m", "ta_lab2", "demo", "--db-url", fresh_db.url], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds price data" in again.stderr  # never on someone's data


def test_the_demo_says_what_to_run_next_and_those_commands_work(pg_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Without --db-url the demo builds its own embedded database and ends by printing the
    next commands; they run on its data (`--database ta_lab2_demo`), where a plain command
    would look at the default database."""
    env = {**os.environ}
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "demo", "--assets", "2", "--days", "60", "--output-dir",
                             str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    nexts = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("ta-lab2 ")]
    assert "ta-lab2 status --database ta_lab2_demo" in nexts, result.stdout
    for line in nexts:
        ran = subprocess.run([sys.executable, "-m", "ta_lab2", *line.split()[1:], "--output-dir", str(tmp_path / "next")]
                             if "capture" in line else [sys.executable, "-m", "ta_lab2", *line.split()[1:]],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, (line, ran.stdout + ran.stderr)
        if line.startswith("ta-lab2 status"):
            assert "cmc_ema_multi_tf" in ran.stdout and "not initialised" not in ran.stdout
    both = subprocess.run([sys.executable, "-m", "ta_lab2", "status", "--database", "ta_lab2_demo", "--db-url",
                           "embedded"], env=env, capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not both" in both.stderr
