"""``ta-lab2 bench``: the speed bars of spec 06, measured.

Each scenario (:mod:`ta_lab2.bench_scenarios`) builds its synthetic universe in a fresh
database on the embedded server, then measures in one run: the full rebuild of every table
(rows, seconds, rows/s), incremental refreshes after one new day per asset (the median of
:data:`NEW_DAYS` successive days), a full ``capture_baseline --ids all`` of the unchanged
source, a second one after one source price changed mid-history (it must fail with exactly
one root cause), a full in-database compare of a 1,000,000-row table, the raw binary ``COPY``
rate of the same rows into the same tables (the physical write bound of this machine), the
database's size with a capture's snapshot, and the peak memory. A scenario with a reference
(``universe``) also reports its costs per output row relative to the reference's, measured in
the same invocation. Results are one frozen object rendered as a table or JSON.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ta_lab2.bench_scenarios import NEW_DAYS, Scenario, scenario_frame

GB = 1024 ** 3


@dataclass(frozen=True)
class Phase:
    name: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.seconds > 0 else None


@dataclass(frozen=True)
class Bar:
    description: str
    limit: str
    measured: str
    met: bool


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    tables: tuple[Phase, ...]
    raw_copy: tuple[Phase, ...]
    full_rebuild_s: float
    incremental_s: float  # the median of incremental_runs_s
    capture_s: float
    capture_verdict: str
    compare: Phase
    peak_rss_mb: float  # the largest of peak_rss_self_mb and peak_rss_children_mb
    bars: tuple[Bar, ...] = field(default_factory=tuple)
    incremental_runs_s: tuple[float, ...] = ()  # each one-day refresh, in order
    #: the capture after one source price changed: its time, verdict and root causes ("kind id day")
    changed_capture_s: float = 0.0
    changed_capture_verdict: str = ""
    changed_root_causes: tuple[str, ...] = ()
    changed_price: str = ""  # which price was changed: "id <id> on <day>"
    assets: int = 0
    source_days: int = 0  # source rows the full rebuild saw
    disk_bytes: int = 0  # the database's size after the identical capture (tables + snapshot)
    peak_rss_self_mb: float = 0.0  # this process, the runners included (they run in it)
    peak_rss_children_mb: float = 0.0  # the largest waited-for descendant (runner children, capture's scripts)
    reference: str | None = None  # the scenario per_row_over_reference compares with
    #: seconds per output row over the reference's, per phase (full_rebuild, raw_copy, capture),
    #: and ``full_rebuild_same_tables``: see :func:`same_tables_ratio`
    per_row_over_reference: dict[str, float] | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.tables)

    def ratios(self) -> dict[str, float | None]:
        raw = sum(p.rows for p in self.raw_copy) / max(sum(p.seconds for p in self.raw_copy), 1e-9)
        pipe = self.rows / max(self.full_rebuild_s, 1e-9)
        full = self.full_rebuild_s or None
        return {
            "pipeline_rate_over_raw_copy": pipe / raw if raw else None,
            "incremental_over_full": self.incremental_s / full if full else None,
            "capture_over_full": self.capture_s / full if full else None,
            "changed_capture_over_capture": self.changed_capture_s / self.capture_s if self.capture_s else None,
        }

    def seconds_per_row(self) -> dict[str, float]:
        """Seconds per output row of the phases whose cost should grow with the rows."""
        rows = max(self.rows, 1)
        return {"full_rebuild": self.full_rebuild_s / rows, "raw_copy": sum(p.seconds for p in self.raw_copy) / rows,
                "capture": self.capture_s / rows}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = self.rows
        d["ratios"] = self.ratios()
        for key in ("tables", "raw_copy"):
            for p, src in zip(d[key], getattr(self, key)):
                p["rows_per_s"] = src.rows_per_s
        d["compare"]["rows_per_s"] = self.compare.rows_per_s
        return d


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest waited-for descendant) peak RSS in MB, over the invocation so
    far. The runners run in this process; their children are forks of a fork server that waits
    for them and is itself waited for when the run ends, and the capture's runner scripts are
    waited-for subprocesses, so every child of a finished run counts in the second figure."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024.0, children / 1024.0


def cache_bytecode() -> None:
    """Byte-compile the package, as a regular (non-editable) install does: an editable checkout
    under ``PYTHONDONTWRITEBYTECODE`` would otherwise recompile every module in every process
    the runners start (~0.2 s each time), which no installed copy pays."""
    import compileall

    import ta_lab2

    try:
        compileall.compile_dir(str(Path(ta_lab2.__file__).parent), quiet=2)
    except OSError:  # a read-only install ships its bytecode
        pass


def run_bench(scenarios: list[Scenario], output_dir: Path, executor: str = "local",
              scheduler: str | None = None) -> list[ScenarioResult]:
    """Run ``scenarios`` in order; one with a reference gets its per-row costs relative to the
    reference's result of this invocation (run before it, see ``select_scenarios``)."""
    results: dict[str, ScenarioResult] = {}
    for scenario in scenarios:
        result = run_scenario(scenario, output_dir, executor, scheduler)
        results[scenario.name] = _with_bars(result, results.get(scenario.reference or ""))
    return list(results.values())


def run_scenario(scenario: Scenario, output_dir: Path, executor: str = "local",
                 scheduler: str | None = None) -> ScenarioResult:
    """Build ``scenario``'s universe in a fresh database and measure every phase (no bars yet:
    :func:`run_bench` adds them). Raises ``RuntimeError`` when a rebuild or refresh fails.
    With ``executor`` dask, every run's work units are tasks of the cluster at ``scheduler``,
    or of a two-worker cluster of this machine started for the scenario (not timed; its workers
    connect to the bench database)."""
    if executor == "dask" and scheduler is None:
        from ta_lab2.cluster.client import local_cluster
        from ta_lab2.db.embedded import EmbeddedServer

        server = EmbeddedServer()
        server.ensure_running()
        from ta_lab2.runners.plan import worker_preload

        with local_cluster(server.url(f"ta_lab2_bench_{scenario.name}"), 2,
                           preload=worker_preload(("bars", "emas"), kernel=True)) as address:
            return run_scenario(scenario, output_dir, executor, address)
    runs_on = {"executor": executor, "scheduler": scheduler}
    from ta_lab2.baseline.capture import CaptureOptions, run_capture
    from ta_lab2.baseline.snapshots import drop
    from ta_lab2.db.connect import connect, fresh_embedded_database
    from ta_lab2.db.schema import ensure_schema
    import polars as pl

    from ta_lab2.load.service import load_frame
    from ta_lab2.runners.plan import RunOptions
    from ta_lab2.runners.run import run_bar_builders, run_daily_refresh, run_ema_refreshes

    cache_bytecode()
    target = fresh_embedded_database(f"ta_lab2_bench_{scenario.name}")
    # The universe ends NEW_DAYS days after the history the full rebuild sees; those last days
    # of every asset are the incremental steps' inputs, one day per step, appended without
    # touching other rows.
    universe = scenario_frame(scenario)
    with connect(target, autocommit=True) as conn:
        ensure_schema(conn)
        if scenario.timeframes is not None:
            conn.execute("UPDATE dim_timeframe SET is_canonical = (tf = ANY(%s))", (list(scenario.timeframes),))
        load_frame(conn, universe.filter(pl.col("days_left") >= NEW_DAYS).drop("days_left"), "bench:history")
    def daily_refresh(options: RunOptions):  # type: ignore[no-untyped-def]
        # the daily job: every bar builder and EMA refresher in one run
        summary = run_daily_refresh(target, options, bars=True, emas=True, skip_stale_check=True, staleness_hours=48)
        if not summary.ok:
            raise RuntimeError(f"the {'full' if options.full else 'incremental'} refresh failed: "
                               + "; ".join(f"{c.name}: {c.message}" for c in summary.children if not c.ok))
        return summary

    # The full rebuild as a user runs it (and as the capture's rebuild does): every bar
    # builder with --full-rebuild, then every EMA refresher with --full-refresh.
    full = RunOptions(ids=None, full=True, periods=scenario.periods, **runs_on)
    started = time.perf_counter()
    runs = [run(target, full) for run in (run_bar_builders, run_ema_refreshes)]
    full_s = time.perf_counter() - started
    failed = [c for r in runs for c in r.children if not c.ok]
    if failed:
        raise RuntimeError("the full rebuild failed: " + "; ".join(f"{c.name}: {c.message}" for c in failed))
    tables = tuple(Phase(c.summary.get("table", c.name), int(c.summary.get("rows_inserted", 0)), float(c.duration_s))
                   for r in runs for c in r.children)
    with connect(target, autocommit=True) as conn:  # the same rows, before anything else changes them
        raw = tuple(_raw_copy_rate(conn, p.name, output_dir) for p in tables)
    # one new day for every asset, then the incremental pipeline — on a settled database, as
    # a daily job meets it: the rebuild and the raw COPY just wrote gigabytes, and autovacuum
    # and the checkpointer working through them would otherwise run during the timed refresh;
    # a day apart, the checkpointer has flushed the previous day's writes
    with connect(target, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    day_runs = []
    for day in range(NEW_DAYS - 1, -1, -1):
        with connect(target, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            load_frame(conn, universe.filter(pl.col("days_left") == day).drop("days_left"), "bench:new-day")
        started = time.perf_counter()
        daily_refresh(RunOptions(ids=None, periods=scenario.periods, **runs_on))
        day_runs.append(time.perf_counter() - started)
    incremental_s = statistics.median(day_runs)

    def capture():  # type: ignore[no-untyped-def]
        with connect(target, autocommit=True) as conn:  # each capture starts from flushed pages
            conn.execute("CHECKPOINT")
        started = time.perf_counter()
        result = run_capture(target, CaptureOptions(ids=None, output_dir=output_dir / "bench-captures", **runs_on))
        return result, time.perf_counter() - started

    identical, capture_s = capture()
    with connect(target, autocommit=True) as conn:
        disk_bytes = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        # the second capture meets the same database as the first did: without a snapshot
        drop(conn, identical.suffix)
        changed_price = _change_one_price(conn)
    changed, changed_s = capture()
    causes = tuple(f"{c.kind} {c.table} id {c.id} {c.first_ts[:10]}" for c in changed.root_causes)
    with connect(target, autocommit=True) as conn, connect(target, autocommit=True) as helper:
        drop(conn, changed.suffix)
        compare = _compare_rate(conn, helper, scenario.compare_rows)
    own_mb, children_mb = _peak_rss_mb()
    return ScenarioResult(scenario.name, tables, raw, full_s, incremental_s, capture_s, identical.verdict, compare,
                          max(own_mb, children_mb), incremental_runs_s=tuple(day_runs), changed_capture_s=changed_s,
                          changed_capture_verdict=changed.verdict, changed_root_causes=causes,
                          changed_price=changed_price, assets=len(scenario.lengths),
                          source_days=scenario.source_days, disk_bytes=disk_bytes, peak_rss_self_mb=own_mb,
                          peak_rss_children_mb=children_mb, reference=scenario.reference)


def _change_one_price(conn: psycopg.Connection) -> str:
    """Raise one close by 2 %: the first id's, on the middle day of its history. Returns which."""
    ident, day = conn.execute(
        'SELECT id, (min("timestamp")::date + (max("timestamp")::date - min("timestamp")::date) / 2) '
        "FROM cmc_price_histories7 WHERE id = (SELECT min(id) FROM cmc_price_histories7) GROUP BY id").fetchone()
    changed = conn.execute('UPDATE cmc_price_histories7 SET close = close * 1.02 WHERE id = %s AND "timestamp"::date = %s',
                           (ident, day)).rowcount
    if changed != 1:
        raise RuntimeError(f"changing one price of id {ident} on {day} changed {changed} rows")
    return f"id {ident} on {day}"


def _raw_copy_rate(conn: psycopg.Connection, table: str, spool_dir: Path) -> Phase:
    """The same rows, read back and already encoded, written into a clone of the table with the
    same indexes by the fastest path the database offers: in one transaction that creates the
    clone, one binary ``COPY … FREEZE`` into it without indexes (no WAL with ``wal_level = minimal``), then
    the indexes built once. That is what the machine can write without any computation. The
    rows are encoded by the server's binary ``COPY … TO`` (the format the pipeline writes)
    into a spool file under ``spool_dir``, so memory stays bounded whatever the table's size."""
    from ta_lab2.db.bulk import column_types, deferred_indexes, table_ref

    columns = sql.SQL(", ").join(sql.Identifier(c) for c in column_types(conn, table_ref(table)) if c != "ingested_at")
    clone = f"bench_raw_{table}"[:63]
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(clone)))
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool_dir, prefix="bench-raw-") as spool:
        with conn.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                columns, sql.Identifier(table))) as out:
            for block in out:
                spool.write(block)
        rows = int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0])
        spool.seek(0)
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(sql.Identifier(clone), sql.Identifier(table)))
            with deferred_indexes(conn, [table_ref(clone)]):
                with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
                        sql.Identifier(clone), columns)) as copy:
                    while block := spool.read(1 << 20):
                        copy.write(block)
        seconds = time.perf_counter() - started
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(clone)))
    return Phase(table, rows, seconds)


def _compare_rate(conn: psycopg.Connection, helper: psycopg.Connection, rows: int) -> Phase:
    """A full in-database compare (every column of every row) of a ``rows``-row table, the way a
    capture compares a table on its own (the pass over all rows split over two connections)."""
    from ta_lab2.baseline.compare import compare_table
    from ta_lab2.baseline.table_sql import TableSpec, column_kinds
    from ta_lab2.baseline.comparison_utils import Sampling, Tolerances

    source = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
        "AND c.relname LIKE 'cmc_ema_multi_tf%%' AND c.relname NOT LIKE '%%snapshot%%' AND c.relname NOT LIKE '%%state' "
        "AND c.relkind = 'r' ORDER BY c.reltuples DESC LIMIT 1").fetchone()[0]
    for name in ("bench_cmp_a", "bench_cmp_b"):
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    # repeat the table's rows (shifted ids) until there are enough; in key order, as a capture
    # compares them (its snapshots are copied in key order, a full rebuild writes in key order)
    conn.execute(sql.SQL(
        "CREATE TABLE bench_cmp_a AS SELECT * FROM (SELECT (s.id + k * 1000000) AS id, s.tf, s.ts, s.period, "
        "s.tf_days, s.roll, s.ema, s.d1, s.d2, s.d1_roll, s.d2_roll FROM {} s CROSS JOIN generate_series(0, 99) k "
        "LIMIT %s) x ORDER BY id, tf, period, ts").format(sql.Identifier(source)), (rows,))
    conn.execute("ALTER TABLE bench_cmp_a ADD PRIMARY KEY (id, tf, period, ts)")
    conn.execute("CREATE TABLE bench_cmp_b AS SELECT * FROM bench_cmp_a ORDER BY id, tf, period, ts")
    conn.execute("ALTER TABLE bench_cmp_b ADD PRIMARY KEY (id, tf, period, ts)")
    conn.execute("VACUUM ANALYZE bench_cmp_a")
    conn.execute("VACUUM ANALYZE bench_cmp_b")
    n = conn.execute("SELECT count(*) FROM bench_cmp_a").fetchone()[0]
    cols = {c: k for c, k in column_kinds(conn, "public", "bench_cmp_a").items()
            if c not in ("id", "tf", "period", "ts")}
    spec = TableSpec("bench_cmp", sql.Identifier("public", "bench_cmp_a"), sql.Identifier("public", "bench_cmp_b"),
                     ("id", "tf", "period", "ts"), ("id", "tf", "period"), "ts", cols, presorted=True)
    # The capture just wrote gigabytes: vacuum now (what autovacuum would do during the timed
    # runs) and flush it, so the runs measure the compare and not the background work.
    conn.execute("VACUUM (ANALYZE)")
    conn.execute("CHECKPOINT")
    times = []
    for _ in range(3):  # the median of three runs
        started = time.perf_counter()
        with conn.transaction():
            result = compare_table(conn, spec, None, Sampling(full=True), Tolerances(), helper=helper)
        times.append(time.perf_counter() - started)
        if not (result.passed and result.rows_compared == n):
            raise RuntimeError(f"the compare of two identical tables did not pass: {result.rows_compared} of {n} rows")
    seconds = sorted(times)[1]
    for name in ("bench_cmp_a", "bench_cmp_b"):
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return Phase(f"full compare ({source} rows)", int(n), seconds)


#: the targets of a scenario with a reference (``universe``)
PER_ROW_LIMIT = 1.2
INCREMENTAL_LIMIT = 0.03
DISK_LIMIT_GB = 20
FULL_REBUILD_LIMIT_S = 20 * 60


def same_tables_ratio(phases: Sequence[Phase], reference: Sequence[Phase]) -> float | None:
    """The seconds of ``phases`` (one per table) over what the same rows would have cost at
    ``reference``'s seconds per row of each table: whether cost grows linearly, whatever the
    mix of rows. A bar row costs several EMA rows, and a universe of young assets holds far more
    bar rows per EMA row than one of long histories (its EMA series seldom start), so the
    plain cost per output row also measures that mix. None when no table has rows in both."""
    rate = {p.name: p.seconds / p.rows for p in reference if p.rows}
    mine = [p for p in phases if p.name in rate and p.rows]
    predicted = sum(p.rows * rate[p.name] for p in mine)
    return sum(p.seconds for p in mine) / predicted if predicted > 0 else None


def _with_bars(r: ScenarioResult, reference: ScenarioResult | None = None) -> ScenarioResult:
    """``r`` with its speed bars (and its per-row costs over ``reference``'s, when given)."""
    ratios = r.ratios()
    bars: list[Bar] = []
    if r.scenario == "upstream":
        bars += [
            Bar("full rebuild of all 12 tables", "≤ 60 s", f"{r.full_rebuild_s:.1f} s", r.full_rebuild_s <= 60),
            Bar("incremental refresh", "≤ 5 % of full", f"{ratios['incremental_over_full']:.1%}",
                (ratios["incremental_over_full"] or 1) <= 0.05),
        ]
    per_row = None
    if reference is not None:
        mine, theirs = r.seconds_per_row(), reference.seconds_per_row()
        per_row = {k: mine[k] / theirs[k] for k in mine if theirs[k] > 0}
        same = same_tables_ratio(r.tables, reference.tables)
        if same is not None:
            per_row["full_rebuild_same_tables"] = same
        bars += [
            Bar(f"full rebuild cost per output row (over {reference.scenario}'s)", f"≤ {PER_ROW_LIMIT} ×",
                f"{per_row.get('full_rebuild', 99):.2f} ×", per_row.get("full_rebuild", 99) <= PER_ROW_LIMIT),
            Bar("full rebuild", f"≤ {FULL_REBUILD_LIMIT_S // 60} min", f"{r.full_rebuild_s / 60:.1f} min",
                r.full_rebuild_s <= FULL_REBUILD_LIMIT_S),
            Bar("incremental refresh", f"≤ {INCREMENTAL_LIMIT:.0%} of full", f"{ratios['incremental_over_full']:.1%}",
                (ratios["incremental_over_full"] or 1) <= INCREMENTAL_LIMIT),
            Bar("database with one capture's snapshot", f"≤ {DISK_LIMIT_GB} GB", f"{r.disk_bytes / GB:.1f} GB",
                r.disk_bytes <= DISK_LIMIT_GB * GB),
        ]
    if r.scenario == "upstream" or reference is not None:
        bars += [
            Bar("capture_baseline --ids all", "≤ 2.5 × full (aim 2.0)", f"{ratios['capture_over_full']:.2f} ×",
                (ratios["capture_over_full"] or 99) <= 2.5),
            Bar("peak RSS", "< 2 GB", f"{r.peak_rss_mb:.0f} MB", r.peak_rss_mb < 2048),
        ]
    if r.scenario == "wide":
        bars.append(Bar("full rebuild rate", "≥ 50 % of raw COPY", f"{ratios['pipeline_rate_over_raw_copy']:.0%}",
                        (ratios["pipeline_rate_over_raw_copy"] or 0) >= 0.5))
    found = r.changed_capture_verdict == "FAIL" and len(r.changed_root_causes) == 1
    bars += [
        Bar("capture with one changed price finds it", "FAIL, exactly 1 root cause",
            f"{r.changed_capture_verdict}, {len(r.changed_root_causes)} root cause(s)", found),
        Bar("capture with one changed price", "≤ 1.10 × identical capture",
            f"{ratios['changed_capture_over_capture'] or 0:.2f} ×", (ratios["changed_capture_over_capture"] or 99) <= 1.10),
    ]
    if r.compare.rows >= 1_000_000:
        bars.append(Bar("full compare of 1,000,000 rows", "≤ 1.5 s", f"{r.compare.seconds:.2f} s", r.compare.seconds <= 1.5))
    return replace(r, bars=tuple(bars), per_row_over_reference=per_row,
                   reference=reference.scenario if reference is not None else r.reference)
