"""The baseline capture: Preflight → Snapshot → Truncate → Rebuild → Compare → Report.

:func:`run_capture` never lets an exception escape once truncation has begun: every later
failure is recorded in the result (and the registry), the comparison still runs, the report is
still written. Before that point, errors raise and nothing has changed (exit code 2).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg import sql

from ta_lab2.baseline import metadata_tracker as meta
from ta_lab2.baseline.comparison_utils import ExpectedDiff, Sampling, Tolerances
from ta_lab2.baseline.naming import make_suffix, snapshot_name
from ta_lab2.baseline.rebuild import ChildRun, RebuildSettings, planned_commands, rebuild, rebuild_config
from ta_lab2.baseline.results import RootCause, TableComparison, summarize_comparison
from ta_lab2.baseline.scratch import check_scratch, prepare_scratch
from ta_lab2.baseline.snapshots import (
    SnapshotInfo, capture_instant, capture_lock, check_tables, registry_insert, registry_update, settle, take_snapshots,
    truncate,
)
from ta_lab2.baseline.tables import CompareSettings, RootChart, compare_all, state_differences
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import advisory_lock, writer_locks
from ta_lab2.db.schema import ensure_schema
from ta_lab2.db.tables import PIPELINE_TABLES
from ta_lab2.redaction import redact
from ta_lab2.errors import DatabaseError, UsageError
from ta_lab2.logs import writable_dir
from ta_lab2.work.units import resolve_ids

log = logging.getLogger(__name__)


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
    log_level: str = "WARNING"
    executor: str = "local"  # the rebuild's runners: --executor
    scheduler: str | None = None  # and --scheduler (dask)

    @property
    def compare(self) -> CompareSettings:
        return CompareSettings(self.sampling, self.tolerances, self.expected, self.top_n)

    @property
    def rebuild(self) -> RebuildSettings:
        return RebuildSettings(self.output_dir, self.timeout_s, self.log_level, self.verbose, self.scratch_schema,
                               self.executor, self.scheduler)


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
    notes: tuple[str, ...] = ()  # worth saying, not a failure (e.g. the tables were empty)
    root_causes: tuple[RootCause, ...] = ()
    charts: tuple[RootChart, ...] = ()
    #: "capture", or "compare" (``baseline compare``: the snapshot against the current tables)
    kind: str = "capture"
    compared_at: str | None = None

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

    @property
    def report_stem(self) -> str:
        """File name stem of this result's reports: a compare never overwrites its capture's."""
        if self.kind == "compare":
            return f"compare-{self.suffix}-at-{(self.compared_at or '').replace('-', '').replace(':', '')[:15]}"
        return f"baseline-{self.suffix}"


def plan_lines(target: Target, suffix: str, ids: list[int] | None, options: CaptureOptions) -> list[str]:
    where = "" if ids is None else f" WHERE id = ANY(ARRAY[{','.join(map(str, ids))}])"
    lines = [f"database: {target.describe()}", f"suffix: {suffix} (the clock is read when the capture starts working)"]
    for t in options.tables:
        lines.append(f"snapshot: CREATE TABLE public.{snapshot_name(t, suffix)} AS SELECT * FROM public.{t}{where}")
    lines.append(f"state tables, 1D rejects and deletions: copied into schema baseline_{suffix}")
    if options.skip_rebuild or options.scratch_schema:
        lines.append("truncate: none" + (f" (rebuild into scratch schema {options.scratch_schema})" if options.scratch_schema else ""))
    else:
        lines.append("truncate: " + ("TRUNCATE" if ids is None else "DELETE … WHERE id = ANY(ids)") + " of the tables and their state, bars first")
    if not options.skip_rebuild:
        lines += [f"rebuild: {command}" for command in planned_commands(ids, options.rebuild, options.tables)]
    lines.append("compare: " + options.sampling.describe())
    return lines


def run_capture(target: Target, options: CaptureOptions, argv: Sequence[str] = ()) -> CaptureResult:
    """Run a capture end to end. Raises before phase 2 on usage/infrastructure errors."""
    unknown = [t for t in options.tables if t not in PIPELINE_TABLES]
    if unknown:
        raise UsageError(f"--tables: unknown table(s) {', '.join(unknown)}")
    if not options.dry_run:
        writable_dir(options.output_dir, "--output-dir")
    with connect(target, autocommit=True) as conn:
        if options.scratch_schema:
            check_scratch(conn, options.scratch_schema)
        if options.dry_run:
            id_list = resolve_ids(conn, options.ids)
            suffix = make_suffix(dt.datetime.now(dt.timezone.utc))
            return CaptureResult(suffix, meta.iso(dt.datetime.now(dt.timezone.utc)), id_list, "dry-run", (), (), (), {},
                                 plan=tuple(plan_lines(target, suffix, options.ids, options)))
        with writer_locks(conn, "baseline", options.wait_lock):
            ensure_schema(conn)
            id_list = resolve_ids(conn, options.ids)
            check_tables(conn, options.tables)
            # the one clock read, once the capture may work: the suffix and every metadata instant
            now = capture_instant(conn, dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
            suffix = make_suffix(now)
            # held while it runs: `baseline list` tells running from interrupted, drop waits
            with advisory_lock(conn, capture_lock(suffix)):
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
        "sampling": {**vars(options.sampling), "statement": options.sampling.describe()},
        "row_counts_before": _counts(conn, options.tables, ids, "public"),
    }
    registry_insert(conn, suffix, now, ids, options.scratch_schema)
    problems: list[str] = []
    notes: list[str] = []
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
        raise DatabaseError(f"snapshot failed, nothing was truncated or rebuilt: {redact(str(exc)).strip()}",
                            hint=f"capture {suffix} is recorded as snapshot_failed in baseline_snapshots") from None
    registry_update(conn, suffix, status="snapshotted",
                    tables={s.table: {"snapshot": s.snapshot, "rows": s.rows} for s in snaps if s.table in PIPELINE_TABLES})
    if all(s.rows == 0 for s in snaps if s.table in PIPELINE_TABLES):
        notes.append("every selected table was empty, so this capture proves nothing: build the tables first "
                     "(`ta-lab2 refresh --all`)")
    phase = "snapshotted"
    runs: list[ChildRun] = []
    rebuilt_schema = options.scratch_schema or "public"
    settling = None if options.skip_rebuild else _settle_in_background(target, snaps)
    live_changed = False  # the live tables were (being) truncated: their rows are in the snapshot only
    # From here on nothing may escape: record, continue, report.
    try:
        if not options.skip_rebuild:
            if options.scratch_schema:
                prepare_scratch(conn, options.scratch_schema, suffix)
            else:
                registry_update(conn, suffix, status="truncating")
                live_changed = True
                truncate(conn, options.tables, ids)
                registry_update(conn, suffix, status="truncated")
            phase = "truncated"
            lap("truncate")
            registry_update(conn, suffix, status="rebuilding")
            extra, warnings = rebuild_config(conn, suffix, options.tables)
            problems += warnings
            metadata["rebuild_arguments"] = extra
            runs = rebuild(target, ids, options.rebuild, options.tables, extra)
            lap("rebuild")
            phase = "rebuilt"
            registry_update(conn, suffix, status="rebuilt" if all(r.ok for r in runs) else "rebuild_failed")
            problems += [f"rebuild {r.name} failed: {r.message or r.exit_code}" for r in runs if not r.ok]
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{phase}: {redact(str(exc))}")
        log.error("capture %s: %s", suffix, problems[-1])
    if settling is not None:
        settling.join()
    comparison = None
    try:
        comparison = compare_all(conn, suffix, options.tables, ids, options.compare, rebuilt_schema, target=target,
                                 presorted=not options.skip_rebuild)
        lap("compare")
        phase = "compared"
    except Exception as exc:  # noqa: BLE001
        problems.append(f"compare: {redact(str(exc))}")
    try:
        problems += state_differences(conn, suffix, options.tables, ids, rebuilt_schema)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"state compare: {redact(str(exc))}")
    try:
        metadata["row_counts_after"] = _counts(conn, options.tables, ids, rebuilt_schema)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"row counts: {redact(str(exc))}")
    # a rebuild that failed or never ended (an error before or during it) leaves the live tables
    # truncated or half rebuilt: recorded as rebuild_failed, which restore's hint and drop's
    # refusal follow, whatever phase the compare reached
    rebuild_failed = live_changed and not (runs and all(r.ok for r in runs))
    if rebuild_failed:
        problems.append(f"the live tables now hold a failed rebuild: run `ta-lab2 baseline restore {suffix}` "
                        "to put the snapshot back")
    metadata["phase_seconds"] = seconds
    log.info("capture %s took %s", suffix, ", ".join(f"{phase} {s:.1f} s" for phase, s in seconds.items()) or "no time")
    metadata["rebuild"] = [vars(r) for r in runs]
    metadata["snapshots"] = {s.table: s.snapshot for s in snaps}
    metadata["tolerances"] = {t: {c: vars(options.tolerances.for_column(t, c)) for c in ("open", "close", "volume", "market_cap", "ema")}
                              for t in options.tables}
    result = CaptureResult(suffix, meta.iso(now), id_list, phase, tuple(snaps), tuple(runs),
                           comparison.tables if comparison else (), metadata, tuple(problems), notes=tuple(notes),
                           root_causes=comparison.root_causes if comparison else (),
                           charts=comparison.charts if comparison else ())
    try:
        registry_update(conn, suffix, status="rebuild_failed" if rebuild_failed else phase, verdict=result.verdict,
                        metadata=metadata,
                        message="; ".join(problems) or None)
    except Exception as exc:  # noqa: BLE001
        log.error("registry update failed: %s", redact(str(exc)))
    return result


def _counts(conn: psycopg.Connection, tables: Sequence[str], ids: Sequence[int] | None, schema: str) -> dict[str, int]:
    where = sql.SQL("") if ids is None else sql.SQL(" WHERE id = ANY({})").format(sql.Literal(list(ids)))
    return {t: int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, t)) + where).fetchone()[0])
            for t in tables}


def compare_existing(target: Target, suffix: str, options: CaptureOptions) -> CaptureResult:
    """``baseline compare <suffix>``: an existing snapshot vs the current tables."""
    from ta_lab2.baseline.snapshots import registry_row

    compared_at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    writable_dir(options.output_dir, "--output-dir")
    with connect(target, autocommit=True) as conn, writer_locks(conn, "compare", options.wait_lock):
        row = registry_row(conn, suffix)
        ids = row["ids"]
        tables = tuple(t for t in (row["tables"] or {}) if t in options.tables)
        if not tables:
            raise UsageError(f"capture {suffix} has no verified snapshots (status {row['status']})")
        comparison = compare_all(conn, suffix, tables, ids, options.compare, options.scratch_schema or "public",
                                 target=target)
        id_list = ids or resolve_ids(conn, None)
    return CaptureResult(suffix, meta.iso(row["captured_at"]), id_list, "compared", (), (), comparison.tables,
                         {"suffix": suffix, "db_url": redact(target.url), "compared_at": meta.iso(compared_at),
                          "sampling": {**vars(options.sampling), "statement": options.sampling.describe()}},
                         root_causes=comparison.root_causes, charts=comparison.charts, kind="compare",
                         compared_at=meta.iso(compared_at))
