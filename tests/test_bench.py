"""Smoke test of `ta-lab2 bench` on a tiny scenario: the output structure, never timings
(speed is measured by the command itself, not asserted in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.db, pytest.mark.slow]


def test_bench_tiny_scenario_structure(pg_server, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    out = tmp_path / "bench.json"
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "bench", "--scenario", "tiny", "--json", str(out),
                             "--output-dir", str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bench: tiny" in result.stdout and "full compare" in result.stdout
    (data,) = json.loads(out.read_text())
    assert data["scenario"] == "tiny"
    assert [t["name"] for t in data["tables"]][:1] == ["cmc_price_bars_1d"] and len(data["tables"]) == 12
    assert len(data["raw_copy"]) == 12 and all(r["rows"] == t["rows"] for r, t in zip(data["raw_copy"], data["tables"]))
    assert data["rows"] == sum(t["rows"] for t in data["tables"]) > 0
    assert data["capture_verdict"] == "PASS"
    assert set(data["ratios"]) == {"pipeline_rate_over_raw_copy", "incremental_over_full", "capture_over_full"}
    runs = data["incremental_runs_s"]  # one refresh per new day; the bar uses their median
    assert len(runs) == 3 and all(r > 0 for r in runs) and data["incremental_s"] == sorted(runs)[1]
    assert "median of" in result.stdout
    assert data["compare"]["rows"] == 2000 and data["peak_rss_mb"] > 0


def test_bench_rejects_unknown_scenario(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "bench", "--scenario", "huge"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--scenario" in result.stderr
