"""The runner commands: ``ta-lab2 bars`` (= ``run_all_bar_builders.py``), ``ta-lab2 emas``
(= ``run_all_ema_refreshes.py``) and ``ta-lab2 refresh`` (= ``run_daily_refresh.py``)."""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from ta_lab2 import flags
from ta_lab2.cli import options as opt
from ta_lab2.errors import UsageError, WorkFailed

log = logging.getLogger("ta_lab2")

OutputDir = Annotated[Path, typer.Option("--output-dir", help="Where the JSON summary and logs go.")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="Seconds each child may run before its process group is killed.")]
ContinueOnError = Annotated[bool, typer.Option("--continue-on-error", help="Run the remaining children after a failure.")]


def _finish(summary, output_dir: Path, dry_run: bool, target=None, schema: str = "public") -> None:  # type: ignore[no-untyped-def]
    from ta_lab2.cli.render import run_summary_table
    from ta_lab2.launch.results import write_run_summary

    path = None if dry_run else write_run_summary(summary, output_dir)
    rejects = None
    if target is not None and any(c.name == "1d" and (c.summary.get("rejects") or 0) for c in summary.children):
        import datetime as dt

        from ta_lab2.bars.rejects import rejects_since

        rejects = rejects_since(target, dt.datetime.fromisoformat(summary.started_at), schema=schema)
    run_summary_table(summary, path, rejects)
    if not summary.ok:
        raise WorkFailed(f"{sum(c.status in ('failed', 'timeout') for c in summary.children)} child process(es) did not succeed")


#: The options every runner command takes after its own: annotation and default, declared once.
_RUN_FLAGS: dict[str, tuple[Any, Any]] = {
    "num_processes": (opt.NumProcesses, None),
    "continue_on_error": (ContinueOnError, False),
    "verbose": (opt.Verbose, False),
    "dry_run": (opt.DryRun, False),
    "timeout": (Timeout, 6 * 3600.0),
    "wait_lock": (opt.WaitLock, 0.0),
    "output_dir": (OutputDir, Path(".logs")),
    "log_level": (opt.LogLevel, "WARNING"),
    "executor": (opt.Executor, None),
    "scheduler": (opt.Scheduler, None),
}


@dataclass(frozen=True)
class RunFlags:
    """The values of :data:`_RUN_FLAGS` for one command line."""

    num_processes: int | None
    continue_on_error: bool
    verbose: bool
    dry_run: bool
    timeout: float
    wait_lock: float
    output_dir: Path
    log_level: str
    executor: str | None
    scheduler: str | None

    def options(self, ids: str | None, **kw: Any):  # type: ignore[no-untyped-def]
        """Set up logging (console at ``--log-level``, everything in the output directory's log
        file) and return the runner's options: these flags, ``ids`` parsed, and ``kw``."""
        from ta_lab2.logs import setup_logging
        from ta_lab2.runners.plan import RunOptions

        level = flags.parse_log_level(self.log_level)
        setup_logging(level, log_dir=self.output_dir)
        executor, scheduler = flags.resolve_executor(self.executor, self.scheduler)
        return RunOptions(ids=flags.parse_ids(ids), num_processes=self.num_processes,
                          continue_on_error=self.continue_on_error, verbose=self.verbose, dry_run=self.dry_run,
                          timeout_s=self.timeout, log_level=level, wait_lock=self.wait_lock, executor=executor,
                          scheduler=scheduler, **kw)


def runner_command(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn``'s own options followed by the shared :data:`_RUN_FLAGS`, which reach ``fn`` as one
    :class:`RunFlags` argument ``run`` (Typer reads the signature this returns)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values() if p.name != "run"]
    shared = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
              for name, (annotation, default) in _RUN_FLAGS.items()]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        fn(**kwargs | {"run": RunFlags(**{name: kwargs.pop(name) for name in _RUN_FLAGS})})

    command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [*own, *shared]}
    return command


@runner_command
def bars(
    ids: opt.Ids = None,
    db_url: opt.DbUrl = None, database: opt.Database = None,
    builders: Annotated[Optional[str], typer.Option("--builders", help="Comma subset of 1d,multi_tf,cal_iso,cal_us,cal_anchor_iso,cal_anchor_us.", show_default=False)] = None,
    skip: Annotated[Optional[str], typer.Option("--skip", help="Comma list of builders to leave out.", show_default=False)] = None,
    full_rebuild: opt.FullRebuild = False,
    include_non_canonical: opt.IncludeNonCanonical = False,
    tz: opt.Tz = "UTC",
    schema: opt.Schema = "public",
    *, run: RunFlags,
) -> None:
    """Run the six bar builders in dependency order (1d first), each in its own process."""
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.runners.plan import BUILDER_ORDER, select
    from ta_lab2.runners.run import run_bar_builders

    options = run.options(ids, full=full_rebuild, include_non_canonical=include_non_canonical,
                          tz=flags.check_tz(tz), schema=schema)
    chosen = select(BUILDER_ORDER, builders, skip, "--builders")
    target = resolve_target(db_url, database)
    _finish(run_bar_builders(target, options, chosen), run.output_dir, run.dry_run, target, schema)


@runner_command
def emas(
    ids: opt.Ids = "all",
    db_url: opt.DbUrl = None, database: opt.Database = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Comma subset of multi_tf,v2,cal_us,cal_iso,cal_anchor_us,cal_anchor_iso.", show_default=False)] = None,
    skip: Annotated[Optional[str], typer.Option("--skip", help="Comma list of refreshers to leave out.", show_default=False)] = None,
    periods: opt.Periods = None,
    full_refresh: opt.FullRefresh = False,
    include_non_canonical: opt.IncludeNonCanonical = False,
    schema: opt.Schema = "public",
    *, run: RunFlags,
) -> None:
    """Run the six EMA refreshers, each in its own process."""
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.runners.plan import REFRESHER_ORDER, select
    from ta_lab2.runners.run import run_ema_refreshes

    options = run.options(ids, full=full_refresh, include_non_canonical=include_non_canonical, periods=periods,
                          schema=schema)
    chosen = select(REFRESHER_ORDER, only, skip, "--only")
    flags.parse_periods(periods)  # validate here: a usage error before any child starts
    _finish(run_ema_refreshes(resolve_target(db_url, database), options, chosen), run.output_dir, run.dry_run)


@runner_command
def refresh(
    bars_: Annotated[bool, typer.Option("--bars", help="Refresh the bar tables.")] = False,
    emas_: Annotated[bool, typer.Option("--emas", help="Refresh the EMA tables.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Bars, then EMAs.")] = False,
    ids: opt.Ids = "all",
    db_url: opt.DbUrl = None, database: opt.Database = None,
    skip_stale_check: Annotated[bool, typer.Option("--skip-stale-check", help="Refresh EMAs for every id, fresh or not.")] = False,
    staleness_hours: Annotated[float, typer.Option("--staleness-hours", min=0, help="An id is stale when its last source day is this many hours before the newest source day of any id.")] = 48.0,
    tz: opt.Tz = "UTC",
    schema: opt.Schema = "public",
    *, run: RunFlags,
) -> None:
    """Daily refresh: bars, then EMAs for the ids whose data is fresh (stale ids are listed)."""
    from ta_lab2.cli.render import console
    from ta_lab2.db.connect import resolve_target
    from ta_lab2.runners.run import run_daily_refresh

    if not (bars_ or emas_ or all_):
        raise UsageError("refresh: choose --bars, --emas or --all")
    options = run.options(ids, tz=flags.check_tz(tz), schema=schema)
    target = resolve_target(db_url, database)
    summary = run_daily_refresh(target, options, bars=bars_ or all_, emas=emas_ or all_,
                                skip_stale_check=skip_stale_check, staleness_hours=staleness_hours)
    stale = summary.extra.get("stale_ids") or []
    if stale:
        newest = (summary.extra.get("newest_source_day") or "")[:10]
        shown = ", ".join(map(str, stale[:20])) + (f" … (+{len(stale) - 20})" if len(stale) > 20 else "")
        console.print(f"[yellow]EMAs skipped for {len(stale)} stale id{'s' if len(stale) != 1 else ''}[/]: {shown} — "
                      f"their last source day is more than {staleness_hours:g} h before the newest day in the source "
                      f"({newest}). To include them: --skip-stale-check, or a larger --staleness-hours.",
                      highlight=False, soft_wrap=True)
    _finish(summary, run.output_dir, run.dry_run, target, schema)


def _single(fn, help_text: str) -> typer.Typer:  # type: ignore[no-untyped-def]
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=help_text)
    app.command()(fn)
    return app


bars_app = _single(bars, "Run the six bar builders.")
emas_app = _single(emas, "Run the six EMA refreshers.")
refresh_app = _single(refresh, "Daily refresh: bars, then EMAs.")
