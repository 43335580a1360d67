"""A stand-in runner child for tests/test_forkserver.py: ``python -m zygote_child ACTION [ARG…]
--summary-json PATH`` (the runner appends the last two). Importable from the tests folder
only, so the tests pass ``fork_modules=("zygote_child",)`` to route it through the zygote.

Every action first writes a JSON summary describing the process it runs in (pid, parent,
process group, session, stdin, argv, environment), so tests can check what the child saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _summary(path: str, **extra: object) -> None:
    facts = {
        "rows_inserted": 7,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "stdin": os.readlink("/proc/self/fd/0"),
        "argv": sys.argv,
        "env": dict(os.environ),
        "main_spec": getattr(sys.modules["__main__"].__spec__, "name", None),
        **extra,
    }
    with open(path, "w") as fh:
        json.dump(facts, fh)


def main() -> None:
    args = sys.argv[1:]
    assert args[-2] == "--summary-json", args
    summary, args = args[-1], args[:-2]
    action, rest = args[0], args[1:]
    _summary(summary)
    if action == "ok":
        print("zygote child ran")
    elif action == "fail":
        print("about to break")
        print("child broke", file=sys.stderr)
        sys.exit(3)
    elif action == "raise":
        raise RuntimeError("child raised on purpose")
    elif action == "sleep":  # sleep SECONDS STAMP_FILE: record when it ran
        started = time.time()
        time.sleep(float(rest[0]))
        with open(rest[1], "w") as fh:
            json.dump([started, time.time()], fh)
    elif action == "grandchild":  # grandchild PID_FILE: a grandchild, then hang
        proc = subprocess.Popen(["sleep", "300"])
        with open(rest[0], "w") as fh:
            fh.write(str(proc.pid))
        time.sleep(300)
    elif action == "pidfile":  # pidfile PID_FILE: say who I am, then hang
        with open(rest[0], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(300)
    elif action == "kill-parent":  # the zygote dies under its running child
        os.kill(os.getppid(), 9)
        time.sleep(300)
    elif action == "polars":  # multi-threaded polars work in a forked child must not hang
        import numpy as np
        import polars as pl

        n = 2_000_000
        rng = np.random.default_rng(1)
        frame = pl.DataFrame({"k": rng.integers(0, 500, n), "v": rng.random(n)})
        out = frame.group_by("k").agg(pl.col("v").sum(), pl.len()).sort("k")
        assert out.height == 500 and int(out["len"].sum()) == n
        _summary(summary, polars_threads=pl.thread_pool_size(), groups=out.height)
    else:
        sys.exit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
