"""Stand-in children for tests/test_launch.py: ``main(argv)`` with ``argv = [ACTION, ARG…,
"--summary-json", PATH]`` (the runner appends the last two), the way a builder's command is
called. Importable from the tests folder (on the runner's ``sys.path``, which multiprocessing
hands to every child).

Every action but ``quick`` first writes a JSON summary describing the process it runs in (pid,
parent, process group, session, stdin, argv, environment, heavy modules loaded), so tests can
check what the child saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HEAVY = ("typer", "click", "pydantic", "rich", "numba")


def _summary(path: str, argv: list[str], **extra: object) -> None:
    facts = {
        "rows_inserted": 7,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "stdin": os.readlink("/proc/self/fd/0"),
        "argv": argv,
        "env": dict(os.environ),
        "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
        **extra,
    }
    with open(path, "w") as fh:
        json.dump(facts, fh)


def _until(condition, limit_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` (a rendezvous with another process, not a timed wait); exit 4 if it
    never holds."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(4)
        time.sleep(0.01)


def _ended(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def main(argv: list[str]) -> None:
    assert argv[-2] == "--summary-json", argv
    summary, args = argv[-1], argv[:-2]
    action, rest = args[0], args[1:]
    if action == "quick":  # end at once: nothing written, nothing printed
        sys.exit(0)
    _summary(summary, argv)
    if action == "ok":
        print("launched child ran")
    elif action == "fail":  # fail [PID_FILE]
        if rest:
            with open(rest[0], "w") as fh:
                fh.write(str(os.getpid()))
        print("about to break")
        print("child broke", file=sys.stderr)
        sys.exit(3)
    elif action == "raise":
        raise RuntimeError("child raised on purpose")
    elif action == "sleep":  # sleep SECONDS STAMP_FILE: record when it ran
        started = time.monotonic()  # one clock for every process on Linux: comparable across children
        time.sleep(float(rest[0]))
        with open(rest[1], "w") as fh:
            json.dump([started, time.monotonic()], fh)
    elif action == "meet":  # meet MINE PEER STAMP: say I run, wait until the peer runs too
        arrived = time.monotonic()
        with open(rest[0], "w") as fh:
            fh.write(str(os.getpid()))
        _until(lambda: os.path.exists(rest[1]))
        with open(rest[2], "w") as fh:
            json.dump([arrived, time.monotonic()], fh)
    elif action == "outlive":  # outlive PID_FILE STAMP: end only after the process in PID_FILE has
        _until(lambda: os.path.exists(rest[0]) and os.path.getsize(rest[0]) > 0)
        with open(rest[0]) as fh:
            other = int(fh.read())
        _until(lambda: _ended(other))
        with open(rest[1], "w") as fh:
            fh.write("outlived")
    elif action == "grandchild":  # grandchild PID_FILE: a grandchild, then hang
        proc = subprocess.Popen(["sleep", "300"])
        with open(rest[0], "w") as fh:
            fh.write(str(proc.pid))
        time.sleep(300)
    elif action == "pidfile":  # pidfile PID_FILE: say who I am, then hang
        with open(rest[0], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
    elif action == "kill-parent":  # the fork server dies under its running child
        os.kill(os.getppid(), 9)
        time.sleep(300)
    elif action == "polars":  # multi-threaded polars work in a forked child must not hang
        import numpy as np
        import polars as pl

        n = 500_000
        rng = np.random.default_rng(1)
        frame = pl.DataFrame({"k": rng.integers(0, 500, n), "v": rng.random(n)})
        out = frame.group_by("k").agg(pl.col("v").sum(), pl.len()).sort("k")
        assert out.height == 500 and int(out["len"].sum()) == n
        _summary(summary, argv, polars_threads=pl.thread_pool_size(), groups=out.height)
    else:
        sys.exit(f"unknown action {action!r}")
