"""The runners: ``run_all_bar_builders``, ``run_all_ema_refreshes`` and ``run_daily_refresh``.

A runner plans one child process per builder/refresher (dependency order), validates the ids,
holds its family's advisory locks for the whole run (children are told so), and runs the
children through :func:`ta_lab2.pipeline.runner.run_children`, several at once
(``RunOptions.max_parallel``, default the CPU count) as the dependencies allow: every bar
builder after ``1d``; each EMA refresher after ``1d`` and the bar builder whose table it reads
— when those are part of the same run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Sequence

from ta_lab2.bars.builders import BUILDERS
from ta_lab2.db.connect import Target, connect
from ta_lab2.db.locks import WRITER_LOCKS, writer_locks
from ta_lab2.db.schema import ensure_schema
from ta_lab2.db.tables import BAR_TABLES
from ta_lab2.emas.refreshers import REFRESHERS
from ta_lab2.errors import UsageError
from ta_lab2.pipeline.child import ENV_LOCKS_HELD, ENV_SCHEMA_READY, ENV_SIBLINGS
from ta_lab2.pipeline import forkserver
from ta_lab2.pipeline.runner import ChildSpec, RunSummary, default_parallel, python_module_argv, run_children
from ta_lab2.pipeline.work import resolve_ids

BUILDER_ORDER: tuple[str, ...] = tuple(BUILDERS)  # "1d" first: the others read it
#: The order EMA refreshers are started in when several may run (none depends on another):
#: the largest table first and the rest so that two at a time finish close together — in
#: both bench universes the largest is ``multi_tf`` and ``v2`` is either the smallest or as
#: large as ``multi_tf`` (docs/performance.md); the tables' order is kept in every listing.
REFRESHER_ORDER: tuple[str, ...] = ("multi_tf", "cal_us", "cal_iso", "v2", "cal_anchor_us", "cal_anchor_iso")


def bar_inputs(builder: str) -> tuple[str, ...]:
    """The bar builders whose tables ``builder`` reads: ``1d`` for every other builder."""
    return () if builder == "1d" else ("1d",)


def ema_inputs(refresher: str) -> tuple[str, ...]:
    """The bar builders whose tables EMA ``refresher`` reads: ``1d`` (daily closes) and the
    builder of its ``bar_table`` (canonical closes of the other timeframes), if any."""
    table = REFRESHERS[refresher].bar_table
    return ("1d", *(b for b, t in BAR_TABLES.items() if t == table and b != "1d"))


@dataclass(frozen=True)
class RunOptions:
    """Options shared by the runners (each uses the ones that apply)."""

    ids: list[int] | None  # None = all
    full: bool = False
    include_non_canonical: bool = False
    num_processes: int | None = None
    tz: str = "UTC"
    periods: str | None = None
    continue_on_error: bool = False
    verbose: bool = False
    dry_run: bool = False
    timeout_s: float = 6 * 3600
    max_parallel: int | None = None  # children at once; None = the CPU count
    log_level: str = "INFO"
    wait_lock: float = 0.0
    schema: str = "public"
    extra: dict[str, object] = field(default_factory=dict)


def select(names: Sequence[str], only: str | None, skip: str | None, flag: str) -> tuple[str, ...]:
    """``--builders``/``--only`` and ``--skip`` comma lists -> names in dependency order."""

    def parse(value: str | None, option: str) -> list[str]:
        got = [n.strip() for n in (value or "").split(",") if n.strip()]
        bad = [n for n in got if n not in names]
        if bad:
            raise UsageError(f"{option}: unknown name(s) {', '.join(bad)}; choose from {', '.join(names)}")
        return got

    chosen = parse(only, flag) or list(names)
    skipped = set(parse(skip, "--skip"))
    out = tuple(n for n in names if n in chosen and n not in skipped)
    if not out:
        raise UsageError(f"{flag}/--skip leave nothing to run")
    return out


def ids_argument(ids: Sequence[int] | None) -> str:
    return "all" if ids is None else ",".join(map(str, ids))


def _common(options: RunOptions) -> list[str]:
    args = ["--ids", ids_argument(options.ids), "--log-level", options.log_level]
    if options.schema != "public":
        args += ["--schema", options.schema]
    if options.include_non_canonical:
        args.append("--include-non-canonical")
    if options.num_processes:
        args += ["--num-processes", str(options.num_processes)]
    return args


def bar_specs(options: RunOptions, builders: Sequence[str]) -> list[ChildSpec]:
    """One child per builder; ``after`` lists every input builder (see :func:`within_run`)."""
    return [
        ChildSpec(name, python_module_argv("ta_lab2.bars", name, *_common(options), "--tz", options.tz,
                                           *(["--full-rebuild"] if options.full else [])),
                  after=bar_inputs(name))
        for name in builders
    ]


def ema_specs(options: RunOptions, refreshers: Sequence[str]) -> list[ChildSpec]:
    """One child per refresher; ``after`` lists every input builder (see :func:`within_run`).
    An incremental run starts ``v2`` last: its one continuous series per period is the
    shortest refresh of a new day, so the two children running at the end finish together."""
    if not options.full and "v2" in refreshers:
        refreshers = [*(r for r in refreshers if r != "v2"), "v2"]
    return [
        ChildSpec(f"ema_{name}", python_module_argv("ta_lab2.emas", name, *_common(options),
                                                    *(["--periods", options.periods] if options.periods else []),
                                                    *(["--full-refresh"] if options.full else [])),
                  after=ema_inputs(name))
        for name in refreshers
    ]


def within_run(specs: Sequence[ChildSpec]) -> list[ChildSpec]:
    """Keep only the dependencies that are children of this run: a table no child of the run
    rebuilds is read as it is (``ta-lab2 emas`` alone does not wait for any bar builder)."""
    names = {s.name for s in specs}
    return [replace(s, after=tuple(d for d in s.after if d in names)) for s in specs]


def held_locks(*roles: str) -> str:
    return ",".join(dict.fromkeys(name for role in roles for name, _ in WRITER_LOCKS[role]))


def run_family(runner: str, target: Target, options: RunOptions, specs: list[ChildSpec], roles: tuple[str, ...]) -> RunSummary:
    """Validate ids, hold the roles' locks for the whole run, run ``specs`` (in dependency
    order, up to ``options.max_parallel`` at once)."""
    specs = within_run(specs)
    with connect(target, autocommit=True) as conn:
        if not options.dry_run:
            ensure_schema(conn, options.schema)
        if options.ids is not None:
            resolve_ids(conn, options.ids, options.schema)
        env = target.child_env()
        inherited = tuple(n for n in os.environ.get(ENV_LOCKS_HELD, "").split(",") if n)
        env[ENV_LOCKS_HELD] = ",".join(dict.fromkeys([*inherited, *held_locks(*roles).split(",")]))
        env[ENV_SIBLINGS] = str(options.max_parallel or default_parallel())
        if not options.dry_run:
            env[ENV_SCHEMA_READY] = options.schema
        if options.dry_run:
            return run_children(runner, specs, env=env, dry_run=True)
        # a full refresh recomputes every EMA series with the kernel; an incremental one mostly
        # resumes them without it (a child that needs it then loads it itself)
        kernel = options.full and any(s.argv[2:3] == ("ta_lab2.emas",) for s in specs)
        with writer_locks(conn, roles, options.wait_lock, skip=inherited):
            return run_children(runner, specs, env=env, timeout_s=options.timeout_s,
                                continue_on_error=options.continue_on_error, verbose=options.verbose,
                                max_parallel=options.max_parallel or default_parallel(),
                                preload=(forkserver.KERNEL,) if kernel else ())


def run_bar_builders(target: Target, options: RunOptions, builders: Sequence[str] = BUILDER_ORDER) -> RunSummary:
    return run_family("run_all_bar_builders", target, options, bar_specs(options, builders), ("bars",))


def run_ema_refreshes(target: Target, options: RunOptions, refreshers: Sequence[str] = REFRESHER_ORDER) -> RunSummary:
    return run_family("run_all_ema_refreshes", target, options, ema_specs(options, refreshers), ("emas",))


def stale_ids(target: Target, ids: Sequence[int] | None, hours: float) -> tuple[list[int], list[int]]:
    """(fresh, stale): an id is fresh when its last source day is within ``hours`` of now."""
    from psycopg import sql

    with connect(target, autocommit=True) as conn:
        id_list = resolve_ids(conn, ids)
        rows = conn.execute(
            sql.SQL("SELECT id, max(\"timestamp\") >= now() - make_interval(secs => %s) FROM {} WHERE id = ANY(%s) "
                    "GROUP BY id").format(sql.Identifier("public", "cmc_price_histories7")),
            (hours * 3600.0, id_list),
        ).fetchall()
    fresh_set = {i for i, fresh in rows if fresh}
    return [i for i in id_list if i in fresh_set], [i for i in id_list if i not in fresh_set]


def run_daily_refresh(
    target: Target, options: RunOptions, *, bars: bool, emas: bool, skip_stale_check: bool, staleness_hours: float
) -> RunSummary:
    """Bars for the ids, then EMAs for the ids whose source data is fresh; stale ids are listed."""
    specs: list[ChildSpec] = bar_specs(options, BUILDER_ORDER) if bars else []
    stale: list[int] = []
    if emas:
        if skip_stale_check:
            ema_ids = options.ids
        else:
            fresh, stale = stale_ids(target, options.ids, staleness_hours)
            ema_ids = fresh
        if ema_ids is None or ema_ids:
            specs += ema_specs(replace(options, ids=ema_ids), REFRESHER_ORDER)
    roles = tuple(r for r, on in (("bars", bars), ("emas", emas)) if on)
    if not specs:
        summary = run_children("run_daily_refresh", [], env=target.child_env(), dry_run=options.dry_run)
    else:
        summary = run_family("run_daily_refresh", target, options, specs, roles)
    return replace(summary, extra={
        "stale_ids": stale,
        "staleness_hours": staleness_hours,
        "stale_check": not skip_stale_check,
    })
