"""``ta-lab2 demo``: from nothing to a finished baseline report on the embedded database.

Steps (each timed): start the embedded server, create a private ``ta_lab2_demo`` database
(never the user's), load a synthetic universe, build every bar table, refresh every EMA table,
run a baseline capture against it. Returns the capture result; the CLI prints the report path.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psycopg

from ta_lab2.db.connect import Target, fresh_embedded_database
from ta_lab2.errors import UsageError

DEMO_DATABASE = "ta_lab2_demo"


@dataclass
class DemoTimings:
    steps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(s for _, s in self.steps)


@dataclass(frozen=True)
class DemoOptions:
    assets: int = 5
    days: int = 3 * 365
    seed: int = 1
    output_dir: Path = Path(".logs/demo")


def demo_target(db_url: str | None) -> Target:
    """The embedded server's private demo database (recreated), or the given empty database."""
    from ta_lab2.db.connect import resolve_target

    if db_url is not None:
        target = resolve_target(db_url)
        with psycopg.connect(target.url) as conn:
            exists = conn.execute("SELECT to_regclass('public.cmc_price_histories7')").fetchone()[0]
            if exists and conn.execute("SELECT EXISTS (SELECT 1 FROM public.cmc_price_histories7)").fetchone()[0]:
                raise UsageError("demo: that database already holds price data; the demo only runs on an empty one",
                                 hint="run `ta-lab2 demo` without --db-url to use a private demo database")
        return target
    return fresh_embedded_database(DEMO_DATABASE)


def run_demo(db_url: str | None, options: DemoOptions, step: Callable[[str], "contextmanager[None]"] | None = None):  # type: ignore[no-untyped-def]
    """Run every step; ``step(name)`` is a context manager the CLI uses to show progress."""
    from ta_lab2.baseline.capture import CaptureOptions, run_capture
    from ta_lab2.db.connect import connect
    from ta_lab2.load.service import load_synthetic
    from ta_lab2.load.synthetic import SyntheticConfig
    from ta_lab2.runners.plan import RunOptions
    from ta_lab2.runners.run import run_bar_builders, run_ema_refreshes

    timings = DemoTimings()

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        if step is None:
            yield
        else:
            with step(name):
                yield
        timings.steps.append((name, time.perf_counter() - started))

    with timed("start the embedded database"):
        target = demo_target(db_url)
    with timed(f"load {options.assets} synthetic assets × {options.days} days"):
        with connect(target, autocommit=True) as conn:
            load_synthetic(conn, SyntheticConfig(options.assets, options.days, options.seed))
    run = RunOptions(ids=None, full=True)
    with timed("build the 6 bar tables"):
        bars = run_bar_builders(target, run)
    with timed("refresh the 6 EMA tables"):
        emas = run_ema_refreshes(target, run)
    failed = [c.name for c in (*bars.children, *emas.children) if not c.ok]
    if failed:
        raise UsageError(f"demo: {', '.join(failed)} failed; run `ta-lab2 bars --verbose` on the demo database to see why")
    with timed("baseline capture (snapshot → truncate → rebuild → compare)"):
        result = run_capture(target, CaptureOptions(ids=None, output_dir=options.output_dir))
    return target, result, timings, {"bars": bars, "emas": emas}
