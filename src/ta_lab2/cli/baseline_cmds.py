"""``ta-lab2 baseline capture | list | compare | restore | drop`` and ``ta-lab2 demo``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ta_lab2 import flags
from ta_lab2.cli import options as opt
from ta_lab2.errors import UsageError, WorkFailed

log = logging.getLogger("ta_lab2")

baseline_app = typer.Typer(help="Snapshot → truncate → rebuild → compare: prove a rebuild computes what it computed before.",
                           no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

OutputDir = Annotated[Path, typer.Option("--output-dir", help="Reports and logs go here.")]
# Sampling never decides what is found: every row is compared, every difference classified.
_NOT_DETECTION = " Never limits detection: every row of every table is compared."
SampleBeginning = Annotated[int, typer.Option(
    "--sample-beginning", min=0, help="Identical rows at the start of every series counted in the mean/std of "
    "differences." + _NOT_DETECTION)]
SampleEnd = Annotated[int, typer.Option(
    "--sample-end", min=0, help="Identical rows at the end of every series counted in the mean/std of differences.")]
SampleRandomPct = Annotated[float, typer.Option(
    "--sample-random-pct", min=0.0, max=1.0, help="Share (0–1) of the other identical rows counted in those statistics.")]
Seed = Annotated[int, typer.Option("--seed", help="Makes that sample reproducible.")]
Full = Annotated[bool, typer.Option("--full", help="Statistics over every row, no sample (verdicts and divergences "
                                                   "are over every row either way).")]
TolerancesFile = Annotated[Optional[Path], typer.Option(
    "--tolerances", help="TOML file of per-column rtol/atol overrides (finite numbers ≥ 0).", show_default=False)]
ExpectedDiffsFile = Annotated[Optional[Path], typer.Option(
    "--expected-diffs", help="TOML allow-list of intended differences (reported as INFO with their reason).",
    show_default=False)]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _load_toml(path: Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    import tomllib

    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what}: {path} is not valid TOML: {exc}") from None


def parse_tolerances(path: Path | None):  # type: ignore[no-untyped-def]
    from ta_lab2.baseline.comparison_utils import Tolerances

    try:
        return Tolerances.from_mapping(_load_toml(path, "--tolerances"))
    except ValueError as exc:
        raise UsageError(f"--tolerances: {path}: {exc}") from None


def parse_expected(path: Path | None):  # type: ignore[no-untyped-def]
    """The ``--expected-diffs`` entries, each checked so that it covers exactly what it says: a
    known table; ``columns`` / ``tfs`` lists of names and ``ids`` a list of integer ids, each
    left out (not empty) to cover all; no other key (a misspelt ``column`` would otherwise
    widen the entry to every column); a reason."""
    from ta_lab2.baseline.comparison_utils import ExpectedDiff
    from ta_lab2.db.tables import PIPELINE_TABLES

    data = _load_toml(path, "--expected-diffs")
    unknown_sections = set(data) - {"expected"}
    if unknown_sections:
        raise UsageError(f"--expected-diffs: {path}: unknown section(s) {', '.join(sorted(unknown_sections))}; "
                         "write entries as [[expected]]")
    out = []
    for i, item in enumerate(data.get("expected", [])):
        where = f"--expected-diffs: {path}, entry {i + 1}"
        if not isinstance(item, dict) or "table" not in item or "reason" not in item:
            raise UsageError(f"{where} needs 'table' and 'reason'")
        unknown = set(item) - {"table", "reason", "columns", "ids", "tfs"}
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; the keys are table, reason, "
                             "columns, ids and tfs")
        if item["table"] not in PIPELINE_TABLES:
            raise UsageError(f"{where}: table {item['table']!r} is not one of the 12 tables")
        if not isinstance(item["reason"], str) or not item["reason"].strip():
            raise UsageError(f"{where}: reason must say why the difference is intended")
        lists = {}
        for key, kind in (("columns", str), ("ids", int), ("tfs", str)):
            value = item.get(key)
            if value is None:
                lists[key] = ()
                continue
            if not isinstance(value, list) or not value:
                raise UsageError(f"{where}: {key} = {value!r} must be a non-empty list (leave {key} out to cover all)")
            bad = [x for x in value if isinstance(x, bool) or not isinstance(x, kind)]
            if bad:
                what = "an integer id" if kind is int else "a name"
                raise UsageError(f"{where}: {key} = {bad[0]!r} is not {what}")
            lists[key] = tuple(value)
        out.append(ExpectedDiff(item["table"], lists["columns"], item["reason"], lists["ids"], lists["tfs"]))
    return tuple(out)


def capture(
    ids: opt.Ids = None,
    db_url: opt.DbUrl = None, database: opt.Database = None,
    dry_run: opt.DryRun = False,
    verbose: opt.Verbose = False,
    skip_rebuild: Annotated[bool, typer.Option("--skip-rebuild", help="Snapshot + compare only (a self-check: must PASS).")] = False,
    output_dir: OutputDir = Path(".logs/baseline"),
    log_level: opt.LogLevel = "WARNING",
    sample_beginning: SampleBeginning = 30,
    sample_end: SampleEnd = 30,
    sample_random_pct: SampleRandomPct = 0.05,
    seed: Seed = 20250205,
    full: Full = False,
    tables: Annotated[Optional[str], typer.Option("--tables", help="Comma subset of the 12 tables (default all).", show_default=False)] = None,
    tolerances: TolerancesFile = None,
    expected_diffs: ExpectedDiffsFile = None,
    scratch_schema: Annotated[Optional[str], typer.Option("--scratch-schema", help="Rebuild into this schema and compare live vs it; live tables untouched.", show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds each rebuild child may run.")] = 6 * 3600.0,
    wait_lock: opt.WaitLock = 0.0,
    executor: opt.Executor = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Snapshot → Truncate → Rebuild → Compare → Report.

    Every row of every table is compared; every difference is classified (INFO / WARNING /
    CRITICAL) and traced to its root cause (source data revised, inherited from an input
    table, or a computation change). Exit 0 = PASS, 1 = differences or a failed rebuild
    (report written), 2 = usage/infrastructure error before anything changed."""
    from ta_lab2.baseline.capture import CaptureOptions, run_capture
    from ta_lab2.baseline.comparison_utils import Sampling
    from ta_lab2.baseline.metadata_tracker import redacted_argv
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.db.tables import PIPELINE_TABLES
    from ta_lab2.logs import setup_logging

    level = flags.parse_log_level(log_level)
    setup_logging(level, log_dir=output_dir)
    table_list = tuple(t.strip() for t in tables.split(",") if t.strip()) if tables else PIPELINE_TABLES
    runs_on, address = flags.resolve_executor(executor, scheduler)
    options = CaptureOptions(
        ids=flags.parse_ids(ids), tables=table_list, skip_rebuild=skip_rebuild, dry_run=dry_run, verbose=verbose,
        sampling=Sampling(sample_beginning, sample_end, sample_random_pct, seed, full),
        tolerances=parse_tolerances(tolerances), expected=parse_expected(expected_diffs),
        scratch_schema=scratch_schema, output_dir=output_dir, timeout_s=timeout, wait_lock=wait_lock, log_level=level,
        executor=runs_on, scheduler=address,
    )
    result = run_capture(resolve_target(db_url, database), options, redacted_argv(sys.argv))
    _render(result, output_dir)


def _render(result, output_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from ta_lab2.baseline.report import write_reports
    from ta_lab2.cli.render import capture_summary, console

    if result.plan:
        console.print("[bold]baseline capture plan (dry run: nothing was changed)[/]")
        for line in result.plan:
            console.print("  " + line, markup=False, highlight=False)
        return
    paths = write_reports(result, output_dir)
    capture_summary(result, paths)
    if result.exit_code:
        raise WorkFailed(f"{'compare' if result.kind == 'compare' else 'baseline'} {result.suffix}: {result.verdict}")


baseline_app.command("capture")(capture)
capture_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Baseline capture.")
capture_app.command()(capture)


@baseline_app.command("list")
def list_cmd(db_url: opt.DbUrl = None, database: opt.Database = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Captures with status, suffix, ids, row counts and size."""
    from ta_lab2.baseline.snapshots import list_captures
    from ta_lab2.cli.render import captures_table, print_json
    from ta_lab2.db.connect import connect, resolve_target
    from ta_lab2.db.schema import ensure_schema

    target = resolve_target(db_url, database)
    with connect(target, autocommit=True) as conn:
        ensure_schema(conn)
        rows = list_captures(conn)
    print_json(rows) if as_json else captures_table(rows)


@baseline_app.command("compare")
def compare_cmd(
    suffix: Annotated[str, typer.Argument(help="The capture to compare with the current tables.")],
    db_url: opt.DbUrl = None, database: opt.Database = None,
    full: Full = False,
    sample_beginning: SampleBeginning = 30,
    sample_end: SampleEnd = 30,
    sample_random_pct: SampleRandomPct = 0.05,
    seed: Seed = 20250205,
    tolerances: TolerancesFile = None,
    expected_diffs: ExpectedDiffsFile = None,
    output_dir: OutputDir = Path(".logs/baseline"),
    wait_lock: opt.WaitLock = 0.0,
    log_level: opt.LogLevel = "WARNING",
) -> None:
    """Compare an existing snapshot with the current tables (no truncate, no rebuild). Writes
    its own report files (compare-SUFFIX-at-INSTANT.*); the capture's are never touched.
    Refused while a load, build, refresh or capture writes the tables (--wait-lock waits)."""
    from ta_lab2.baseline.capture import CaptureOptions, compare_existing
    from ta_lab2.baseline.comparison_utils import Sampling
    from ta_lab2.baseline.naming import check_suffix
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.logs import setup_logging

    setup_logging(flags.parse_log_level(log_level), log_dir=output_dir)
    options = CaptureOptions(ids=None, sampling=Sampling(sample_beginning, sample_end, sample_random_pct, seed, full),
                             tolerances=parse_tolerances(tolerances), expected=parse_expected(expected_diffs),
                             output_dir=output_dir, wait_lock=wait_lock)
    _render(compare_existing(resolve_target(db_url, database), check_suffix(suffix), options), output_dir)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("not on a terminal: pass --yes to confirm")
    if not typer.confirm(question):
        raise UsageError("cancelled")


@baseline_app.command("restore")
def restore_cmd(suffix: Annotated[str, typer.Argument(help="The capture to restore.")], db_url: opt.DbUrl = None, database: opt.Database = None, yes: Yes = False) -> None:
    """Put a snapshot's rows back into the live tables (one transaction: all or nothing)."""
    from ta_lab2.baseline.naming import check_suffix
    from ta_lab2.baseline.snapshots import is_running, registry_row, restore
    from ta_lab2.cli.render import console
    from ta_lab2.db.connect import connect, resolve_target
    from ta_lab2.db.locks import writer_locks

    check_suffix(suffix)
    target = resolve_target(db_url, database)
    with connect(target, autocommit=True) as conn:
        registry_row(conn, suffix)
        if is_running(conn, suffix):  # say so, rather than that the pipeline's locks are taken
            raise UsageError(f"capture {suffix} is running; wait for it to finish (`ta-lab2 baseline list` shows it)")
        _confirm(f"Replace the live rows of capture {suffix}'s ids with its snapshot?", yes)
        with writer_locks(conn, "baseline"):
            restored = restore(conn, suffix)
    for table, rows in restored.items():
        console.print(f"restored {table}: {rows:,} rows", highlight=False)


@baseline_app.command("drop")
def drop_cmd(
    suffix: Annotated[str, typer.Argument(help="The capture to drop.")],
    db_url: opt.DbUrl = None, database: opt.Database = None,
    yes: Yes = False,
    force: Annotated[bool, typer.Option("--force", help="Also drop a capture that was interrupted after it truncated "
                                        "the live tables (its snapshot may hold the only copy of their rows).")] = False,
) -> None:
    """Drop a capture's snapshot tables and registry entry. A running capture is never dropped."""
    from ta_lab2.baseline.naming import check_suffix
    from ta_lab2.baseline.snapshots import CHANGED_PHASES, capture_state, drop, is_running, registry_row
    from ta_lab2.cli.render import console
    from ta_lab2.db.connect import connect, resolve_target

    check_suffix(suffix)
    target = resolve_target(db_url, database)
    with connect(target, autocommit=True) as conn:
        row = registry_row(conn, suffix)
        state, _ = capture_state(row, is_running(conn, suffix))
        risky = state == "interrupted" and row["status"] in CHANGED_PHASES and not row.get("scratch_schema")
        if risky and not force and sys.stdin.isatty() and not yes:
            console.print(f"[yellow]capture {suffix} was interrupted after it truncated the live tables: its snapshot "
                          "may be the only copy of their rows.[/] Restore it first with "
                          f"`ta-lab2 baseline restore {suffix}`.")
            force = typer.prompt("Type the suffix to drop it anyway", default="", show_default=False) == suffix
            if not force:
                raise UsageError("cancelled")
        elif not risky:
            _confirm(f"Drop every snapshot of capture {suffix}?", yes)
        drop(conn, suffix, force=force)
    console.print(f"dropped capture {suffix}")


def demo(
    db_url: Annotated[Optional[str], typer.Option("--db-url", help="Run on this (empty) database instead of a private demo database on the embedded server.", show_default=False)] = None,
    assets: Annotated[int, typer.Option("--assets", min=1, help="Synthetic assets.")] = 5,
    days: Annotated[int, typer.Option("--days", min=30, help="History of the longest asset, in days.")] = 3 * 365,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Synthetic data seed.")] = 1,
    output_dir: OutputDir = Path(".logs/demo"),
    log_level: opt.LogLevel = "WARNING",
) -> None:
    """From nothing to a finished baseline report: embedded database, synthetic data, every bar
    and EMA table, a baseline capture. Uses its own database, never yours."""
    from contextlib import contextmanager

    from ta_lab2.baseline.report import write_reports
    from ta_lab2.cli.render import capture_summary, command_name, console
    from ta_lab2.demo import DEMO_DATABASE, DemoOptions, run_demo
    from ta_lab2.logs import setup_logging

    setup_logging(flags.parse_log_level(log_level), log_dir=output_dir)

    @contextmanager
    def step(name: str):  # type: ignore[no-untyped-def]
        import time

        started = time.perf_counter()
        with console.status(f"{name} …"):
            yield
        console.print(f"[green]✓[/] {name} [dim]({time.perf_counter() - started:.1f} s)[/]")

    target, result, timings, runs = run_demo(db_url, DemoOptions(assets, days, seed, output_dir), step)
    rows = {c.summary.get("table", c.name): c.summary.get("rows_inserted", 0)
            for r in runs.values() for c in r.children if c.summary}
    console.print(f"built {sum(rows.values()):,} rows in {len(rows)} tables")
    paths = write_reports(result, output_dir)
    capture_summary(result, paths)
    console.print(f"[bold]total {timings.total:.1f} s[/] — the report: {paths['html']}", highlight=False)
    where = f"--database {DEMO_DATABASE}" if db_url is None else "--db-url …   (the URL you gave)"
    console.print("next, on the demo's data:", highlight=False)
    program = command_name()
    for line in (f"{program} status {where}", f"{program} baseline list {where}",
                 f"{program} baseline capture --ids all {where}"):
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if result.exit_code:
        raise WorkFailed(f"demo capture {result.suffix}: {result.verdict}")


def bench(
    scenario: Annotated[str, typer.Option("--scenario", help="upstream, wide, all, universe (or tiny, for a quick check).")] = "all",
    assets: Annotated[int | None, typer.Option("--assets", help="universe: number of assets (500).", show_default=False)] = None,
    days: Annotated[int | None, typer.Option("--days", help="universe: days in the window (the oldest asset's history).", show_default=False)] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="universe: the scenario its per-row costs are compared with (upstream).", show_default=False)] = None,
    as_json: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file.", show_default=False)] = None,
    output_dir: OutputDir = Path(".logs/bench"),
    log_level: opt.LogLevel = "WARNING",
    executor: opt.Executor = None,
    scheduler: opt.Scheduler = None,
) -> None:
    """Measure the speed targets on this machine (fresh databases on the embedded server)."""
    import json

    from ta_lab2.bench import run_bench
    from ta_lab2.bench_scenarios import select_scenarios
    from ta_lab2.cli.render import bench_table
    from ta_lab2.logs import setup_logging

    setup_logging(flags.parse_log_level(log_level), log_dir=output_dir)
    try:
        scenarios = select_scenarios(scenario, assets, days, reference)
    except ValueError as exc:
        raise UsageError(f"--scenario: {exc}") from None
    runs_on, address = flags.resolve_executor(executor, scheduler)
    results = run_bench(scenarios, output_dir, runs_on, address)
    for r in results:
        bench_table(r)
    if as_json is not None:
        as_json.parent.mkdir(parents=True, exist_ok=True)
        as_json.write_text(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    if any(not b.met for r in results for b in r.bars):
        raise WorkFailed("some speed bars were not met (see the tables above)")


bench_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Speed benchmark.")
bench_app.command()(bench)
