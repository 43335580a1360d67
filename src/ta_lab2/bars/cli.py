"""One bar builder as a command: ``python -m ta_lab2.bars BUILDER --ids …`` (the runner's
child, also usable on its own)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from ta_lab2.cli import options as opt

log = logging.getLogger("ta_lab2.bars")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def build_command(
    builder: Annotated[str, typer.Argument(help="1d, multi_tf, cal_iso, cal_us, cal_anchor_iso or cal_anchor_us.")],
    ids: opt.Ids = "all",
    db_url: opt.DbUrl = None,
    full_rebuild: Annotated[bool, typer.Option("--full-rebuild", help="Delete the selected ids' rows and state, then rebuild.")] = False,
    include_non_canonical: Annotated[bool, typer.Option("--include-non-canonical", help="Also build non-canonical timeframes.")] = False,
    tz: opt.Tz = "UTC",
    num_processes: opt.NumProcesses = None,
    wait_lock: opt.WaitLock = 0.0,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Write the JSON summary here.", show_default=False)] = None,
    schema: opt.Schema = "public",
    log_level: opt.LogLevel = "INFO",
) -> None:
    """Build one bar table (incremental by default)."""
    from ta_lab2.bars.builders import BUILDERS, build, resolve_ids
    from ta_lab2.logs import setup_logging
    from ta_lab2.pipeline.child import default_workers, run_locked, write_summary
    from ta_lab2.pipeline.progress import progress

    setup_logging(opt.parse_log_level(log_level))
    if builder not in BUILDERS:
        raise opt.UsageError(f"builder: {builder!r} is not one of {', '.join(BUILDERS)}")
    opt.check_tz(tz)
    id_list = opt.parse_ids(ids)

    def work(conn, target):  # type: ignore[no-untyped-def]
        n = len(resolve_ids(conn, id_list, schema))
        with progress(f"bars {builder}", n) as advance:
            return build(conn, builder, id_list, full_rebuild=full_rebuild, tz=tz,
                         include_non_canonical=include_non_canonical, progress=advance, schema=schema,
                         workers=default_workers(num_processes, n), url=target.url)

    result = run_locked(db_url, "bars", wait_lock, work, schema)
    summary = result.as_dict()
    log.info("%s: %d ids, %d rows inserted, %d deleted, %d rejects in %.2fs", result.table, len(result.ids),
             result.rows_inserted, result.rows_deleted, result.rejects, result.duration_s)
    write_summary(summary_json, summary)


def main() -> None:
    from ta_lab2.cli.app import run_app

    run_app(app)
