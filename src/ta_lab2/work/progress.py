"""Progress for long per-id loops: a Rich bar with rate and ETA on a terminal, plain periodic
log lines otherwise (CI logs, captured child output)."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

log = logging.getLogger("ta_lab2.progress")


@contextmanager
def progress(description: str, total: int, *, every_s: float = 10.0) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; renders a bar on a TTY, else logs ``description: k/total`` lines."""
    if sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        rate = TextColumn("{task.fields[rate]}")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), rate, TimeElapsedColumn(),
            TimeRemainingColumn(), transient=False,
        ) as bar:
            task = bar.add_task(description, total=total, rate="")

            def advance_bar(n: int = 1) -> None:
                bar.advance(task, n)
                speed = next(t.speed for t in bar.tasks if t.id == task)
                bar.update(task, rate=f"{speed:.1f} ids/s" if speed else "")

            yield advance_bar
        return
    done = 0
    started = last = time.monotonic()

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= every_s or done == total:
            rate = done / max(now - started, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d ids (%.1f ids/s, ETA %.0fs)", description, done, total, rate, eta)
            last = now

    yield advance
