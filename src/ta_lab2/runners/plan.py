"""A runner's plan: one child per bar builder or EMA refresher, the argv it gets, the children
it waits for, and what the fork server preloads for them.

Every bar builder waits for ``1d``; each EMA refresher waits for ``1d`` and the bar builder
whose table it reads — when those are part of the same run (:func:`within_run`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from ta_lab2.bars import cli as bars_command
from ta_lab2.bars.registry import BUILDERS
from ta_lab2.db.tables import BAR_TABLES
from ta_lab2.emas import cli as emas_command
from ta_lab2.emas.registry import REFRESHERS
from ta_lab2.errors import UsageError
from ta_lab2.launch.schedule import ChildSpec

BUILDER_ORDER: tuple[str, ...] = tuple(BUILDERS)  # "1d" first: the others read it
#: The order EMA refreshers are started in when several may run (none depends on another):
#: the largest table first and the rest so that two at a time finish close together — in
#: both bench universes the largest is ``multi_tf`` and ``v2`` is either the smallest or as
#: large as ``multi_tf`` (docs/performance.md); the tables' order is kept in every listing.
REFRESHER_ORDER: tuple[str, ...] = ("multi_tf", "cal_us", "cal_iso", "v2", "cal_anchor_us", "cal_anchor_iso")

#: The binary COPY encoder (db.binary imports it where rows are written; pyarrow ~85 ms).
ENCODER_IMPORTS: tuple[str, ...] = ("pyarrow", "pgpq")
#: What every child imports, so that the fork server imports it once for all of them: the
#: libraries, the plumbing, and what children import lazily at run time (polars' first numpy
#: conversion imports ``numpy.ma``, ~70 ms in every child otherwise). A module that fails to
#: import is skipped: the child then imports it itself and reports the error as usual.
CHILD_IMPORTS: tuple[str, ...] = (
    "numpy", "numpy.ma", "polars", "psycopg", "psycopg.sql", "zoneinfo", "logging.handlers",
    "multiprocessing.context", "concurrent.futures.process",
    "ta_lab2.logs", "ta_lab2.db.connect", "ta_lab2.db.bulk", "ta_lab2.work.command", "ta_lab2.work.progress",
    "ta_lab2.work.units",
    *ENCODER_IMPORTS,
    # what every child imports before its entry runs: the launch code it starts in, and the
    # ta-lab2 script's one import (multiprocessing re-runs the runner's main script in it)
    "ta_lab2.launch.process", "ta_lab2.cli",
)
#: Each family's command (and, through it, its builders or refreshers).
FAMILY_IMPORTS: dict[str, tuple[str, ...]] = {"bars": ("ta_lab2.bars.cli",), "emas": ("ta_lab2.emas.cli",)}
#: For a run that recomputes EMA series (``--full-refresh``): numba and the compiled kernel
#: (~0.6 s of CPU); an incremental run mostly resumes series without them (a child that does
#: need the kernel loads it itself).
KERNEL_IMPORTS: tuple[str, ...] = ("ta_lab2.emas.kernel_preload",)
#: For children writing to a terminal (a verbose run): Rich's log handler and progress bars.
TERMINAL_IMPORTS: tuple[str, ...] = ("rich.logging", "rich.progress")
#: For children that run their units on a Dask cluster (``--executor dask``): the client.
DASK_IMPORTS: tuple[str, ...] = ("distributed", "ta_lab2.cluster.client", "ta_lab2.cluster.units")


def worker_preload(roles: Sequence[str], *, kernel: bool) -> tuple[str, ...]:
    """What a Dask worker of a run of the ``roles`` families imports as it starts (Dask's
    ``--preload``, docs/scale.md), so that its first task does not: the COPY encoder, each
    family's command (through it, its units' code) and, where series are recomputed
    (``kernel``), the compiled EMA kernel."""
    return (*ENCODER_IMPORTS, *(m for r in roles for m in FAMILY_IMPORTS.get(r, ())),
            *(KERNEL_IMPORTS if kernel else ()))


def preload(roles: Sequence[str], *, kernel: bool, verbose: bool, dask: bool = False) -> tuple[str, ...]:
    """What the fork server of a run of the ``roles`` families imports before its first child
    (a child of a Dask run computes nothing itself: no kernel)."""
    return (*CHILD_IMPORTS, *(m for r in roles for m in FAMILY_IMPORTS.get(r, ())),
            *(KERNEL_IMPORTS if kernel and not dask else ()), *(TERMINAL_IMPORTS if verbose else ()),
            *(DASK_IMPORTS if dask else ()))


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
    log_level: str = "WARNING"
    wait_lock: float = 0.0
    schema: str = "public"
    executor: str = "local"  # or "dask": every child runs its work units as tasks of a Dask cluster
    scheduler: str | None = None  # the Dask scheduler's address; None: a cluster of this machine for the run
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
    if options.executor != "local":
        args += ["--executor", options.executor, *(["--scheduler", options.scheduler] if options.scheduler else [])]
    return args


def bar_specs(options: RunOptions, builders: Sequence[str]) -> list[ChildSpec]:
    """One child per builder; ``after`` lists every input builder (see :func:`within_run`)."""
    return [
        ChildSpec(name, bars_command.main, (name, *_common(options), "--tz", options.tz,
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
        ChildSpec(f"ema_{name}", emas_command.main, (name, *_common(options),
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
