"""Smoke tests of `ta-lab2 bench` on tiny scenarios: the output structure, never timings
(speed is measured by the command itself, not asserted in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ta_lab2.bench_scenarios import listing_lengths


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    """Run ``ta-lab2 bench`` through the real CLI; it exits 0, or 1 when only timing bars were
    missed (timings on a tiny universe are all fixed costs: they are measured, not asserted)."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "bench", *args, "--json", str(out),
                             "--output-dir", str(tmp_path)], check=False, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0 or (result.returncode == 1 and "speed bars were not met" in result.stderr), \
        result.stdout + result.stderr
    return result, json.loads(out.read_text())


def _changed_price_phase(data: dict) -> None:
    """The capture after one changed price fails with exactly that one root cause, and is barred."""
    assert data["capture_verdict"] == "PASS" and data["changed_capture_verdict"] == "FAIL"
    first_id, day = 9_000_001, data["changed_price"].split(" on ")[1]
    assert data["changed_price"].startswith(f"id {first_id} on ")
    assert data["changed_root_causes"] == [f"source_revised cmc_price_histories7 id {first_id} {day}"]
    bars = {b["description"]: b for b in data["bars"]}
    assert bars["capture with one changed price finds it"]["met"] is True
    assert "capture with one changed price" in bars and data["changed_capture_s"] > 0
    assert data["ratios"]["changed_capture_over_capture"] == data["changed_capture_s"] / data["capture_s"]


@pytest.fixture(scope="module")
def universe_run(pg_server, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]  # noqa: ANN001
    """One bench invocation for the module: a tiny universe and, first, its reference ``tiny``
    (instead of ``upstream``, to stay fast) — the tiny scenario's own structure is checked on
    that reference run."""
    return _bench(tmp_path_factory.mktemp("bench"), "--scenario", "universe", "--assets", "5", "--days", "60",
                  "--reference", "tiny")


@pytest.mark.db
@pytest.mark.slow
def test_bench_tiny_scenario_structure(universe_run) -> None:  # noqa: ANN001 - fixture
    result, (data, _) = universe_run
    assert "bench: tiny" in result.stdout and "full compare" in result.stdout
    assert data["scenario"] == "tiny"
    assert [t["name"] for t in data["tables"]][:1] == ["cmc_price_bars_1d"] and len(data["tables"]) == 12
    assert len(data["raw_copy"]) == 12 and all(r["rows"] == t["rows"] for r, t in zip(data["raw_copy"], data["tables"]))
    assert data["rows"] == sum(t["rows"] for t in data["tables"]) > 0
    assert set(data["ratios"]) == {"pipeline_rate_over_raw_copy", "incremental_over_full", "capture_over_full",
                                   "changed_capture_over_capture"}
    runs = data["incremental_runs_s"]  # one refresh per new day; the bar uses their median
    assert len(runs) == 3 and all(r > 0 for r in runs) and data["incremental_s"] == sorted(runs)[1]
    assert "median of" in result.stdout
    assert data["compare"]["rows"] == 2000 and data["peak_rss_mb"] > 0
    assert data["peak_rss_mb"] == max(data["peak_rss_self_mb"], data["peak_rss_children_mb"])
    assert data["peak_rss_children_mb"] > 0  # the runners' children are counted
    assert data["assets"] == 2 and data["source_days"] == 150 and data["disk_bytes"] > 0
    assert data["per_row_over_reference"] is None
    _changed_price_phase(data)


@pytest.mark.db
@pytest.mark.slow
def test_bench_universe_scenario_against_its_reference(universe_run, pg_server) -> None:  # noqa: ANN001 - fixtures
    """The reference runs first in the same invocation, and the universe reports its costs per
    output row relative to it, with the universe's bars."""
    result, (ref, data) = universe_run
    assert ref["scenario"] == "tiny" and data["scenario"] == "universe" and data["reference"] == "tiny"
    assert "bench: universe (5 assets" in result.stdout and "cost per output row over tiny's" in result.stdout
    # the source days it reports are the calendar days its assets span in its database (gaps
    # included), less the three new days each asset got after the full rebuild
    with psycopg.connect(pg_server.url("ta_lab2_bench_universe")) as conn:
        spans = conn.execute("SELECT count(*), sum(span) FROM (SELECT max(\"timestamp\")::date - min(\"timestamp\")::date + 1 "
                             "AS span FROM cmc_price_histories7 GROUP BY id) s").fetchone()
    assert data["assets"] == spans[0] == 5 and data["source_days"] == spans[1] - 3 * 5 <= 5 * 60
    per_row = data["per_row_over_reference"]
    assert set(per_row) == {"full_rebuild", "raw_copy", "capture", "full_rebuild_same_tables"}
    expected = (data["full_rebuild_s"] / data["rows"]) / (ref["full_rebuild_s"] / ref["rows"])
    assert per_row["full_rebuild"] == pytest.approx(expected)
    # the universe's table times over its rows priced at the reference's seconds per row, table by table
    ref_rate = {t["name"]: t["seconds"] / t["rows"] for t in ref["tables"] if t["rows"]}
    shared = [t for t in data["tables"] if t["rows"] and t["name"] in ref_rate]
    assert len(shared) == 12
    assert per_row["full_rebuild_same_tables"] == pytest.approx(
        sum(t["seconds"] for t in shared) / sum(t["rows"] * ref_rate[t["name"]] for t in shared))
    assert "the mix of rows aside" in result.stdout
    bars = {b["description"]: b for b in data["bars"]}
    for description in ("full rebuild cost per output row (over tiny's)", "full rebuild", "incremental refresh",
                        "database with one capture's snapshot", "capture_baseline --ids all", "peak RSS",
                        "capture with one changed price", "capture with one changed price finds it"):
        assert description in bars, sorted(bars)
    assert bars["full rebuild cost per output row (over tiny's)"]["met"] == (per_row["full_rebuild"] <= 1.2)
    _changed_price_phase(data)


def test_universe_listings_are_mostly_recent() -> None:
    """Deterministic; the first asset spans the window; ages have an exponential law, so most
    listings are recent and few are old."""
    lengths = listing_lengths(500, 1000)
    assert lengths == listing_lengths(500, 1000) and len(lengths) == 500
    assert lengths[0] == 1000 == max(lengths) and min(lengths) >= 30
    recent = sum(n <= 250 for n in lengths)
    old = sum(n > 500 for n in lengths)
    assert recent > 350 and old < 50


def test_bench_rejects_unknown_scenario(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "bench", "--scenario", "huge"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--scenario" in result.stderr


def test_bench_sizes_only_the_universe(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "ta_lab2", "bench", "--scenario", "wide", "--assets", "5"],
                            check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--assets" in result.stderr
