"""Running builder/refresher children (spec 04 "Behaviour every runner shares").

Each child is its own process (a crash cannot take the runner down) in its own process group
(a timeout kills the whole group), receives the database URL through the environment (never
argv), and reports a JSON summary through ``--summary-json``. Without ``verbose`` its output
is captured to a file and shown only if it fails; with it, streamed.
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
from typing import Any, Sequence

from ta_lab2.db.url import redact

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class ChildSpec:
    """One child: a name for the summary and its argv (no secrets: the URL is in the env)."""

    name: str
    argv: tuple[str, ...]

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


def die_with_parent() -> None:
    """``preexec_fn`` for children: on Linux, ask the kernel to SIGKILL this process when its
    parent dies, so a killed runner or capture never leaves builders writing behind it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def python_module_argv(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *args)


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
) -> RunSummary:
    """Run ``specs`` in order; stop at the first failure unless ``continue_on_error``."""
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results: list[ChildResult] = []
    if dry_run:
        for spec in specs:
            log.info("[dry-run] %s", spec.display())
            results.append(ChildResult(spec.name, "planned", None, 0.0, message=spec.display()))
        return RunSummary(runner, stamp, True, tuple(results), time.perf_counter() - started)
    scratch = Path(tempfile.mkdtemp(prefix="ta_lab2_run_", dir=work_dir))
    failed = False
    for spec in specs:
        if failed and not continue_on_error:
            results.append(ChildResult(spec.name, "skipped", None, 0.0, message="skipped after an earlier failure"))
            continue
        result = _run_one(spec, env=env, timeout_s=timeout_s, verbose=verbose, scratch=scratch)
        results.append(result)
        failed = failed or not result.ok
    return RunSummary(runner, stamp, False, tuple(results), time.perf_counter() - started)


def _run_one(spec: ChildSpec, *, env: dict[str, str], timeout_s: float, verbose: bool, scratch: Path) -> ChildResult:
    summary_path = scratch / f"{spec.name}.summary.json"
    output_path = scratch / f"{spec.name}.out"
    argv = [*spec.argv, "--summary-json", str(summary_path)]
    log.info("running %s", spec.display())
    started = time.perf_counter()
    with open(output_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=None if verbose else out,
            stderr=None if verbose else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: a timeout kills grandchildren too
            preexec_fn=die_with_parent,
        )
        try:
            code = proc.wait(timeout=timeout_s)
            status = "ok" if code == 0 else "failed"
            message = "" if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            code, status = None, "timeout"
            message = f"timed out after {timeout_s:g}s; its process group was killed"
        except KeyboardInterrupt:
            _kill_group(proc)
            raise
    duration = time.perf_counter() - started
    summary: dict[str, Any] = {}
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError:
            summary = {}
    tail = ""
    if status != "ok" and not verbose:
        text = output_path.read_text(errors="replace")
        tail = redact("\n".join(text.splitlines()[-40:]))
    if status == "ok":
        log.info("%s finished in %.1fs", spec.name, duration)
    else:
        log.error("%s %s: %s", spec.name, status, message)
    return ChildResult(spec.name, status, code, duration, summary, message, tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def write_run_summary(summary: RunSummary, output_dir: Path) -> Path:
    """Write the summary JSON next to the logs (``<runner>-<timestamp>.json`` and ``<runner>-latest.json``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = summary.started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    path = output_dir / f"{summary.runner}-{stamp}.json"
    text = json.dumps(summary.as_dict(), indent=2, default=str)
    path.write_text(text)
    (output_dir / f"{summary.runner}-latest.json").write_text(text)
    return path
