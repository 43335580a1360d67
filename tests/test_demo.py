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
