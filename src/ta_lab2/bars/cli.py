"""One bar builder as a command: ``python -m ta_lab2.bars BUILDER --ids …`` (the runner's
child, also usable on its own; options parsed as described in :mod:`ta_lab2.pipeline.child`)."""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from ta_lab2.bars.builders import BUILDERS, build, resolve_ids
from ta_lab2.cli.flags import HELP, check_tz, parse_ids, parse_log_level
from ta_lab2.logs import setup_logging
from ta_lab2.pipeline.child import child_parser, default_workers, run_child, run_locked, write_summary
from ta_lab2.pipeline.progress import progress

log = logging.getLogger("ta_lab2.bars")


def parser() -> argparse.ArgumentParser:
    p = child_parser("python -m ta_lab2.bars", "Build one bar table (incremental by default).",
                     "builder", list(BUILDERS), "--full-rebuild")
    p.add_argument("--tz", metavar="ZONE", default="UTC", help=HELP["--tz"] + " Default: UTC.")
    return p


def build_command(args: argparse.Namespace) -> None:
    """Build ``args.builder``'s table for ``args.ids`` and write the summary JSON."""
    setup_logging(parse_log_level(args.log_level))
    check_tz(args.tz)
    id_list = parse_ids(args.ids)

    def work(conn, target):  # type: ignore[no-untyped-def]
        n = len(resolve_ids(conn, id_list, args.schema))
        with progress(f"bars {args.builder}", n) as advance:
            return build(conn, args.builder, id_list, full_rebuild=args.full_rebuild, tz=args.tz,
                         include_non_canonical=args.include_non_canonical, progress=advance, schema=args.schema,
                         workers=default_workers(args.num_processes, n), url=target.url)

    result = run_locked(args.db_url, "bars", args.wait_lock, work, args.schema)
    log.info("%s: %d ids, %d rows inserted, %d deleted, %d rejects in %.2fs", result.table, len(result.ids),
             result.rows_inserted, result.rows_deleted, result.rejects, result.duration_s)
    write_summary(args.summary_json, result.as_dict())


def main(argv: Sequence[str] | None = None) -> None:
    run_child(parser(), build_command, argv)
