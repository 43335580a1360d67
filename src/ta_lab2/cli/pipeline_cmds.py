"""The runner commands: ``ta-lab2 bars`` (= ``run_all_bar_builders.py``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from ta_lab2.cli import options as opt
from ta_lab2.errors import WorkFailed

log = logging.getLogger("ta_lab2")

OutputDir = Annotated[Path, typer.Option("--output-dir", help="Where the JSON summary and logs go.")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="Seconds each child may run before its process group is killed.")]
ContinueOnError = Annotated[bool, typer.Option("--continue-on-error", help="Run the remaining children after a failure.")]


def bars(
    ids: opt.Ids = None,
    db_url: opt.DbUrl = None,
    builders: Annotated[Optional[str], typer.Option("--builders", help="Comma subset of 1d,multi_tf,cal_iso,cal_us,cal_anchor_iso,cal_anchor_us.", show_default=False)] = None,
    skip: Annotated[Optional[str], typer.Option("--skip", help="Comma list of builders to leave out.", show_default=False)] = None,
    full_rebuild: Annotated[bool, typer.Option("--full-rebuild", help="Delete the selected ids' rows and state, then rebuild.")] = False,
    include_non_canonical: Annotated[bool, typer.Option("--include-non-canonical", help="Also build non-canonical timeframes.")] = False,
    num_processes: opt.NumProcesses = None,
    tz: opt.Tz = "UTC",
    continue_on_error: ContinueOnError = False,
    verbose: opt.Verbose = False,
    dry_run: opt.DryRun = False,
    timeout: Timeout = 6 * 3600.0,
    wait_lock: opt.WaitLock = 0.0,
    output_dir: OutputDir = Path(".logs"),
    log_level: opt.LogLevel = "INFO",
) -> None:
    """Run the six bar builders in dependency order (1d first), each in its own process."""
    from ta_lab2.cli.render import run_summary_table
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.logs import setup_logging
    from ta_lab2.pipeline.bars_runner import BarRunOptions, run_bar_builders, select_builders
    from ta_lab2.pipeline.runner import write_run_summary

    setup_logging(opt.parse_log_level(log_level), log_dir=output_dir)
    options = BarRunOptions(
        ids=opt.parse_ids(ids), builders=select_builders(builders, skip), full_rebuild=full_rebuild,
        include_non_canonical=include_non_canonical, num_processes=num_processes, tz=opt.check_tz(tz),
        continue_on_error=continue_on_error, verbose=verbose, dry_run=dry_run, timeout_s=timeout,
        log_level=opt.parse_log_level(log_level), wait_lock=wait_lock,
    )
    target = resolve_target(db_url)
    summary = run_bar_builders(target, options, output_dir)
    path = None if dry_run else write_run_summary(summary, output_dir)
    run_summary_table(summary, path)
    if not summary.ok:
        raise WorkFailed(f"{sum(not c.ok for c in summary.children)} builder(s) did not succeed")


bars_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Run the six bar builders.")
bars_app.command()(bars)
