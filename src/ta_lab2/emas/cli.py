"""One EMA refresher as a command: ``python -m ta_lab2.emas REFRESHER --ids …``, or
:func:`main` with that argv (a runner's child; also usable on its own; options parsed as
described in :mod:`ta_lab2.work.command`)."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from ta_lab2.emas.refresh import refresh
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.flags import HELP, parse_ids, parse_log_level, parse_periods
from ta_lab2.logs import setup_logging
from ta_lab2.work.command import (ParentRun, child_parser, default_workers, run_child, run_locked, unit_executor,
                                  write_summary)
from ta_lab2.work.progress import progress
from ta_lab2.work.units import resolve_ids

log = logging.getLogger("ta_lab2.emas")


def parser() -> argparse.ArgumentParser:
    p = child_parser("python -m ta_lab2.emas", "Refresh one EMA table (incremental by default).",
                     "refresher", list(REFRESHERS), "--full-refresh")
    p.add_argument("--periods", metavar="LIST", help=HELP["--periods"])
    return p


def refresh_command(args: argparse.Namespace, parent: ParentRun | None = None) -> None:
    """Refresh ``args.refresher``'s table for ``args.ids`` and write the summary JSON."""
    setup_logging(parse_log_level(args.log_level))
    id_list = parse_ids(args.ids)
    plist = parse_periods(args.periods)

    def work(conn, target):  # type: ignore[no-untyped-def]
        n = len(resolve_ids(conn, id_list, args.schema))
        with unit_executor(args, target) as executor, progress(f"emas {args.refresher}", n) as advance:
            return refresh(conn, args.refresher, id_list, full_refresh=args.full_refresh, periods=plist,
                           include_non_canonical=args.include_non_canonical, progress=advance, schema=args.schema,
                           workers=default_workers(args.num_processes, n, parent), url=target.url,
                           executor=executor)

    result = run_locked(args.db_url, "emas", args.wait_lock, work, args.schema, parent)
    log.info("%s: %d ids, %d rows inserted, %d deleted in %.2fs", result.table, len(result.ids),
             result.rows_inserted, result.rows_deleted, result.duration_s)
    write_summary(args.summary_json, result.as_dict())


def main(argv: Sequence[str] | None = None, parent: ParentRun | None = None) -> None:
    """Run the command on ``argv`` (default: the process's) and exit with its code."""
    run_child(parser(), refresh_command, argv, parent)
