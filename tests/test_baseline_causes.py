"""A capture never passes a table that changed, and names the root cause of every drift.

The divergences are checked against an oracle written here: both sides of every table read
into Python and compared cell by cell with ``math.isclose`` (the documented tolerances), rows
grouped by series. One small pipeline per module (2 assets, every table, EMA periods 3 and 5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bars_helpers import built_pipeline, BAR_TABLES, EMA_TABLES, build_all, clone_source, diff_schemas, refresh_all
from ta_lab2.baseline.capture import CaptureOptions, compare_existing, run_capture
from ta_lab2.baseline.snapshots import drop, restore
from ta_lab2.db.connect import Target, connect
from ta_lab2.load.synthetic import SyntheticConfig

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "src/ta_lab2/scripts/baseline/capture_baseline.py"
PERIODS = (3, 5)
ALL_TABLES = [*BAR_TABLES, *EMA_TABLES]
#: the documented default tolerances: (rtol, atol)
PRICE, VOLUME = (1e-5, 1e-6), (1e-4, 1e-2)
AUDIT = {"ingested_at", "rejected_at", "updated_at"}


@pytest.fixture(scope="module")
def pipeline(db: Target) -> Target:
    return built_pipeline(db, SyntheticConfig(n_assets=2, days=120, seed=23, gap_rate=0.03, defect_rate=0.0), PERIODS)


def _cli(target: Target, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _ta_lab2(target: Target, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TA_LAB2_DB_URL": target.url}
    return subprocess.run([sys.executable, "-m", "ta_lab2", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=900)


# ----------------------------------------------------------------------------- the oracle
def _key_and_values(conn: psycopg.Connection, table: str) -> tuple[list[str], list[str], dict[str, str]]:
    key = [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (table,)).fetchall()]
    types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                              "AND table_schema = 'public'", (table,)).fetchall())
    values = [c for c in types if c not in key and c not in AUDIT]
    return key, values, types


def _failing(a: Any, b: Any, column: str, kind: str) -> bool:
    """Outside the documented tolerance (or not a float and different): WARNING or CRITICAL."""
    if a is None or b is None:
        return (a is None) != (b is None)
    if kind != "double precision":
        return a != b
    if math.isnan(a) or math.isnan(b):
        return not (math.isnan(a) and math.isnan(b))
    rtol, atol = VOLUME if column in ("volume", "market_cap") else PRICE
    return not math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def oracle(conn: psycopg.Connection, table: str, snapshot: str) -> dict[tuple, tuple[str, str, int]]:
    """Series -> (first, last failing instant, failing rows) between ``snapshot`` and ``table``."""
    key, values, types = _key_and_values(conn, table)
    cols = ", ".join(f'"{c}"' for c in key + values)
    sides = [{tuple(r[:len(key)]): r[len(key):] for r in conn.execute(f"SELECT {cols} FROM {t}").fetchall()}
             for t in (snapshot, table)]
    series_cols = [i for i, c in enumerate(key) if c in ("id", "tf", "period")]
    time_col = next(i for i, c in enumerate(key) if c in ("ts", "time_close", "timestamp"))
    found: dict[tuple, list[dt.datetime]] = {}
    for k in set(sides[0]) | set(sides[1]):
        s, r = sides[0].get(k), sides[1].get(k)
        bad = s is None or r is None or any(_failing(x, y, c, types[c]) for x, y, c in zip(s, r, values))
        if bad:
            found.setdefault(tuple(k[i] for i in series_cols), []).append(k[time_col])
    return {s: (min(t).isoformat(), max(t).isoformat(), len(t)) for s, t in found.items()}


def _ours(report_table: dict[str, Any]) -> dict[tuple, tuple[str, str, int]]:
    return {tuple(d["series"].values()): (d["first_ts"], d["last_ts"], d["count"]) for d in report_table["divergences"]}


class _Figures(HTMLParser):
    """The page's figures: id or data-root -> whether an <svg> is inside."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, bool] = {}
        self._open: str | None = None
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "figure":
            self._open = str(a.get("id") or f"root-{a.get('data-root')}")
            self.figures[self._open] = False
        elif tag == "svg" and self._open:
            self.figures[self._open] = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._open = None


def _restore_and_drop(target: Target, suffix: str) -> None:
    with connect(target, autocommit=True) as conn:
        restore(conn, suffix)
        drop(conn, suffix)


# ----------------------------------------------------------------------------- the scenario
def test_one_changed_price_fails_every_table_and_is_one_source_root(pipeline: Target, tmp_path: Path) -> None:
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        ident, day, old = conn.execute(
            "SELECT id, \"timestamp\", close FROM cmc_price_histories7 WHERE id = (SELECT min(id) FROM dim_assets) "
            "ORDER BY \"timestamp\" OFFSET 60 LIMIT 1").fetchone()
        # by hand, as a user would: load_ts is not touched (the table's trigger stamps it)
        new = conn.execute("UPDATE cmc_price_histories7 SET close = close * 1.02 WHERE id = %s AND \"timestamp\" = %s "
                           "RETURNING close", (ident, day)).fetchone()[0]
    result = _cli(pipeline, tmp_path, "--ids", "all", "--output-dir", "out")  # default options: sampling on
    report = json.loads(next((tmp_path / "out").glob("baseline-*.json")).read_text())
    suffix = report["suffix"]
    try:
        assert result.returncode == 1, result.stdout + result.stderr
        assert report["verdict"] == "FAIL" and set(report["summary"]["tables_failed"]) == set(ALL_TABLES)
        with psycopg.connect(pipeline.url) as conn:
            for t in report["tables"]:
                expected = oracle(conn, t["table"], t["snapshot"])
                assert _ours(t) == expected, t["table"]
                assert expected and all(s[0] == ident for s in expected), t["table"]
        # one root: the revised price, with its old and new value, explaining every divergence
        (root,) = report["root_causes"]
        assert (root["kind"], root["id"], root["first_ts"], root["days"]) == ("source_revised", ident, day.isoformat(), 1)
        assert {"column": "close", "before": old, "after": new} in root["changes"]
        assert set(root["explains"]) == set(ALL_TABLES)
        assert root["rows"] == sum(d["count"] for t in report["tables"] for d in t["divergences"])
        causes = [d["cause"] for t in report["tables"] for d in t["divergences"]]
        assert {c["root"] for c in causes} == {0}
        assert {c["kind"] for c in causes} == {"source", "inherited"}
        # the console says it first, in one line
        assert "root causes (1):" in result.stdout
        assert re.search(rf"1\. source revised: id {ident}, {day.date().isoformat()}, .*close .* → .* explains "
                         rf"{root['rows']:,} rows in 12 tables", result.stdout), result.stdout
        assert result.stdout.index("root causes") < result.stdout.index("cmc_price_bars_1d")
        # the page: the root's chart and the timeline are drawn
        html_text = (tmp_path / "out" / f"baseline-{suffix}.html").read_text()
        page = _Figures()
        page.feed(html_text)
        assert page.figures.get("root-0") and page.figures.get("timeline") and page.figures.get("match-rate")
        assert "root-causes" in page.ids and html_text.index("root-causes") < html_text.index("id='tables'")
        assert "<script" not in html_text and not re.search(r"(src|href)=[\"']https?:", html_text)  # offline
        assert f"id {ident} · " in html_text and day.date().isoformat() in html_text
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_price_histories7 SET close = %s WHERE id = %s AND \"timestamp\" = %s",
                         (old, ident, day))
        _restore_and_drop(pipeline, suffix)
        with connect(pipeline, autocommit=True) as conn:  # the tables follow the source again
            build_all(conn, full=False)
            refresh_all(conn, full=False, periods=PERIODS)


def test_a_derived_row_changed_with_identical_inputs_is_a_computation_root(pipeline: Target, tmp_path: Path) -> None:
    result = run_capture(pipeline, CaptureOptions(ids=None, skip_rebuild=True, output_dir=tmp_path))
    assert result.verdict == "PASS"
    try:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            changed = conn.execute("UPDATE cmc_ema_multi_tf SET ema = ema * 1.05 WHERE tf = '7D' AND period = 3 "
                                   "AND ts IN (SELECT min(ts) + interval '40 days' FROM cmc_ema_multi_tf "
                                   "WHERE tf = '7D' GROUP BY id) RETURNING id").fetchall()
        series = {r[0] for r in changed}  # one (id, 7D, 3) series per id
        assert series
        compared = compare_existing(pipeline, result.suffix, CaptureOptions(ids=None, output_dir=tmp_path))
        (root,) = compared.root_causes
        assert (root.kind, root.table, root.id, root.days) == ("computation", "cmc_ema_multi_tf", None, len(series))
        ema = next(t for t in compared.comparisons if t.table == "cmc_ema_multi_tf")
        assert [d.cause.kind for d in ema.divergences] == ["computation"] * len(series)
        assert sum(d.count for d in ema.divergences) == len(changed) == root.rows
        assert all(t.passed for t in compared.comparisons if t.table != "cmc_ema_multi_tf")
    finally:
        _restore_and_drop(pipeline, result.suffix)


def test_a_deleted_source_day_is_a_source_root_with_one_sided_rows(pipeline: Target, tmp_path: Path) -> None:
    result = run_capture(pipeline, CaptureOptions(ids=None, skip_rebuild=True, output_dir=tmp_path))
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM cmc_price_histories7 ORDER BY id DESC, \"timestamp\" OFFSET 45 LIMIT 1")
        cols = [d.name for d in cur.description]
        saved = cur.fetchone()
        ident, day = saved[cols.index("id")], saved[cols.index("timestamp")]
        conn.execute("DELETE FROM cmc_price_histories7 WHERE id = %s AND \"timestamp\" = %s", (ident, day))
    try:
        with connect(pipeline, autocommit=True) as conn:
            build_all(conn, full=False)
            refresh_all(conn, full=False, periods=PERIODS)
        compared = compare_existing(pipeline, result.suffix, CaptureOptions(ids=None, output_dir=tmp_path))
        assert compared.verdict == "FAIL"
        daily = next(t for t in compared.comparisons if t.table == "cmc_price_bars_1d")
        assert daily.only_in_snapshot == 1 and not daily.passed
        assert len(compared.root_causes) == 1, [(r, r.explains) for r in compared.root_causes]
        (root,) = compared.root_causes
        assert (root.kind, root.id, root.first_ts) == ("source_removed", ident, day.isoformat())
        assert {d.cause.root for t in compared.comparisons for d in t.divergences} == {0}
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute(f"INSERT INTO cmc_price_histories7 ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                         saved)
        _restore_and_drop(pipeline, result.suffix)


def test_out_of_band_update_is_picked_up_by_an_incremental_refresh(pipeline: Target) -> None:
    """A price edited in SQL without touching load_ts: the next refresh rebuilds what depends
    on it, and every bar table equals a full rebuild from the same source."""
    with psycopg.connect(pipeline.url, autocommit=True) as conn:
        ident, day, old = conn.execute("SELECT id, \"timestamp\", close FROM cmc_price_histories7 "
                                       "ORDER BY id, \"timestamp\" OFFSET 70 LIMIT 1").fetchone()
        conn.execute("UPDATE cmc_price_histories7 SET close = close * 1.1, volume = volume + 1 "
                     "WHERE id = %s AND \"timestamp\" = %s", (ident, day))
    try:
        with connect(pipeline, autocommit=True) as conn:
            build_all(conn, full=False)
            got = conn.execute("SELECT close FROM cmc_price_bars_1d WHERE id = %s AND \"timestamp\" = %s",
                               (ident, day)).fetchone()[0]
            assert got == pytest.approx(old * 1.1, rel=1e-12)
            clone_source(conn, "public", "oob_full")
            build_all(conn, full=True, schema="oob_full")
            assert diff_schemas(conn, "public", "oob_full") == []
    finally:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_price_histories7 SET close = %s, volume = volume - 1 WHERE id = %s AND \"timestamp\" = %s",
                         (old, ident, day))
            conn.execute("DROP SCHEMA IF EXISTS oob_full CASCADE")
        with connect(pipeline, autocommit=True) as conn:
            build_all(conn, full=False)
            refresh_all(conn, full=False, periods=PERIODS)


# ----------------------------------------------------------------------------- report hygiene
def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_compare_writes_its_own_files_and_an_unwritable_output_dir_changes_nothing(pipeline: Target, tmp_path: Path) -> None:
    capture = _cli(pipeline, tmp_path, "--ids", "all", "--skip-rebuild", "--output-dir", "out")
    assert capture.returncode == 0, capture.stdout + capture.stderr
    suffix = json.loads(next((tmp_path / "out").glob("baseline-*.json")).read_text())["suffix"]
    try:
        before = _digests(tmp_path / "out")
        for _ in range(2):
            compared = _ta_lab2(pipeline, tmp_path, "baseline", "compare", suffix, "--output-dir", "out")
            assert compared.returncode == 0, compared.stdout + compared.stderr
        after = _digests(tmp_path / "out")
        assert {k: v for k, v in after.items() if k in before and k != "ta_lab2.log"} == {
            k: v for k, v in before.items() if k != "ta_lab2.log"}
        assert len([n for n in after if n.startswith(f"compare-{suffix}-at-") and n.endswith(".json")]) >= 1
        # an output folder that cannot exist (below a file): refused before anything changes
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        with psycopg.connect(pipeline.url) as conn:
            captures = conn.execute("SELECT count(*) FROM baseline_snapshots").fetchone()[0]
        bad = _cli(pipeline, tmp_path, "--ids", "all", "--output-dir", str(blocker / "out"))
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "--output-dir" in bad.stderr and "Traceback" not in bad.stderr
        with psycopg.connect(pipeline.url) as conn:
            assert conn.execute("SELECT count(*) FROM baseline_snapshots").fetchone()[0] == captures
    finally:
        with connect(pipeline, autocommit=True) as conn:
            drop(conn, suffix)


def render_command() -> list[str]:
    """The documented command that renders a report to PNG (docs/baseline.md, between the
    ``render-command`` markers), with REPORT and PNG as placeholders."""
    text = (ROOT / "docs/baseline.md").read_text()
    block = re.search(r"<!-- render-command -->\s*```\w*\n(.*?)```", text, re.S)
    assert block, "docs/baseline.md documents the render command"
    return shlex.split(block.group(1).replace("\\\n", " "))


def test_the_report_renders_in_headless_chromium(pipeline: Target, tmp_path: Path) -> None:
    from ta_lab2.baseline.report import write_reports

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the page was parsed above, "
                    "not rendered")
    result = run_capture(pipeline, CaptureOptions(ids=None, skip_rebuild=True, output_dir=tmp_path))
    try:
        with psycopg.connect(pipeline.url, autocommit=True) as conn:
            conn.execute("UPDATE cmc_price_bars_multi_tf SET close = close * 1.2 WHERE tf = '7D' AND bar_seq = 3")
        compared = compare_existing(pipeline, result.suffix, CaptureOptions(ids=None, output_dir=tmp_path))
        paths = write_reports(compared, tmp_path)
        png = tmp_path / "report.png"
        argv = [a.replace("REPORT", paths["html"].resolve().as_uri()).replace("PNG", str(png)) for a in render_command()]
        subprocess.run(argv, capture_output=True, timeout=120, cwd=tmp_path)
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    finally:
        _restore_and_drop(pipeline, result.suffix)
