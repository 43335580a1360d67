"""One bar builder as a command: ``python -m ta_lab2.bars BUILDER --ids …``, or
:func:`main` with that argv (a runner's child; also usable on its own; options parsed as
described in :mod:`ta_lab2.work.command`)."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from ta_lab2.bars.build import build
from ta_lab2.bars.registry import BUILDERS
from ta_lab2.flags import HELP, check_tz, parse_ids, parse_log_level
from ta_lab2.logs import setup_logging
from ta_lab2.work.command import (ParentRun, child_parser, default_workers, run_child, run_locked, unit_executor,
                                  write_summary)
from ta_lab2.work.progress import progress
from ta_lab2.work.units import resolve_ids

log = logging.getLogger("ta_lab2.bars")


def parser() -> argparse.ArgumentParser:
    p = child_parser("python -m ta_lab2.bars", "Build one bar table (incremental by default).",
                     "builder", list(BUILDERS), "--full-rebuild")
    p.add_argument("--tz", metavar="ZONE", default="UTC", help=HELP["--tz"] + " Default: UTC.")
    return p


def build_command(args: argparse.Namespace, parent: ParentRun | None = None) -> None:
    """Build ``args.builder``'s table for ``args.ids`` and write the summary JSON."""
    setup_logging(parse_log_level(args.log_level))
    check_tz(args.tz)
    id_list = parse_ids(args.ids)

    def work(conn, target):  # type: ignore[no-untyped-def]
        n = len(resolve_ids(conn, id_list, args.schema))
        with unit_executor(args, target) as executor, progress(f"bars {args.builder}", n) as advance:
            return build(conn, args.builder, id_list, full_rebuild=args.full_rebuild, tz=args.tz,
                         include_non_canonical=args.include_non_canonical, progress=advance, schema=args.schema,
                         workers=default_workers(args.num_processes, n, parent), url=target.url,
                         executor=executor)

    result = run_locked(args.db_url, "bars", args.wait_lock, work, args.schema, parent)
    log.info("%s: %d ids, %d rows inserted, %d deleted, %d rejects in %.2fs", result.table, len(result.ids),
             result.rows_inserted, result.rows_deleted, result.rejects, result.duration_s)
    write_summary(args.summary_json, result.as_dict())


def main(argv: Sequence[str] | None = None, parent: ParentRun | None = None) -> None:
    """Run the command on ``argv`` (default: the process's) and exit with its code."""
    run_child(parser(), build_command, argv, parent)
