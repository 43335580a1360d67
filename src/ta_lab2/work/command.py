"""Shared plumbing of one builder's or refresher's command (a runner's child, or run on its
own): parse its options, resolve the database, hold the family's advisory lock, run, write a
JSON summary the runner reads, and exit with the documented code.

The commands (``ta_lab2.bars.cli.main``, ``ta_lab2.emas.cli.main``; ``python -m ta_lab2.bars``,
``python -m ta_lab2.emas``) parse their options with :mod:`argparse`, not Typer: a runner
starts a dozen of them per run, and Typer (which validates every option through pydantic)
would add ~0.15 s of imports to the fork server that starts them and ~15 ms to each child
(docs/decisions.md). Their options are spelled, explained and checked as on the ``ta-lab2``
commands: both come from :mod:`ta_lab2.flags`.

What a runner has already done for its children is a :class:`ParentRun` parameter of the
command's function, never an environment variable or an option a user could pass."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import psycopg

from ta_lab2.db.connect import Target, connect, resolve_target
from ta_lab2.db.locks import writer_locks
from ta_lab2.db.schema import ensure_schema
from ta_lab2.errors import UsageError, report_failure
from ta_lab2.flags import EXECUTORS, HELP, check_schema_name, resolve_executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentRun:
    """What the runner that started a command has done for it (None: the command runs on its
    own and does everything itself)."""

    locks_held: tuple[str, ...] = ()  # advisory locks the runner holds for the whole run: not taken again
    schema_ready: str | None = None  # the schema the runner has just made sure of: not checked again
    cpus: int = 1  # CPUs the command's default worker count may use: the CPU count shared among siblings


IDS_PER_WORKER = 8


def default_workers(requested: int | None, n_ids: int, parent: ParentRun | None = None) -> int:
    """``--num-processes`` or, by default, the CPUs the command may use (all of them on its own;
    its share, ``parent.cpus``, under a runner) — but never more workers than there are batches
    of :data:`IDS_PER_WORKER` ids: starting a worker process costs about as much as building
    several ids, so small universes run in one process (docs/decisions.md)."""
    if requested and requested > 0:
        return requested
    cpus = parent.cpus if parent is not None else (os.cpu_count() or 1)
    return max(1, min(cpus, n_ids // IDS_PER_WORKER))


def run_locked(
    db_url: str | None,
    role: str,
    wait_lock: float,
    work: Callable[[psycopg.Connection, Target], Any],
    schema: str = "public",
    parent: ParentRun | None = None,
) -> Any:
    """Connect (autocommit), make sure the schema exists (unless the parent runner just did),
    hold ``role``'s locks (but those the parent holds), run ``work``."""
    target = resolve_target(db_url)
    if parent is None or parent.schema_ready != schema:
        with connect(target) as conn:
            ensure_schema(conn, schema)
    with connect(target, autocommit=True) as conn:
        with writer_locks(conn, role, wait_lock, skip=parent.locks_held if parent is not None else ()):
            return work(conn, target)


def write_summary(path: Path | None, summary: dict[str, Any]) -> None:
    """The runner passes ``--summary-json PATH``; a standalone run may omit it."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, default=str, indent=2))
    tmp.replace(path)


def _schema_name(text: str) -> str:
    try:
        return check_schema_name(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message.split(": ", 1)[1]) from None


def _at_least(minimum: float, kind: type) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is less than {minimum:g}")
        return value

    return convert


def child_parser(prog: str, description: str, what: str, names: Sequence[str],
                 full_flag: str) -> argparse.ArgumentParser:
    """The options every child command takes: ``WHAT`` (one of ``names``), ``--ids``,
    ``--db-url``, ``full_flag``, ``--include-non-canonical``, ``--num-processes``,
    ``--wait-lock``, ``--summary-json``, ``--schema``, ``--log-level``, ``--executor``,
    ``--scheduler``, ``--debug``. A command
    adds its own. Usage errors exit with code 2, as on every command."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(what, choices=list(names), metavar=what.upper(),
                        help=f"{', '.join(names[:-1])} or {names[-1]}.")
    parser.add_argument("--ids", default="all", help=HELP["--ids"] + " Default: all.")
    parser.add_argument("--db-url", metavar="URL", help=HELP["--db-url"])
    parser.add_argument(full_flag, action="store_true", help=HELP[full_flag])
    parser.add_argument("--include-non-canonical", action="store_true", help=HELP["--include-non-canonical"])
    parser.add_argument("--num-processes", metavar="N", type=_at_least(1, int), help=HELP["--num-processes"])
    parser.add_argument("--wait-lock", metavar="SECONDS", type=_at_least(0, float), default=0.0, help=HELP["--wait-lock"] + " Default: 0.")
    parser.add_argument("--summary-json", metavar="FILE", type=Path, help=HELP["--summary-json"])
    parser.add_argument("--schema", metavar="NAME", default="public", type=_schema_name,
                        help=HELP["--schema"] + " Default: public.")
    parser.add_argument("--log-level", metavar="LEVEL", default="WARNING", help=HELP["--log-level"] + " Default: WARNING.")
    parser.add_argument("--executor", metavar="NAME", choices=list(EXECUTORS), help=HELP["--executor"])
    parser.add_argument("--scheduler", metavar="ADDRESS", help=HELP["--scheduler"])
    parser.add_argument("--debug", action="store_true", help="Show tracebacks for errors.")
    return parser


@contextmanager
def unit_executor(args: argparse.Namespace, target: Target) -> Iterator[Any]:
    """What the command's work units run on: None (this machine: in-process or a process
    pool) for ``--executor local``; for ``dask``, a
    :class:`~ta_lab2.cluster.units.DaskUnits` over a client of ``--scheduler`` or of a
    cluster of this machine started for the command (its workers get ``target``'s URL in
    their environment)."""
    executor, scheduler = resolve_executor(args.executor, args.scheduler)
    if executor != "dask":
        yield None
        return
    from ta_lab2.cluster.client import dask_client
    from ta_lab2.cluster.units import DaskUnits

    with dask_client(scheduler, target.url) as client:
        yield DaskUnits(client)


def run_child(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace, ParentRun | None], None],
              argv: Sequence[str] | None = None, parent: ParentRun | None = None) -> NoReturn:
    """Parse ``argv`` (default: the process's), run ``command(args, parent)`` and exit: 0, or
    the code of the failure (see :func:`ta_lab2.errors.report_failure`)."""
    args = parser.parse_args(argv)
    try:
        command(args, parent)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure maps to an exit code
        sys.exit(report_failure(exc, debug=args.debug))
    sys.exit(0)
