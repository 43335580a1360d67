"""One EMA refresher as a command: ``python -m ta_lab2.emas REFRESHER --ids …`` (the runner's
child, also usable on its own)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from ta_lab2.cli import options as opt

log = logging.getLogger("ta_lab2.emas")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def refresh_command(
    refresher: Annotated[str, typer.Argument(help="multi_tf, v2, cal_us, cal_iso, cal_anchor_us or cal_anchor_iso.")],
    ids: opt.Ids = "all",
    db_url: opt.DbUrl = None,
    periods: opt.Periods = None,
    full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Delete the selected ids' rows and state, then recompute.")] = False,
    include_non_canonical: Annotated[bool, typer.Option("--include-non-canonical", help="Also the non-canonical timeframes.")] = False,
    num_processes: opt.NumProcesses = None,
    wait_lock: opt.WaitLock = 0.0,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Write the JSON summary here.", show_default=False)] = None,
    schema: opt.Schema = "public",
    log_level: opt.LogLevel = "INFO",
) -> None:
    """Refresh one EMA table (incremental by default)."""
    from ta_lab2.emas.refreshers import REFRESHERS, parse_periods, refresh
    from ta_lab2.logs import setup_logging
    from ta_lab2.pipeline.child import default_workers, run_locked, write_summary
    from ta_lab2.pipeline.progress import progress
    from ta_lab2.pipeline.work import resolve_ids

    setup_logging(opt.parse_log_level(log_level))
    if refresher not in REFRESHERS:
        raise opt.UsageError(f"refresher: {refresher!r} is not one of {', '.join(REFRESHERS)}")
    id_list = opt.parse_ids(ids)
    plist = parse_periods(periods)

    def work(conn, target):  # type: ignore[no-untyped-def]
        n = len(resolve_ids(conn, id_list, schema))
        with progress(f"emas {refresher}", n) as advance:
            return refresh(conn, refresher, id_list, full_refresh=full_refresh, periods=plist,
                           include_non_canonical=include_non_canonical, progress=advance, schema=schema,
                           workers=default_workers(num_processes, n), url=target.url)

    result = run_locked(db_url, "emas", wait_lock, work, schema)
    log.info("%s: %d ids, %d rows inserted, %d deleted in %.2fs", result.table, len(result.ids),
             result.rows_inserted, result.rows_deleted, result.duration_s)
    write_summary(summary_json, result.as_dict())


def main() -> None:
    from ta_lab2.cli.app import run_app

    run_app(app)
