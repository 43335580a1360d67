"""The baseline capture: Preflight → Snapshot → Truncate → Rebuild → Compare → Report (spec 05).

:func:`run_capture` never lets an exception escape once truncation has begun: every later
failure is recorded in the result (and the registry), the comparison still runs, the report is
still written. Before that point, errors raise and nothing has changed (exit code 2).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline import metadata_tracker as meta
from ta_lab2.baseline.comparison_utils import (
    ExpectedDiff, Sampling, TableComparison, TableSpec, Tolerances, column_kinds, compare_table,
    first_bar_divergence, primary_key, series_and_time, summarize_comparison, VOLATILE_COLUMNS,
)
from ta_lab2.baseline.naming import make_suffix, snapshot_name
from ta_lab2.baseline.snapshots import (
    SnapshotInfo, check_tables, registry_insert, registry_update, settle, take_snapshots, truncate,
)
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import WRITER_LOCKS, writer_locks
from ta_lab2.db.schema import ensure_schema
from ta_lab2.db.tables import BAR_TABLES, BARS_1D, EMA_TABLES, PIPELINE_TABLES
from ta_lab2.db.url import redact
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.errors import UsageError
from ta_lab2.db.locks import ENV_LOCKS_HELD
from ta_lab2.launch.process import die_with_parent
from ta_lab2.work.units import resolve_ids

log = logging.getLogger(__name__)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ALL_LOCKS = tuple(name for name, _ in WRITER_LOCKS["baseline"])  # held for the children too


@dataclass(frozen=True)
class CaptureOptions:
    ids: list[int] | None
    tables: tuple[str, ...] = PIPELINE_TABLES
    skip_rebuild: bool = False
    dry_run: bool = False
    verbose: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    tolerances: Tolerances = field(default_factory=Tolerances)
    expected: tuple[ExpectedDiff, ...] = ()
    scratch_schema: str | None = None
    output_dir: Path = Path(".logs/baseline")
    timeout_s: float = 6 * 3600
    wait_lock: float = 0.0
    top_n: int = 20
    log_level: str = "INFO"


@dataclass(frozen=True)
class ChildRun:
    name: str
    argv: list[str]  # redacted
    exit_code: int | None
    duration_s: float
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class CaptureResult:
    suffix: str
    captured_at: str
    ids: list[int]
    phase_reached: str
    snapshots: tuple[SnapshotInfo, ...]
    rebuild: tuple[ChildRun, ...]
    comparisons: tuple[TableComparison, ...]
    metadata: dict[str, Any]
    problems: tuple[str, ...] = ()
    plan: tuple[str, ...] = ()

    @property
    def summary(self) -> dict[str, Any]:
        return summarize_comparison(self.comparisons)

    @property
    def verdict(self) -> str:
        if self.plan:
            return "DRY-RUN"
        rebuild_ok = all(c.ok for c in self.rebuild)
        return "PASS" if (self.summary["verdict"] == "PASS" and rebuild_ok and not self.problems) else "FAIL"

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict in ("PASS", "DRY-RUN") else 1


def table_spec(conn: psycopg.Connection, table: str, suffix: str, rebuilt_schema: str, schema: str = "public",
               presorted: bool = False) -> TableSpec:
    live = sql.Identifier(schema, table)
    key = primary_key(conn, live)
    series, time_col = series_and_time(key)
    cols = {c: k for c, k in column_kinds(conn, live).items() if c not in VOLATILE_COLUMNS and c not in key}
    return TableSpec(table, sql.Identifier(schema, snapshot_name(table, suffix)), sql.Identifier(rebuilt_schema, table),
                     key, series, time_col, cols, presorted)


def rebuild_config(conn: psycopg.Connection, suffix: str, tables: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Runner arguments that make the rebuild reproduce what the snapshot holds, read from the
    snapshotted state tables (they list every (id, tf[, period]) that was built, also those
    that produced no rows): the 1D time zone, non-canonical timeframes, and the EMA periods
    when they are not the refreshers' defaults. Returns the arguments and any warning."""
    from ta_lab2.baseline.naming import aux_schema
    from ta_lab2.timeframes import V2_DEFAULT_PERIODS

    aux = aux_schema(suffix)
    bars: list[str] = []
    emas: list[str] = []
    warnings: list[str] = []
    tz = conn.execute(sql.SQL("SELECT DISTINCT tz FROM {}").format(sql.Identifier(aux, "cmc_price_bars_1d_state"))).fetchall()
    if len(tz) == 1 and tz[0][0] != "UTC":
        bars += ["--tz", tz[0][0]]
    elif len(tz) > 1:
        warnings.append(f"the 1D table was built with several time zones {sorted(t[0] for t in tz)}; rebuilding in UTC")
    non_canonical = False
    for table in tables:
        if table == BARS_1D:
            continue
        state = sql.Identifier(aux, f"{table}_state")
        non_canonical |= bool(conn.execute(sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM {} s JOIN dim_timeframe d USING (tf) WHERE NOT d.is_canonical)").format(state)).fetchone()[0])
    if non_canonical:
        bars.append("--include-non-canonical")
        emas.append("--include-non-canonical")
    lut = tuple(r[0] for r in conn.execute("SELECT period FROM dim_period ORDER BY 1").fetchall())
    built: dict[str, tuple[int, ...]] = {}
    for table in tables:
        if table in EMA_TABLES.values():
            rows = conn.execute(sql.SQL("SELECT DISTINCT period FROM {} ORDER BY 1").format(
                sql.Identifier(aux, f"{table}_state"))).fetchall()
            if rows:
                built[table] = tuple(r[0] for r in rows)
    defaults = {t: (V2_DEFAULT_PERIODS if t == EMA_TABLES["v2"] else lut) for t in built}
    if any(set(p) != set(defaults[t]) for t, p in built.items()):
        sets = {p for p in built.values()}
        union = sorted({x for p in sets for x in p})
        emas += ["--periods", ",".join(map(str, union))]
        if len(sets) > 1:
            warnings.append(f"EMA tables were built with different period lists {sorted(set(sets))}; rebuilding all with {union}")
    return {"bars": bars, "emas": emas}, warnings


def _runner_argv(script: str, ids: list[int] | None, flag: str, options: CaptureOptions,
                 extra: Sequence[str] = ()) -> list[str]:
    argv = [sys.executable, str(SCRIPTS / script), "--ids", "all" if ids is None else ",".join(map(str, ids)), flag,
            "--timeout", str(int(options.timeout_s)), "--output-dir", str(options.output_dir / "runs"),
            "--log-level", options.log_level, *extra]
    if options.scratch_schema:
        argv += ["--schema", options.scratch_schema]
    if options.verbose:
        argv.append("--verbose")
    return argv


def rebuild(target: Target, ids: list[int] | None, options: CaptureOptions,
            extra: dict[str, list[str]] | None = None) -> list[ChildRun]:
    """Phase 3: the two runners through ``subprocess.run`` (URL in the environment, the
    capture's locks passed down, each child's own process group killed on its timeout).
    A failed bar rebuild does not stop the EMA step."""
    env = target.child_env()
    env[ENV_LOCKS_HELD] = ",".join(ALL_LOCKS)
    runs = []
    for name, script, flag, summary_file in (
        ("bars", "bars/run_all_bar_builders.py", "--full-rebuild", "run_all_bar_builders-latest.json"),
        ("emas", "emas/run_all_ema_refreshes.py", "--full-refresh", "run_all_ema_refreshes-latest.json"),
    ):
        argv = _runner_argv(script, ids, flag, options, (extra or {}).get(name, []))
        started = time.perf_counter()
        log.info("rebuild: %s", " ".join(meta.redacted_argv(argv)))
        try:
            proc = subprocess.run(argv, env=env, timeout=options.timeout_s * 12 + 60, capture_output=not options.verbose,
                                  text=True, start_new_session=True, preexec_fn=die_with_parent)
            code, message = proc.returncode, "" if proc.returncode == 0 else redact((proc.stderr or "")[-2000:])
        except subprocess.TimeoutExpired:
            code, message = None, "timed out"
        summary = _read_json(options.output_dir / "runs" / summary_file) if code is not None else {}
        runs.append(ChildRun(name, meta.redacted_argv(argv), code, time.perf_counter() - started, code == 0, summary, message))
    return runs


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _bar_table_for(ema_table: str, tf: str) -> str:
    refresher = next(r for r in REFRESHERS.values() if r.table == ema_table)
    if tf == "1D" or refresher.bar_table is None:
        return BARS_1D if tf == "1D" else BAR_TABLES["multi_tf"]
    return refresher.bar_table


def compare_all(conn: psycopg.Connection, suffix: str, tables: Sequence[str], ids: list[int] | None,
                options: CaptureOptions, rebuilt_schema: str, schema: str = "public",
                target: Target | None = None, presorted: bool = False) -> list[TableComparison]:
    """Phase 4: every table, reported bars first (so EMA divergences can name their likely
    cause). With ``target``, tables are compared concurrently on one connection per CPU: each
    comparison is a few large joins that a single backend runs on one core. ``presorted``:
    the rebuilt tables were just written by a full rebuild, in key order, as every snapshot
    is (see :attr:`TableSpec.presorted`)."""
    ordered = [t for t in (*BAR_TABLES.values(), *EMA_TABLES.values()) if t in tables]
    workers = min(os.cpu_count() or 1, len(ordered)) if target is not None else 1
    if target is not None and len(ordered) == 1 and (os.cpu_count() or 1) > 1:
        # one table: its pass over every row runs in two halves on two connections instead
        with connect(target, autocommit=True) as helper:
            raw = [_compare_one(conn, ordered[0], suffix, ids, options, rebuilt_schema, schema, presorted, helper)]
    elif workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        local = threading.local()
        opened: list[psycopg.Connection] = []

        def one(table: str) -> TableComparison:
            if not hasattr(local, "conn"):
                local.conn = connect(target, autocommit=True)
                opened.append(local.conn)
            return _compare_one(local.conn, table, suffix, ids, options, rebuilt_schema, schema, presorted)

        try:
            # largest first, so the last table to finish is a small one
            with ThreadPoolExecutor(max_workers=workers) as pool:
                done = dict(zip(ordered[::-1], pool.map(one, ordered[::-1])))
        finally:
            for c in opened:
                c.close()
        raw = [done[t] for t in ordered]
    else:
        raw = [_compare_one(conn, t, suffix, ids, options, rebuilt_schema, schema, presorted) for t in ordered]
    results: list[TableComparison] = []
    for table, result in zip(ordered, raw):
        if table in EMA_TABLES.values() and result.divergences:
            causes = first_bar_divergence(results)
            divergences = tuple(
                replace(d, likely_cause=_cause(causes, _bar_table_for(table, d.series.get("tf", "")), d.series))
                for d in result.divergences
            )
            result = replace(result, divergences=divergences)
        results.append(result)
        log.info("compare %-40s %s (%d rows compared)", table, "PASS" if result.passed else "FAIL", result.rows_compared)
    return results


def _compare_one(conn: psycopg.Connection, table: str, suffix: str, ids: list[int] | None, options: CaptureOptions,
                 rebuilt_schema: str, schema: str, presorted: bool, helper: psycopg.Connection | None = None) -> TableComparison:
    try:
        with conn.transaction():
            spec = table_spec(conn, table, suffix, rebuilt_schema, schema, presorted)
            return compare_table(conn, spec, ids, options.sampling, options.tolerances, options.expected, options.top_n,
                                 helper=helper)
    except Exception as exc:  # noqa: BLE001 - a broken table must not stop the others
        log.error("compare %s failed: %s", table, exc)
        return TableComparison(table, snapshot_name(table, suffix), f"{rebuilt_schema}.{table}", 0, 0, 0, 0, 0, 0, 0,
                               {"CRITICAL": 1, "WARNING": 0, "INFO": 0}, (), (), (), (), not options.sampling.full,
                               error=redact(str(exc)))


def _cause(causes: dict[tuple[str, int, str], str], bar_table: str, series: dict[str, Any]) -> str | None:
    first = causes.get((bar_table, series.get("id"), series.get("tf", "1D")))
    return None if first is None else f"{bar_table} differs from {first} for the same (id, tf)"


def plan_lines(target: Target, suffix: str, ids: list[int] | None, options: CaptureOptions) -> list[str]:
    where = "" if ids is None else f" WHERE id = ANY(ARRAY[{','.join(map(str, ids))}])"
    lines = [f"database: {target.describe()}", f"suffix: {suffix}"]
    for t in options.tables:
        lines.append(f"snapshot: CREATE TABLE public.{snapshot_name(t, suffix)} AS SELECT * FROM public.{t}{where}")
    lines.append(f"state tables and 1D rejects: copied into schema baseline_{suffix}")
    if options.skip_rebuild or options.scratch_schema:
        lines.append("truncate: none" + (f" (rebuild into scratch schema {options.scratch_schema})" if options.scratch_schema else ""))
    else:
        lines.append("truncate: " + ("TRUNCATE" if ids is None else "DELETE … WHERE id = ANY(ids)") + " of the tables and their state, bars first")
    if not options.skip_rebuild:
        for script, flag in (("bars/run_all_bar_builders.py", "--full-rebuild"), ("emas/run_all_ema_refreshes.py", "--full-refresh")):
            lines.append("rebuild: " + " ".join(meta.redacted_argv(_runner_argv(script, ids, flag, options))))
    s = options.sampling
    lines.append("compare: " + ("every row" if s.full else
                 f"first {s.beginning} and last {s.end} rows of every series + {s.random_pct:.2%} of interior keys (seed {s.seed})"))
    return lines


def run_capture(target: Target, options: CaptureOptions, argv: Sequence[str] = ()) -> CaptureResult:
    """Run a capture end to end. Raises before phase 2 on usage/infrastructure errors."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # the one clock read
    suffix = make_suffix(now)
    unknown = [t for t in options.tables if t not in PIPELINE_TABLES]
    if unknown:
        raise UsageError(f"--tables: unknown table(s) {', '.join(unknown)}")
    with connect(target, autocommit=True) as conn:
        if not options.dry_run:
            ensure_schema(conn)
        id_list = resolve_ids(conn, options.ids)
        if options.dry_run:
            return CaptureResult(suffix, meta.iso(now), id_list, "dry-run", (), (), (), {}, plan=tuple(plan_lines(target, suffix, options.ids, options)))
        check_tables(conn, options.tables)
        with writer_locks(conn, "baseline", options.wait_lock):
            return _phases(conn, target, options, suffix, now, id_list, argv)


def _settle_in_background(target: Target, snaps: Sequence[SnapshotInfo]) -> threading.Thread:
    """:func:`settle` the snapshots on a connection of their own while the rebuild runs (its
    children work in other processes); a failure there only costs the compare that time."""
    def work() -> None:
        try:
            with connect(target, autocommit=True) as conn:
                settle(conn, snaps)
        except Exception as exc:  # noqa: BLE001 - an optimisation, never a reason to fail
            log.warning("reading the snapshots ahead of the compare failed: %s", redact(str(exc)))

    thread = threading.Thread(target=work, name="settle-snapshots", daemon=True)
    thread.start()
    return thread


def _phases(conn: psycopg.Connection, target: Target, options: CaptureOptions, suffix: str, now: dt.datetime,
            id_list: list[int], argv: Sequence[str]) -> CaptureResult:
    ids = options.ids  # None = every id (TRUNCATE); else only these ids are touched
    metadata: dict[str, Any] = {
        "captured_at": meta.iso(now), "suffix": suffix, "db_url": redact(target.url), "argv": meta.redacted_argv(argv),
        **meta.environment(), **meta.data_profile(conn, id_list),
        "tables": list(options.tables), "scratch_schema": options.scratch_schema,
        "sampling": vars(options.sampling), "row_counts_before": _counts(conn, options.tables, ids, "public"),
    }
    registry_insert(conn, suffix, now, ids, options.scratch_schema)
    problems: list[str] = []
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    try:
        # two cores copy at once: a second transaction on the same instant (take_snapshots)
        with (connect(target, autocommit=True) if (os.cpu_count() or 1) > 1 else contextlib.nullcontext()) as helper:
            snaps = take_snapshots(conn, suffix, options.tables, ids, helper=helper)
        lap("snapshot")
    except Exception as exc:  # nothing was created: the transaction rolled back
        registry_update(conn, suffix, status="snapshot_failed", message=redact(str(exc)))
        from ta_lab2.errors import DatabaseError

        raise DatabaseError(f"snapshot failed, nothing was truncated or rebuilt: {redact(str(exc)).strip()}",
                            hint=f"capture {suffix} is recorded as snapshot_failed in baseline_snapshots") from None
    registry_update(conn, suffix, status="snapshotted",
                    tables={s.table: {"snapshot": s.snapshot, "rows": s.rows} for s in snaps if s.table in PIPELINE_TABLES})
    phase = "snapshotted"
    runs: list[ChildRun] = []
    rebuilt_schema = options.scratch_schema or "public"
    settling = None if options.skip_rebuild else _settle_in_background(target, snaps)
    # From here on nothing may escape: record, continue, report.
    try:
        if not options.skip_rebuild:
            if options.scratch_schema:
                _prepare_scratch(conn, options.scratch_schema)
            else:
                registry_update(conn, suffix, status="truncating")
                truncate(conn, options.tables, ids)
                registry_update(conn, suffix, status="truncated")
            phase = "truncated"
            lap("truncate")
            registry_update(conn, suffix, status="rebuilding")
            extra, warnings = rebuild_config(conn, suffix, options.tables)
            problems += warnings
            metadata["rebuild_arguments"] = extra
            runs = rebuild(target, ids, options, extra)
            lap("rebuild")
            phase = "rebuilt"
            registry_update(conn, suffix, status="rebuilt" if all(r.ok for r in runs) else "rebuild_failed")
            problems += [f"rebuild {r.name} failed: {r.message or r.exit_code}" for r in runs if not r.ok]
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{phase}: {redact(str(exc))}")
        log.error("capture %s: %s", suffix, problems[-1])
    if settling is not None:
        settling.join()
    comparisons: list[TableComparison] = []
    try:
        comparisons = compare_all(conn, suffix, options.tables, ids, options, rebuilt_schema, target=target,
                                  presorted=not options.skip_rebuild)
        lap("compare")
        phase = "compared"
    except Exception as exc:  # noqa: BLE001
        problems.append(f"compare: {redact(str(exc))}")
    try:
        metadata["row_counts_after"] = _counts(conn, options.tables, ids, rebuilt_schema)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"row counts: {redact(str(exc))}")
    metadata["phase_seconds"] = seconds
    log.info("capture %s phases: %s", suffix, seconds)
    metadata["rebuild"] = [vars(r) for r in runs]
    metadata["snapshots"] = {s.table: s.snapshot for s in snaps}
    metadata["tolerances"] = {t: {c: vars(options.tolerances.for_column(t, c)) for c in ("open", "close", "volume", "market_cap", "ema")}
                              for t in options.tables}
    result = CaptureResult(suffix, meta.iso(now), id_list, phase, tuple(snaps), tuple(runs), tuple(comparisons), metadata,
                           tuple(problems))
    try:
        registry_update(conn, suffix, status=phase, verdict=result.verdict, metadata=metadata,
                        message="; ".join(problems) or None)
    except Exception as exc:  # noqa: BLE001
        log.error("registry update failed: %s", redact(str(exc)))
    return result


def _counts(conn: psycopg.Connection, tables: Sequence[str], ids: Sequence[int] | None, schema: str) -> dict[str, int]:
    where = sql.SQL("") if ids is None else sql.SQL(" WHERE id = ANY({})").format(sql.Literal(list(ids)))
    return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t)) + where).fetchone()[0])
            for t in tables}


def _prepare_scratch(conn: psycopg.Connection, scratch: str) -> None:
    """A scratch schema with the same source, assets and dimensions as the live one."""
    if scratch == "public":
        raise UsageError("--scratch-schema must not be the live schema")
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch)))
    ensure_schema(conn, scratch)
    with conn.transaction():
        for table in ("dim_assets", "cmc_price_histories7", "dim_timeframe", "dim_period"):
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(scratch, table)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(sql.Identifier(scratch, table), sql.Identifier("public", table)))


def compare_existing(target: Target, suffix: str, options: CaptureOptions) -> CaptureResult:
    """``baseline compare <suffix>``: an existing snapshot vs the current tables."""
    from ta_lab2.baseline.snapshots import registry_row

    with connect(target, autocommit=True) as conn:
        row = registry_row(conn, suffix)
        ids = row["ids"]
        tables = tuple(t for t in (row["tables"] or {}) if t in options.tables)
        if not tables:
            raise UsageError(f"capture {suffix} has no verified snapshots (status {row['status']})")
        comparisons = compare_all(conn, suffix, tables, ids, options, options.scratch_schema or "public",
                                  target=target)
        id_list = ids or resolve_ids(conn, None)
    now = row["captured_at"]
    return CaptureResult(suffix, meta.iso(now), id_list, "compared", (), (), tuple(comparisons),
                         {"suffix": suffix, "db_url": redact(target.url), "compared_at": meta.iso(dt.datetime.now(dt.timezone.utc))})
