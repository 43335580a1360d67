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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} ids/s" if False else ""),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
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
