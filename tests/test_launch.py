"""Starting and scheduling a run's children (spec 04 "Behaviour every runner shares"): real
processes from the standard library's fork server (or, with the switch off, new
interpreters), no mocks. ``tests/launch_child.py`` stands in for a builder's command.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

import pytest
from launch_child import main as child_main

from ta_lab2.launch.process import Child, Launcher
from ta_lab2.launch.results import ChildResult, RunSummary
from ta_lab2.launch.schedule import ChildSpec, run_children

HERE = Path(__file__).resolve().parent
SECRET_URL = "postgresql://u:Sup3rSecretPw@localhost/db"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _child(name: str, *args: str, after: tuple[str, ...] = ()) -> ChildSpec:
    return ChildSpec(name, child_main, args, after=after)


def _run(specs: list[ChildSpec], env: dict[str, str] | None = None, *, fork_server: bool = True,
         **kw: object) -> RunSummary:
    with Launcher(fork_server=fork_server) as launcher:
        return run_children("t", specs, env=env or _env(), launcher=launcher, **kw)  # type: ignore[arg-type]


def _gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


def _result(summary: RunSummary, name: str) -> ChildResult:
    return next(c for c in summary.children if c.name == name)


@pytest.fixture(scope="module")
def forked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, Path]:
    """One run through one fork server covering most cases at once: two children that must
    run at the same time (each waits until the other has started) and one child after both, success, failure, an exception, dependents of a failure,
    multi-threaded polars, and a hanging child with a grandchild."""
    tmp = tmp_path_factory.mktemp("launch")
    specs = [
        _child("x", "meet", str(tmp / "x.here"), str(tmp / "y.here"), str(tmp / "x")),
        _child("y", "meet", str(tmp / "y.here"), str(tmp / "x.here"), str(tmp / "y")),
        _child("hang", "grandchild", str(tmp / "grandchild.pid")),
        _child("z", "sleep", "0", str(tmp / "z"), after=("x", "y")),
        _child("ok", "ok"),
        _child("fail", "fail"),
        _child("raise", "raise"),
        _child("dep", "ok", after=("fail",)),
        _child("dep_of_dep", "ok", after=("dep",)),
        _child("polars", "polars"),
    ]
    env = _env(TA_LAB2_DB_URL=SECRET_URL, LAUNCH_MARK="from-the-request")
    # the hanging child's timeout, which every child gets: the others end in well under a
    # second on a quiet machine, and a busy one still leaves them ample time
    summary = _run(specs, env, continue_on_error=True, max_parallel=2, timeout_s=15)
    return summary, tmp


def test_a_forked_child_succeeds_in_its_own_group_and_its_summary_is_read(forked_run: tuple[RunSummary, Path]) -> None:
    summary, _ = forked_run
    child = _result(summary, "ok")
    assert child.status == "ok" and child.exit_code == 0
    facts = child.summary
    assert facts["rows_inserted"] == 7
    assert facts["ppid"] != os.getpid()  # forked by the fork server, not started by this process
    assert facts["pgid"] == facts["pid"] == facts["sid"]  # leads its own session and process group
    assert facts["stdin"] == "/dev/null"
    assert facts["argv"][:2] == ["ok", "--summary-json"]
    # the URL reaches the child through its environment, never its arguments
    assert facts["env"]["TA_LAB2_DB_URL"] == SECRET_URL and facts["env"]["LAUNCH_MARK"] == "from-the-request"
    assert not any("Sup3rSecretPw" in a for a in facts["argv"])
    assert summary.totals()["rows_inserted"] == 7 * sum(bool(c.summary) for c in summary.children)
    assert summary.exit_code == 1  # others failed


def test_results_stay_in_plan_order(forked_run: tuple[RunSummary, Path]) -> None:
    summary, _ = forked_run
    assert [c.name for c in summary.children] == ["x", "y", "hang", "z", "ok", "fail", "raise", "dep", "dep_of_dep",
                                                  "polars"]


def test_failing_and_raising_children_show_their_output_tail(forked_run: tuple[RunSummary, Path]) -> None:
    summary, _ = forked_run
    failed, raised = _result(summary, "fail"), _result(summary, "raise")
    assert failed.status == "failed" and failed.exit_code == 3 and failed.message == "exit code 3"
    assert "about to break" in failed.output_tail and "child broke" in failed.output_tail
    assert raised.status == "failed" and raised.exit_code == 1
    assert "RuntimeError: child raised on purpose" in raised.output_tail and "Traceback" in raised.output_tail
    assert _result(summary, "ok").output_tail == ""  # output is shown only on failure


def test_a_timeout_kills_the_whole_process_group(forked_run: tuple[RunSummary, Path]) -> None:
    summary, tmp = forked_run
    child = _result(summary, "hang")
    assert child.status == "timeout" and child.exit_code is None and "process group was killed" in child.message
    assert _wait_gone(int((tmp / "grandchild.pid").read_text()))


def test_dependents_of_a_failed_child_are_skipped(forked_run: tuple[RunSummary, Path]) -> None:
    summary, _ = forked_run
    dep, dep2 = _result(summary, "dep"), _result(summary, "dep_of_dep")
    assert dep.status == dep2.status == "skipped"
    assert dep.message == "skipped: dependency fail failed"
    assert dep2.message == "skipped: dependency dep was skipped"
    # with continue_on_error, children that do not depend on the failure still ran
    assert _result(summary, "polars").status == "ok" and _result(summary, "z").status == "ok"


def test_max_parallel_overlaps_independent_children(forked_run: tuple[RunSummary, Path]) -> None:
    summary, tmp = forked_run
    # x and y each waited until the other had started: both ending means they ran at once
    assert _result(summary, "x").status == _result(summary, "y").status == "ok"
    (x0, x1), (y0, y1), (z0, _) = (json.loads((tmp / n).read_text()) for n in ("x", "y", "z"))
    assert max(x0, y0) <= min(x1, y1)
    assert z0 >= max(x1, y1)  # z waited for both


def test_polars_runs_multi_threaded_in_a_forked_child(forked_run: tuple[RunSummary, Path]) -> None:
    child = _result(forked_run[0], "polars")
    assert child.status == "ok", child.output_tail
    assert child.summary["ppid"] != os.getpid() and child.summary["groups"] == 500


class _SlowLauncher(Launcher):
    """A runner loop made slow where the old home-made fork server lost exit reports: every
    child has ended before ``launch`` returns it (so its exit is reported before the runner
    has registered it), and the loop looks at its children only once all of them have
    ended. Bounded waits on the children's own sentinels, no sleeps: a lost exit shows as a
    child that never ends, i.e. a timeout."""

    def launch(self, *args: object, **kw: object) -> Child:
        child = super().launch(*args, **kw)  # type: ignore[arg-type]
        multiprocessing.connection.wait([child.sentinel], timeout=60)
        return child

    def wait(self, children: Sequence[Child], timeout: float) -> None:
        pending = [c.sentinel for c in children]
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            ready = multiprocessing.connection.wait(pending, timeout=deadline - time.monotonic())
            pending = [s for s in pending if s not in ready]
        super().wait(children, timeout)


@pytest.mark.parametrize("parallel", [1, 2])
def test_every_exit_is_seen_under_a_slow_runner_loop(parallel: int) -> None:
    """Regression: the home-made fork server dropped an exit report that arrived before the
    child's pid was registered, and the run waited for its 6-hour timeout."""
    specs = [_child(f"c{i}", "quick") for i in range(40)]
    with _SlowLauncher() as launcher:
        summary = run_children("t", specs, env=_env(), launcher=launcher, max_parallel=parallel, timeout_s=30)
    # a dropped exit report leaves its child waiting for the timeout: status "timeout"
    assert [c.status for c in summary.children] == ["ok"] * 40
    assert all(c.exit_code == 0 for c in summary.children)


# The scheduling below is the same code whichever way children start; new interpreters
# (TA_LAB2_FORKSERVER=0) keep these runs cheap and cover that switch.
def test_without_the_fork_server_children_are_new_interpreters(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    summary = _run([_child("a", "ok"), _child("b", "fail", after=("a",)),
                    _child("sleeper", "grandchild", str(pid_file))], _env(TA_LAB2_FORKSERVER="0"),
                   fork_server=False, continue_on_error=True, timeout_s=5)
    assert [c.status for c in summary.children] == ["ok", "failed", "timeout"]
    facts = summary.children[0].summary
    assert facts["ppid"] == os.getpid() and facts["pgid"] == facts["pid"] and facts["stdin"] == "/dev/null"
    assert "child broke" in summary.children[1].output_tail
    assert _wait_gone(int(pid_file.read_text()))


def test_the_switch_turns_the_fork_server_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TA_LAB2_FORKSERVER", "0")
    assert not Launcher().fork_server
    monkeypatch.setenv("TA_LAB2_FORKSERVER", "1")
    assert Launcher().fork_server


def test_stop_at_the_first_failure_skips_the_rest() -> None:
    specs = [_child("base", "fail"), _child("dep", "ok", after=("base",)), _child("free", "ok")]
    stop = _run(specs, fork_server=False, max_parallel=1)
    assert [c.status for c in stop.children] == ["failed", "skipped", "skipped"]
    assert stop.children[1].message == "skipped: dependency base failed"
    assert stop.children[2].message == "skipped after an earlier failure"


def test_a_running_child_finishes_when_another_fails(tmp_path: Path) -> None:
    # "slow" ends only after "bad" has ended, so the runner sees the failure before a slot frees
    bad_pid = tmp_path / "bad.pid"
    specs = [_child("slow", "outlive", str(bad_pid), str(tmp_path / "slow")), _child("bad", "fail", str(bad_pid)),
             _child("later", "ok")]
    summary = _run(specs, fork_server=False, max_parallel=2)
    assert [c.status for c in summary.children] == ["ok", "failed", "skipped"]
    assert (tmp_path / "slow").exists()


def test_a_dead_fork_server_fails_its_child_and_the_next_one_starts_from_a_new_one() -> None:
    specs = [_child("killer", "kill-parent"), _child("next", "ok")]
    summary = _run(specs, continue_on_error=True, timeout_s=30)
    killer, after = summary.children  # an unseen death would end in status "timeout"
    assert killer.status == "failed" and killer.exit_code not in (0, None)
    assert after.status == "ok" and after.summary["ppid"] != os.getpid()


def test_a_child_that_cannot_start_is_a_failed_child() -> None:
    summary = run_children("t", [ChildSpec("lambda", lambda argv: None), _child("free", "ok")],  # not picklable
                           env=_env(), continue_on_error=True)
    bad, free = summary.children
    assert bad.status == "failed" and bad.message.startswith("could not start:")
    assert free.status == "ok"


def _runner_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        from launch_child import main as child
        from ta_lab2.launch.schedule import ChildSpec, run_children
        if __name__ == "__main__":
        """) + textwrap.indent(textwrap.dedent(body), "    "))
    return script


def _pids(tmp_path: Path, names: Sequence[str], proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 60
    files = [tmp_path / n for n in names]
    while not all(p.exists() and p.read_text() for p in files):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    return [int(p.read_text()) for p in files]


def test_ctrl_c_kills_every_running_child(tmp_path: Path) -> None:
    # Ctrl-C as a terminal delivers it: a test run started in the background by a
    # non-interactive shell ignores SIGINT, and the runner would inherit that
    script = _runner_script(tmp_path, f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        specs = [ChildSpec(n, child, ("pidfile", {str(tmp_path)!r} + "/" + n)) for n in ("one", "two")]
        run_children("t", specs, env=dict(os.environ), max_parallel=2)
        """)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = _pids(tmp_path, ("one", "two"), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert all(_wait_gone(pid) for pid in pids)


@pytest.mark.parametrize("fork_server", [True, False])
def test_children_die_with_a_killed_runner(tmp_path: Path, fork_server: bool) -> None:
    """SIGKILL leaves the runner no chance to clean up: the children's lifeline does it."""
    script = _runner_script(tmp_path, f"""
        from ta_lab2.launch.process import Launcher
        specs = [ChildSpec(n, child, ("pidfile", {str(tmp_path)!r} + "/" + n)) for n in ("one", "two")]
        with Launcher(fork_server={fork_server}) as launcher:
            run_children("t", specs, env=dict(os.environ), max_parallel=2, launcher=launcher)
        """)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = _pids(tmp_path, ("one", "two"), proc)
    proc.kill()
    proc.communicate(timeout=30)
    assert all(_wait_gone(pid) for pid in pids)


def test_verbose_children_write_to_the_runners_terminal(tmp_path: Path) -> None:
    script = _runner_script(tmp_path, """
        summary = run_children("t", [ChildSpec("a", child, ("ok",)), ChildSpec("b", child, ("fail",))],
                               env=dict(os.environ), verbose=True, continue_on_error=True)
        print("statuses", [c.status for c in summary.children])
        """)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "launched child ran" in out.stdout and "statuses ['ok', 'failed']" in out.stdout
    assert "child broke" in out.stderr


def test_children_of_a_console_script_runner_import_no_cli_framework(tmp_path: Path) -> None:
    """multiprocessing re-runs a runner's main script in each child: the ``ta-lab2`` script and
    the scripts/ wrappers import only ``ta_lab2.cli``'s light entry point at their top, so no
    child pays for Typer (~0.15 s)."""
    script = tmp_path / "console_script.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        from ta_lab2.cli import main  # what the installed ta-lab2 script imports
        if __name__ == "__main__":
            from launch_child import main as child
            from ta_lab2.launch.schedule import ChildSpec, run_children
            summary = run_children("t", [ChildSpec("a", child, ("ok",))], env=dict(os.environ))
            print(summary.children[0].summary["heavy"])
        """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_plan_must_name_earlier_children() -> None:
    with pytest.raises(ValueError, match="not an earlier child"):
        run_children("t", [_child("a", "ok", after=("b",)), _child("b", "ok")], env=_env(), dry_run=True)
    with pytest.raises(ValueError, match="two children"):
        run_children("t", [_child("a", "ok"), _child("a", "ok")], env=_env(), dry_run=True)


def test_dry_run_lists_the_entry_argv_and_dependencies() -> None:
    summary = run_children("t", [_child("a", "ok"), _child("b", "ok", after=("a",))], env=_env(), dry_run=True)
    assert [c.status for c in summary.children] == ["planned", "planned"]
    assert [c.message for c in summary.children] == ["launch_child.main ok", "launch_child.main ok  (after a)"]


def test_runner_dependencies_follow_the_tables_each_child_reads() -> None:
    from ta_lab2.runners.plan import REFRESHER_ORDER, RunOptions, bar_specs, ema_specs, within_run

    options = RunOptions(ids=None)
    bars = bar_specs(options, ("1d", "multi_tf", "cal_iso", "cal_us", "cal_anchor_iso", "cal_anchor_us"))
    emas = ema_specs(options, REFRESHER_ORDER)
    after = {s.name: s.after for s in within_run([*bars, *emas])}
    assert after == {
        "1d": (), "multi_tf": ("1d",), "cal_iso": ("1d",), "cal_us": ("1d",), "cal_anchor_iso": ("1d",),
        "cal_anchor_us": ("1d",),
        "ema_multi_tf": ("1d", "multi_tf"), "ema_v2": ("1d",), "ema_cal_us": ("1d", "cal_us"),
        "ema_cal_iso": ("1d", "cal_iso"), "ema_cal_anchor_us": ("1d", "cal_anchor_us"),
        "ema_cal_anchor_iso": ("1d", "cal_anchor_iso"),
    }
    # alone, the EMA runner waits for nothing; bars without 1d wait for nothing either
    assert all(s.after == () for s in within_run(emas))
    assert all(s.after == () for s in within_run(bar_specs(options, ("cal_iso", "cal_us"))))


def test_the_preload_of_the_runners_children_leaves_the_cli_and_numba_out() -> None:
    """The children parse their options with argparse (work/command.py): neither the fork
    server nor a child imports Typer, pydantic or Rich; numba only for a run that recomputes
    EMA series."""
    code = ("import sys; from ta_lab2.runners.plan import preload; import importlib; "
            "[importlib.import_module(m) for m in preload(('bars', 'emas'), kernel=False, verbose=False)]; "
            "from ta_lab2.bars.cli import parser; parser().parse_args(['1d', '--ids', '1,2']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'click', 'rich', 'numba'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
