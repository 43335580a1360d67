"""The runner's fork server and concurrent children (spec 04 "Behaviour every runner shares"
must hold whichever way a child starts): real processes, no mocks.

``tests/zygote_child.py`` stands in for a builder; ``fork_modules=("zygote_child",)`` routes
it through the zygote the way ``python -m ta_lab2.…`` children are routed in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proc_helpers import gone, wait_gone
from ta_lab2.pipeline.forkserver import KERNEL, ForkServer, forkable, kernel_stage
from ta_lab2.pipeline.runner import ChildSpec, RunSummary, run_children

pytestmark = pytest.mark.slow  # every test starts real zygotes and children (polars, numba imports)

HERE = Path(__file__).resolve().parent
FORK = ("zygote_child",)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("TA_LAB2_FORKSERVER", None)
    env.update(extra)
    return env


def _child(name: str, *args: str, after: tuple[str, ...] = ()) -> ChildSpec:
    return ChildSpec(name, (sys.executable, "-m", "zygote_child", *args), after=after)


def _run(specs: list[ChildSpec], env: dict[str, str] | None = None, **kw: object) -> RunSummary:
    return run_children("t", specs, env=env or _env(), fork_modules=FORK, **kw)  # type: ignore[arg-type]


def test_forkable_only_takes_python_m_under_the_prefixes() -> None:
    assert forkable((sys.executable, "-m", "ta_lab2.bars", "1d"))
    assert not forkable((sys.executable, "-m", "ta_lab2x"))
    assert not forkable(("python3", "-m", "ta_lab2.bars"))
    assert not forkable((sys.executable, "-c", "print(1)"))
    assert forkable((sys.executable, "-m", "zygote_child"), FORK)


SECRET_URL = "postgresql://u:Sup3rSecretPw@localhost/db"


@pytest.fixture(scope="module")
def zygote_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, Path]:
    """One run through one zygote covering most cases at once (a zygote costs ~1.5 s of imports):
    two sleepers that must overlap and one child after both, success, failure, an exception,
    dependents of a failure, multi-threaded polars, and a hanging child with a grandchild."""
    tmp = tmp_path_factory.mktemp("zygote")
    specs = [
        _child("x", "sleep", "1", str(tmp / "x")),
        _child("y", "sleep", "1", str(tmp / "y")),
        _child("hang", "grandchild", str(tmp / "grandchild.pid")),
        _child("z", "sleep", "0", str(tmp / "z"), after=("x", "y")),
        _child("ok", "ok"),
        _child("fail", "fail"),
        _child("raise", "raise"),
        _child("dep", "ok", after=("fail",)),
        _child("dep_of_dep", "ok", after=("dep",)),
        _child("polars", "polars"),
    ]
    env = _env(TA_LAB2_DB_URL=SECRET_URL, ZYGOTE_MARK="from-the-request")
    started = time.monotonic()
    summary = _run(specs, env, continue_on_error=True, max_parallel=2, timeout_s=3)
    assert time.monotonic() - started < 30
    return summary, tmp


def _result(summary: RunSummary, name: str):  # type: ignore[no-untyped-def]
    return next(c for c in summary.children if c.name == name)


def test_child_through_the_zygote_succeeds_and_its_summary_is_read(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, _ = zygote_run
    child = _result(summary, "ok")
    assert child.status == "ok" and child.exit_code == 0
    facts = child.summary
    assert facts["rows_inserted"] == 7
    assert facts["ppid"] != os.getpid()  # forked by the zygote, not started by this process
    assert facts["pgid"] == facts["pid"] == facts["sid"]  # leads its own session and process group
    assert facts["stdin"] == "/dev/null"
    assert facts["main_spec"] == "zygote_child"  # run as `python -m zygote_child`
    assert facts["argv"][1:3] == ["ok", "--summary-json"] and facts["argv"][0].endswith("zygote_child.py")
    # the URL reaches the child through its environment, never its arguments
    assert facts["env"]["TA_LAB2_DB_URL"] == SECRET_URL and facts["env"]["ZYGOTE_MARK"] == "from-the-request"
    assert not any("Sup3rSecretPw" in a for a in facts["argv"])
    assert summary.totals()["rows_inserted"] == 7 * sum(bool(c.summary) for c in summary.children)
    assert summary.exit_code == 1  # others failed


def test_results_stay_in_plan_order(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, _ = zygote_run
    assert [c.name for c in summary.children] == ["x", "y", "hang", "z", "ok", "fail", "raise", "dep", "dep_of_dep",
                                                  "polars"]


def test_failing_and_raising_children_show_their_output_tail(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, _ = zygote_run
    failed, raised = _result(summary, "fail"), _result(summary, "raise")
    assert failed.status == "failed" and failed.exit_code == 3 and failed.message == "exit code 3"
    assert "about to break" in failed.output_tail and "child broke" in failed.output_tail
    assert raised.status == "failed" and raised.exit_code == 1
    assert "RuntimeError: child raised on purpose" in raised.output_tail and "Traceback" in raised.output_tail
    assert _result(summary, "ok").output_tail == ""  # output is shown only on failure


def test_timeout_kills_the_whole_process_group_through_the_zygote(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, tmp = zygote_run
    child = _result(summary, "hang")
    assert child.status == "timeout" and child.exit_code is None and "process group was killed" in child.message
    grandchild = int((tmp / "grandchild.pid").read_text())
    assert wait_gone(grandchild)


def test_dependents_of_a_failed_child_are_skipped(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, _ = zygote_run
    dep, dep2 = _result(summary, "dep"), _result(summary, "dep_of_dep")
    assert dep.status == dep2.status == "skipped"
    assert dep.message == "skipped: dependency fail failed"
    assert dep2.message == "skipped: dependency dep was skipped"
    # with continue_on_error, children that do not depend on the failure still ran
    assert _result(summary, "polars").status == "ok" and _result(summary, "z").status == "ok"


def test_max_parallel_overlaps_independent_children(zygote_run: tuple[RunSummary, Path]) -> None:
    _, tmp = zygote_run
    (x0, x1), (y0, y1), (z0, _) = (json.loads((tmp / n).read_text()) for n in ("x", "y", "z"))
    assert max(x0, y0) < min(x1, y1)  # x and y ran at the same time
    assert z0 >= max(x1, y1)  # z waited for both


def test_polars_runs_multi_threaded_in_a_forked_child(zygote_run: tuple[RunSummary, Path]) -> None:
    summary, _ = zygote_run
    child = _result(summary, "polars")
    assert child.status == "ok", child.output_tail
    assert child.summary["ppid"] != os.getpid() and child.summary["groups"] == 500


def test_the_request_environment_replaces_the_zygotes(tmp_path: Path) -> None:
    zygote_env = _env(ONLY_IN_ZYGOTE="1")
    request_env = _env(ONLY_IN_REQUEST="2", TZ="America/New_York")
    summary_path = tmp_path / "s.json"
    with ForkServer(zygote_env) as server:
        child = server.spawn([sys.executable, "-m", "zygote_child", "ok", "--summary-json", str(summary_path)],
                             request_env, tmp_path / "out.txt", cwd=str(tmp_path))
        assert child.wait(timeout=60) == 0
    env = json.loads(summary_path.read_text())["env"]
    assert env == request_env
    assert (tmp_path / "out.txt").read_text() == "zygote child ran\n"


# The scheduling below is the same code whichever way children start; plain subprocesses
# (TA_LAB2_FORKSERVER=0) keep these runs cheap and cover the fallback path.
def test_without_the_zygote_children_are_plain_subprocesses(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    env = _env(TA_LAB2_FORKSERVER="0")
    summary = _run([_child("a", "ok"), _child("b", "fail", after=("a",)),
                    _child("sleeper", "grandchild", str(pid_file))], env, continue_on_error=True, timeout_s=1.5)
    assert [c.status for c in summary.children] == ["ok", "failed", "timeout"]
    facts = summary.children[0].summary
    assert facts["ppid"] == os.getpid() and facts["pgid"] == facts["pid"] and facts["stdin"] == "/dev/null"
    assert "child broke" in summary.children[1].output_tail
    assert wait_gone(int(pid_file.read_text()))


def test_stop_at_the_first_failure_skips_the_rest() -> None:
    env = _env(TA_LAB2_FORKSERVER="0")
    specs = [_child("base", "fail"), _child("dep", "ok", after=("base",)), _child("free", "ok")]
    stop = _run(specs, env, max_parallel=1)
    assert [c.status for c in stop.children] == ["failed", "skipped", "skipped"]
    assert stop.children[1].message == "skipped: dependency base failed"
    assert stop.children[2].message == "skipped after an earlier failure"


def test_a_running_child_finishes_when_another_fails(tmp_path: Path) -> None:
    env = _env(TA_LAB2_FORKSERVER="0")
    specs = [_child("slow", "sleep", "0.8", str(tmp_path / "slow")), _child("bad", "fail"), _child("later", "ok")]
    summary = _run(specs, env, max_parallel=2)
    assert [c.status for c in summary.children] == ["ok", "failed", "skipped"]
    assert (tmp_path / "slow").exists()


def test_a_dead_zygote_fails_its_children_and_the_run_falls_back(tmp_path: Path) -> None:
    specs = [_child("killer", "kill-parent"), _child("next", "ok")]
    started = time.monotonic()
    summary = _run(specs, continue_on_error=True, timeout_s=30)
    assert time.monotonic() - started < 20
    killer, after = summary.children
    assert killer.status == "failed" and killer.exit_code == -signal.SIGKILL
    assert after.status == "ok" and after.summary["ppid"] == os.getpid()  # a plain subprocess now


def test_ctrl_c_kills_every_running_child(tmp_path: Path) -> None:
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from ta_lab2.pipeline.runner import ChildSpec, run_children
        specs = [ChildSpec(n, (sys.executable, "-m", "zygote_child", "pidfile", {str(tmp_path)!r} + "/" + n))
                 for n in ("one", "two")]
        run_children("t", specs, env=__import__("os").environ.copy(), max_parallel=2, fork_modules=("zygote_child",))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    pid_files = [tmp_path / "one", tmp_path / "two"]
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in pid_files]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone(*pids)


def test_a_plan_must_name_earlier_children() -> None:
    with pytest.raises(ValueError, match="not an earlier child"):
        run_children("t", [_child("a", "ok", after=("b",)), _child("b", "ok")], env=_env(), dry_run=True)
    with pytest.raises(ValueError, match="two children"):
        run_children("t", [_child("a", "ok"), _child("a", "ok")], env=_env(), dry_run=True)


def test_dry_run_lists_the_argv_and_dependencies() -> None:
    summary = _run([_child("a", "ok"), _child("b", "ok", after=("a",))], dry_run=True)
    assert [c.status for c in summary.children] == ["planned", "planned"]
    assert summary.children[0].message.endswith("-m zygote_child ok")
    assert summary.children[1].message.endswith("-m zygote_child ok  (after a)")


def test_runner_dependencies_follow_the_tables_each_child_reads() -> None:
    from ta_lab2.pipeline.runners import REFRESHER_ORDER, RunOptions, bar_specs, ema_specs, within_run

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


def _spawn(fs: ForkServer, env: dict[str, str], tmp_path: Path, module: str, action: str, name: str):  # type: ignore[no-untyped-def]
    argv = [sys.executable, "-m", module, action, "--summary-json", str(tmp_path / f"{name}.json")]
    return fs.spawn(argv, env, tmp_path / f"{name}.out")


def test_kernel_users_load_late_only_with_the_kernel() -> None:
    """A run that preloads the EMA kernel loads it, and the EMA children, in the delegate; the
    bar builders' modules first. Without the kernel nothing waits for a delegate."""
    assert kernel_stage(["ta_lab2.bars", "ta_lab2.emas", KERNEL]) == (["ta_lab2.emas", KERNEL], ["ta_lab2.bars"])
    assert kernel_stage(["ta_lab2.emas", KERNEL]) == (["ta_lab2.emas", KERNEL], [])
    assert kernel_stage(["ta_lab2.bars", "ta_lab2.emas"]) == ([], ["ta_lab2.bars", "ta_lab2.emas"])


def test_later_modules_are_forked_by_a_delegate_zygote(tmp_path: Path) -> None:
    """The early modules' children come from the zygote as soon as its own imports are done;
    the late modules' (the EMA refreshers when numba is preloaded) from a delegate it forked
    to import theirs meanwhile. Either way the runner sees the same protocol: pids, own
    process groups, exit codes."""
    env = _env()

    def spawn(fs: ForkServer, module: str, action: str, name: str):  # type: ignore[no-untyped-def]
        return _spawn(fs, env, tmp_path, module, action, name)

    with ForkServer(env, ["zygote_child", "zygote_child_late"], late=["zygote_child_late"]) as fs:
        first = spawn(fs, "zygote_child", "ok", "first")
        late = spawn(fs, "zygote_child_late", "ok", "late")
        failing = spawn(fs, "zygote_child_late", "fail", "failing")
        assert (first.wait(30), late.wait(30)) == (0, 0)
        assert failing.wait(30) not in (0, None)
        a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("first", "late"))
        assert a["ppid"] == fs.pid  # the zygote itself
        assert b["ppid"] not in (fs.pid, os.getpid())  # its delegate
        assert b["main_spec"] == "zygote_child_late" and b["pgid"] == b["pid"] == late.pid
        delegate = b["ppid"]
        assert not gone(delegate)
    # closing the zygote ends its delegate too
    assert wait_gone(delegate)


def test_without_the_kernel_one_zygote_serves_every_module(tmp_path: Path) -> None:
    """An incremental run does not preload numba: the later modules' imports are small, so the
    zygote preloads them too and forks every child itself."""
    env = _env()
    with ForkServer(env, ["zygote_child", "zygote_child_late"]) as fs:
        children = [_spawn(fs, env, tmp_path, m, "ok", m) for m in ("zygote_child", "zygote_child_late")]
        assert [c.wait(30) for c in children] == [0, 0]
        parents = [json.loads((tmp_path / f"{m}.json").read_text())["ppid"]
                   for m in ("zygote_child", "zygote_child_late")]
        assert parents == [fs.pid, fs.pid]


def test_the_preload_of_the_runners_children_leaves_typer_out() -> None:
    """The children parse their options with argparse (pipeline/child.py): neither the zygote
    nor a child imports Typer or pydantic (~0.15 s before the first child could start)."""
    code = ("import sys; from ta_lab2.pipeline.forkserver import preload; "
            "failed = preload(['ta_lab2.bars', 'ta_lab2.emas']); "
            "from ta_lab2.bars.cli import parser; parser().parse_args(['1d', '--ids', '1,2']); "
            "print(failed, sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'click', 'rich'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{} []"
