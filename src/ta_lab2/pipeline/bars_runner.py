"""``run_all_bar_builders``: the six bar builders in dependency order, one child each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ta_lab2.bars.builders import BUILDERS
from ta_lab2.pipeline.work import resolve_ids
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import WRITER_LOCKS, writer_locks
from ta_lab2.errors import UsageError
from ta_lab2.pipeline.child import ENV_LOCKS_HELD
from ta_lab2.pipeline.runner import ChildSpec, RunSummary, python_module_argv, run_children

BUILDER_ORDER: tuple[str, ...] = tuple(BUILDERS)  # "1d" first: the others read it


@dataclass(frozen=True)
class BarRunOptions:
    ids: list[int] | None  # None = all
    builders: tuple[str, ...] = BUILDER_ORDER
    full_rebuild: bool = False
    include_non_canonical: bool = False
    num_processes: int | None = None
    tz: str = "UTC"
    continue_on_error: bool = False
    verbose: bool = False
    dry_run: bool = False
    timeout_s: float = 6 * 3600
    log_level: str = "INFO"
    wait_lock: float = 0.0


def select_builders(only: str | None, skip: str | None) -> tuple[str, ...]:
    """``--builders`` / ``--skip`` comma lists -> builders in dependency order."""
    def parse(value: str | None, flag: str) -> list[str]:
        names = [n.strip() for n in (value or "").split(",") if n.strip()]
        bad = [n for n in names if n not in BUILDERS]
        if bad:
            raise UsageError(f"{flag}: unknown builder(s) {', '.join(bad)}; choose from {', '.join(BUILDERS)}")
        return names

    chosen = parse(only, "--builders") or list(BUILDER_ORDER)
    skipped = set(parse(skip, "--skip"))
    out = tuple(b for b in BUILDER_ORDER if b in chosen and b not in skipped)
    if not out:
        raise UsageError("--builders/--skip leave no builder to run")
    return out


def ids_argument(ids: Sequence[int] | None) -> str:
    return "all" if ids is None else ",".join(map(str, ids))


def plan(options: BarRunOptions) -> list[ChildSpec]:
    specs = []
    for name in options.builders:
        args = [name, "--ids", ids_argument(options.ids), "--tz", options.tz, "--log-level", options.log_level]
        if options.full_rebuild:
            args.append("--full-rebuild")
        if options.include_non_canonical:
            args.append("--include-non-canonical")
        if options.num_processes:
            args += ["--num-processes", str(options.num_processes)]
        specs.append(ChildSpec(name, python_module_argv("ta_lab2.bars", *args)))
    return specs


def run_bar_builders(target: Target, options: BarRunOptions, output_dir: Path) -> RunSummary:
    """Validate ids, hold the bars lock for the whole run, run the children in order."""
    with connect(target, autocommit=True) as conn:
        from ta_lab2.db.schema import ensure_schema

        if not options.dry_run:
            ensure_schema(conn)
        if options.ids is not None:
            resolve_ids(conn, options.ids)
        specs = plan(options)
        env = target.child_env()
        env[ENV_LOCKS_HELD] = ",".join(name for name, _ in WRITER_LOCKS["bars"])
        if options.dry_run:
            return run_children("run_all_bar_builders", specs, env=env, dry_run=True)
        with writer_locks(conn, "bars", options.wait_lock):
            return run_children(
                "run_all_bar_builders", specs, env=env, timeout_s=options.timeout_s,
                continue_on_error=options.continue_on_error, verbose=options.verbose, work_dir=None,
            )
