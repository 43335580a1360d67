"""Running builder/refresher children (spec 04 "Behaviour every runner shares").

Each child is its own process (a crash cannot take the runner down) in its own process group
(a timeout kills the whole group), receives the database URL through the environment (never
argv), and reports a JSON summary through ``--summary-json``. Without ``verbose`` its output
is captured to a file and shown only if it fails; with it, streamed.

Children that are ``python -m ta_lab2.…`` are forked from a per-run zygote
(:mod:`ta_lab2.pipeline.forkserver`) that has already imported polars, numpy, psycopg, numba
and the CLI, so a child starts in milliseconds instead of about a second; any other argv, or
every argv when ``TA_LAB2_FORKSERVER=0``, is a plain ``subprocess.Popen``. Independent
children run concurrently (``max_parallel``), a child starting only once the children it
reads (``ChildSpec.after``) have succeeded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from ta_lab2.db.url import redact
from ta_lab2.pipeline import forkserver
from ta_lab2.pipeline.forkserver import ForkServer, ForkServerError, ZygoteChild
from ta_lab2.pipeline.forkserver import die_with_parent as die_with_parent  # re-exported (baseline capture)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class ChildSpec:
    """One child: a name for the summary, its argv (no secrets: the URL is in the env) and the
    names of the children of the same run that must succeed before it starts (``after``)."""

    name: str
    argv: tuple[str, ...]
    after: tuple[str, ...] = ()

    def display(self) -> str:
        return redact(" ".join(self.argv))


@dataclass(frozen=True)
class ChildResult:
    name: str
    status: str  # ok | failed | timeout | skipped | planned
    exit_code: int | None
    duration_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "planned")


@dataclass(frozen=True)
class RunSummary:
    runner: str
    started_at: str
    dry_run: bool
    children: tuple[ChildResult, ...]
    duration_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.status == "skipped" for c in self.children) and not any(
            c.status in ("failed", "timeout") for c in self.children
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def totals(self) -> dict[str, float]:
        keys = ("rows_inserted", "rows_deleted", "rejects")
        out: dict[str, float] = {k: 0 for k in keys}
        for c in self.children:
            for k in keys:
                out[k] += float(c.summary.get(k) or 0)
        out["duration_s"] = round(self.duration_s, 3)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "runner": self.runner,
            "started_at": self.started_at,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "totals": self.totals(),
            "children": [
                {
                    "name": c.name,
                    "status": c.status,
                    "exit_code": c.exit_code,
                    "duration_s": round(c.duration_s, 3),
                    "message": c.message,
                    "summary": c.summary,
                }
                for c in self.children
            ],
            **self.extra,
        }


def python_module_argv(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *args)


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
    fork_modules: Sequence[str] = forkserver.FORK_MODULE_PREFIXES,
    preload: Sequence[str] = (),
) -> RunSummary:
    """Run ``specs``, up to ``max_parallel`` at once, and return their results in plan order.

    A child starts, in plan order, once every child named in its ``after`` has succeeded
    (those must come earlier in ``specs``; a name outside the run is a ``ValueError``). When a
    child fails or times out, its dependents are ``skipped`` (the message names the
    dependency); without ``continue_on_error`` no further child starts either — the running
    ones finish, the rest are ``skipped`` — while with it every child that does not depend on
    the failure still runs. Each child has its own ``timeout_s``; on timeout its whole process
    group is killed. ``KeyboardInterrupt`` kills every running child's group and propagates.

    ``verbose`` children stream to the runner's terminal, so they run one at a time: two
    children (and their progress bars) writing to one terminal at once would be unreadable.

    When at least two children are ``python -m`` children of a module under ``fork_modules``,
    those are forked from a zygote (see :mod:`ta_lab2.pipeline.forkserver`) unless
    ``TA_LAB2_FORKSERVER=0`` is set in ``env`` or the runner's environment; every other child,
    and every child if the zygote cannot start, is a ``subprocess.Popen``. Either way the child
    sees ``env``, stdin is ``/dev/null``, and it leads its own process group and dies with the
    runner. ``preload`` names what the zygote loads beyond what the children's modules need
    (:data:`ta_lab2.pipeline.forkserver.KERNEL` for a run that recomputes EMA series).
    """
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    _check_plan(specs)
    if dry_run:
        results: list[ChildResult] = []
        for spec in specs:
            plan = spec.display() + (f"  (after {', '.join(spec.after)})" if spec.after else "")
            log.info("[dry-run] %s", plan)
            results.append(ChildResult(spec.name, "planned", None, 0.0, message=plan))
        return RunSummary(runner, stamp, True, tuple(results), time.perf_counter() - started)
    scratch = Path(tempfile.mkdtemp(prefix="ta_lab2_run_", dir=work_dir))
    # the zygote's imports cost about what one plain child's do: worth it from two children on
    forkable = [spec.argv[2] for spec in specs if forkserver.forkable(spec.argv, fork_modules)]
    use_zygote = forkserver.enabled(env) and forkserver.enabled() and len(forkable) >= 2
    extra = [*preload, *((forkserver.TERMINAL,) if verbose else ())]  # verbose children write to the terminal
    with _Launcher(env, use_zygote=use_zygote, fork_modules=fork_modules,
                   modules=[*forkable, *extra] if forkable else []) as launcher:
        done = _Schedule(specs, env=env, timeout_s=timeout_s, continue_on_error=continue_on_error, verbose=verbose,
                         scratch=scratch, parallel=1 if verbose else max(1, max_parallel), launcher=launcher).run()
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


Handle = Union["subprocess.Popen[bytes]", ZygoteChild]


class _Launcher:
    """Starts children through the zygote when it can, else through ``subprocess.Popen``; one
    zygote per run, started when the first forkable child is launched."""

    def __init__(self, env: dict[str, str], *, use_zygote: bool, fork_modules: Sequence[str],
                 modules: Sequence[str] = ()) -> None:
        self.env = env
        self.fork_modules = tuple(fork_modules)
        self.modules = list(dict.fromkeys(modules))  # what the zygote preloads for
        self.use_zygote = use_zygote
        self.server: ForkServer | None = None

    def __enter__(self) -> "_Launcher":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def launch(self, argv: list[str], output_path: Path, verbose: bool) -> Handle:
        # created here so the runner can read it whichever way the child was started
        output_path.write_bytes(b"")
        if self.use_zygote and forkserver.forkable(argv, self.fork_modules):
            try:
                if self.server is None:
                    self.server = ForkServer(self.env, self.modules)
                child = self.server.spawn(argv, self.env, None if verbose else output_path)
                log.debug("pid %d forked from the zygote (pid %d)", child.pid, self.server.pid)
                return child
            except (OSError, ForkServerError) as exc:
                # Not closed here: children it already forked may still be running (closing
                # would kill them); __exit__ closes it at the end of the run.
                log.warning("fork server unavailable (%s); starting children as new interpreters", exc)
                self.use_zygote = False
        with open(output_path, "wb") as out:
            return subprocess.Popen(
                argv,
                env=self.env,
                stdout=None if verbose else out,
                stderr=None if verbose else subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: a timeout kills grandchildren too
                preexec_fn=die_with_parent,
            )

    def wait_any(self, handles: Sequence[Handle], timeout: float) -> None:
        """Return when one of ``handles`` may have ended, or after ``timeout`` seconds."""
        timeout = max(0.0, timeout)
        zygote = [h for h in handles if isinstance(h, ZygoteChild)]
        if zygote and len(zygote) == len(handles) and self.server is not None:
            self.server.pump(timeout)  # exit reports arrive on the zygote's pipe
        elif len(handles) == 1:
            try:
                handles[0].wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        else:  # Popen children (or a mix): poll
            time.sleep(min(timeout, 0.02))


@dataclass
class _Running:
    spec: ChildSpec
    handle: Handle
    started: float
    deadline: float
    summary_path: Path
    output_path: Path


class _Schedule:
    """The run loop: start what may start, wait, collect, enforce timeouts."""

    def __init__(self, specs: Sequence[ChildSpec], *, env: dict[str, str], timeout_s: float, continue_on_error: bool,
                 verbose: bool, scratch: Path, parallel: int, launcher: _Launcher) -> None:
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
                now = time.monotonic()
                nearest = min(r.deadline for r in self.running)
                self.launcher.wait_any([r.handle for r in self.running], nearest - now)
                self._collect()
            for spec in self.pending:  # unreachable while 'after' only names earlier children
                self.done[spec.name] = ChildResult(spec.name, "skipped", None, 0.0,
                                                   message="skipped: never became ready")
        except BaseException:  # KeyboardInterrupt (or a bug): nothing may outlive the runner
            for r in self.running:
                _kill_group(r.handle)
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
            self.running.append(self._launch(spec))

    def _blocked_by(self, spec: ChildSpec) -> str | None:
        for dep in spec.after:
            result = self.done.get(dep)
            if result is not None and not result.ok:
                verb = "was skipped" if result.status == "skipped" else result.status
                return f"skipped: dependency {dep} {verb}"
        return None

    def _launch(self, spec: ChildSpec) -> _Running:
        summary_path = self.scratch / f"{spec.name}.summary.json"
        output_path = self.scratch / f"{spec.name}.out"
        argv = [*spec.argv, "--summary-json", str(summary_path)]
        log.info("running %s", spec.display())
        started = time.perf_counter()
        handle = self.launcher.launch(argv, output_path, self.verbose)
        return _Running(spec, handle, started, time.monotonic() + self.timeout_s, summary_path, output_path)

    def _collect(self) -> None:
        now = time.monotonic()
        for r in list(self.running):
            code = r.handle.poll()
            if code is None and now < r.deadline:
                continue
            if code is None:
                _kill_group(r.handle)
                status, message = "timeout", f"timed out after {self.timeout_s:g}s; its process group was killed"
                code = None
            else:
                status = "ok" if code == 0 else "failed"
                message = "" if code == 0 else f"exit code {code}"
            self.running.remove(r)
            result = self._result(r, status, code, message)
            self.done[r.spec.name] = result
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
        return ChildResult(r.spec.name, status, code, duration, summary, message, tail)


def _kill_group(handle: Handle) -> None:
    """SIGKILL the child's whole process group (it leads its own), then reap it."""
    try:
        os.killpg(handle.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    handle.wait()


def write_run_summary(summary: RunSummary, output_dir: Path) -> Path:
    """Write the summary JSON next to the logs (``<runner>-<timestamp>.json`` and ``<runner>-latest.json``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = summary.started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = output_dir / f"{summary.runner}-{stamp}.json"
    text = json.dumps(summary.as_dict(), indent=2, default=str)
    path.write_text(text)
    (output_dir / f"{summary.runner}-latest.json").write_text(text)
    return path
