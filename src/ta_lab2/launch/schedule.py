"""Running a plan of children: in dependency order, several at once, each with a timeout
(spec 04 "Behaviour every runner shares"). Knows no builder: a child is a name, an entry
function, its argv and the names of the children it waits for.

Each child is its own process (:mod:`ta_lab2.launch.process`: a crash cannot take the runner
down; own process group, so a timeout kills the whole group; the database URL only in its
environment), reports a JSON summary through ``--summary-json PATH`` (appended to its argv),
and writes its output to a file shown only if it fails — or, with ``verbose``, to the
runner's terminal, one child at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ta_lab2.launch.process import Child, Entry, Launcher, kill_group
from ta_lab2.launch.results import ChildResult, RunSummary
from ta_lab2.redaction import redact

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class ChildSpec:
    """One child: a name for the summary, the function it runs and the argv it gets (no
    secrets: the URL is in the environment), and the names of the children of the same run
    that must succeed before it starts (``after``)."""

    name: str
    entry: Entry
    args: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def display(self) -> str:
        """``module.function arg …`` with any password redacted (the dry run's plan line)."""
        function = getattr(self.entry, "func", self.entry)  # a functools.partial shows its function
        return redact(" ".join([f"{function.__module__}.{function.__qualname__}", *self.args]))


def default_parallel() -> int:
    """How many children run at once by default: the CPU count (at least 1)."""
    return max(1, os.cpu_count() or 1)


def run_children(
    runner: str,
    specs: Sequence[ChildSpec],
    *,
    env: dict[str, str],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    continue_on_error: bool = False,
    verbose: bool = False,
    dry_run: bool = False,
    work_dir: Path | None = None,
    max_parallel: int = 1,
    launcher: Launcher | None = None,
) -> RunSummary:
    """Run ``specs``, up to ``max_parallel`` at once, and return their results in plan order.

    A child starts, in plan order, once every child named in its ``after`` has succeeded
    (those must come earlier in ``specs``; a name outside the run is a ``ValueError``). When a
    child fails, times out or cannot be started, its dependents are ``skipped`` (the message
    names the dependency); without ``continue_on_error`` no further child starts either — the
    running ones finish, the rest are ``skipped`` — while with it every child that does not
    depend on the failure still runs. Each child has its own ``timeout_s``; on timeout its
    whole process group is killed. ``KeyboardInterrupt`` kills every running child's group and
    propagates.

    ``verbose`` children write to the runner's terminal, so they run one at a time: two
    children (and their progress bars) writing to one terminal at once would be unreadable.

    Children start through ``launcher`` (entered by the caller, who chose its preload), or a
    launcher of this call that preloads nothing. Each child sees ``env`` as its environment.
    """
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    _check_plan(specs)
    if not specs:
        return RunSummary(runner, stamp, dry_run, (), time.perf_counter() - started)
    if dry_run:
        results: list[ChildResult] = []
        for spec in specs:
            plan = spec.display() + (f"  (after {', '.join(spec.after)})" if spec.after else "")
            log.info("[dry-run] %s", plan)
            results.append(ChildResult(spec.name, "planned", None, 0.0, message=plan))
        return RunSummary(runner, stamp, True, tuple(results), time.perf_counter() - started)
    scratch = Path(tempfile.mkdtemp(prefix="ta_lab2_run_", dir=work_dir))
    with nullcontext(launcher) if launcher is not None else Launcher() as active:
        done = _Schedule(specs, env=env, timeout_s=timeout_s, continue_on_error=continue_on_error, verbose=verbose,
                         scratch=scratch, parallel=1 if verbose else max(1, max_parallel), launcher=active).run()
    return RunSummary(runner, stamp, False, tuple(done[s.name] for s in specs), time.perf_counter() - started)


def _check_plan(specs: Sequence[ChildSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"two children are named {spec.name!r}")
        missing = [d for d in spec.after if d not in seen]
        if missing:
            raise ValueError(f"{spec.name}: 'after' names {', '.join(missing)}, not an earlier child of this run")
        seen.add(spec.name)


@dataclass
class _Running:
    spec: ChildSpec
    child: Child
    started: float
    deadline: float
    summary_path: Path
    output_path: Path


class _Schedule:
    """The run loop: start what may start, wait, collect, enforce timeouts."""

    def __init__(self, specs: Sequence[ChildSpec], *, env: dict[str, str], timeout_s: float, continue_on_error: bool,
                 verbose: bool, scratch: Path, parallel: int, launcher: Launcher) -> None:
        self.pending = list(specs)
        self.env = env
        self.timeout_s = timeout_s
        self.continue_on_error = continue_on_error
        self.verbose = verbose
        self.scratch = scratch
        self.parallel = parallel
        self.launcher = launcher
        self.done: dict[str, ChildResult] = {}
        self.running: list[_Running] = []
        self.stopped = False  # a child failed and continue_on_error is off: start nothing new

    def run(self) -> dict[str, ChildResult]:
        try:
            while True:
                self._start_ready()
                if not self.running:
                    break
                nearest = min(r.deadline for r in self.running)
                self.launcher.wait([r.child for r in self.running], nearest - time.monotonic())
                self._collect()
            for spec in self.pending:  # unreachable while 'after' only names earlier children
                self.done[spec.name] = ChildResult(spec.name, "skipped", None, 0.0,
                                                   message="skipped: never became ready")
        except BaseException:  # KeyboardInterrupt (or a bug): nothing may outlive the runner
            for r in self.running:
                kill_group(r.child)
            raise
        return self.done

    def _start_ready(self) -> None:
        for spec in list(self.pending):
            blocked = self._blocked_by(spec)
            if blocked is not None:
                self.pending.remove(spec)
                self.done[spec.name] = ChildResult(spec.name, "skipped", None, 0.0, message=blocked)
                continue
            if any(d not in self.done for d in spec.after):
                continue  # a dependency is still running
            if self.stopped:
                self.pending.remove(spec)
                self.done[spec.name] = ChildResult(spec.name, "skipped", None, 0.0,
                                                   message="skipped after an earlier failure")
                continue
            if len(self.running) >= self.parallel:
                continue  # keep scanning: later children may still be skipped right away
            self.pending.remove(spec)
            self._launch(spec)

    def _blocked_by(self, spec: ChildSpec) -> str | None:
        for dep in spec.after:
            result = self.done.get(dep)
            if result is not None and not result.ok:
                verb = "was skipped" if result.status == "skipped" else result.status
                return f"skipped: dependency {dep} {verb}"
        return None

    def _launch(self, spec: ChildSpec) -> None:
        summary_path = self.scratch / f"{spec.name}.summary.json"
        output_path = self.scratch / f"{spec.name}.out"
        output_path.write_bytes(b"")  # exists even if the child dies before opening it
        argv = [*spec.args, "--summary-json", str(summary_path)]
        log.info("running %s", spec.display())
        started = time.perf_counter()
        try:
            child = self.launcher.launch(spec.name, spec.entry, argv, self.env,
                                         None if self.verbose else output_path)
        except Exception as exc:  # noqa: BLE001 - a child that cannot start is a failed child
            message = redact(f"could not start: {type(exc).__name__}: {exc}")
            log.error("%s failed: %s", spec.name, message)
            self._finish(spec, ChildResult(spec.name, "failed", None, time.perf_counter() - started, message=message))
            return
        log.debug("%s: pid %d", spec.name, child.pid)
        self.running.append(_Running(spec, child, started, time.monotonic() + self.timeout_s, summary_path,
                                     output_path))

    def _collect(self) -> None:
        now = time.monotonic()
        for r in list(self.running):
            code = r.child.exitcode
            if code is None and now < r.deadline:
                continue
            if code is None:
                kill_group(r.child)
                status, message = "timeout", f"timed out after {self.timeout_s:g}s; its process group was killed"
            else:
                status = "ok" if code == 0 else "failed"
                message = "" if code == 0 else f"exit code {code}"
            self.running.remove(r)
            self._finish(r.spec, self._result(r, status, code, message))

    def _finish(self, spec: ChildSpec, result: ChildResult) -> None:
        self.done[spec.name] = result
        if not result.ok and not self.continue_on_error:
            self.stopped = True

    def _result(self, r: _Running, status: str, code: int | None, message: str) -> ChildResult:
        duration = time.perf_counter() - r.started
        summary: dict[str, Any] = {}
        if r.summary_path.exists():
            try:
                summary = json.loads(r.summary_path.read_text())
            except json.JSONDecodeError:
                summary = {}
        tail = ""
        if status != "ok" and not self.verbose:
            text = r.output_path.read_text(errors="replace") if r.output_path.exists() else ""
            tail = redact("\n".join(text.splitlines()[-40:]))
        if status == "ok":
            log.info("%s finished in %.1fs", r.spec.name, duration)
        else:
            log.error("%s %s: %s", r.spec.name, status, message)
        return ChildResult(r.spec.name, status, None if status == "timeout" else code, duration, summary, message,
                           tail)
