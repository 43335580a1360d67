"""A fork server ("zygote") that starts the runners' children without paying interpreter
start-up and imports each time.

A fresh ``python -m ta_lab2.bars …`` spends about a second importing polars, numpy and psycopg
(and, to recompute EMA series, numba with the EMA kernels from numba's on-disk cache) before
it does any work. The runner instead starts one zygote per run (``python -m
ta_lab2.pipeline.forkserver REQUEST_FD REPLY_FD MODULE…``) that imports all of that once; every child
is then an ``os.fork()`` of the zygote that runs its module as ``__main__`` — exactly what
``python -m MODULE ARGS…`` would run, with the same environment, working directory and
standard streams.

What a child gets is what :mod:`ta_lab2.pipeline.runner` promises for every child (spec 04):
its own process group (and session), the environment of the request (never argv), fd 0 on
``/dev/null``, fds 1 and 2 on the output file (or inherited when verbose), and death by
SIGKILL when the zygote dies — which itself dies with the runner.

Protocol: line-delimited JSON over two pipes handed to the zygote with ``pass_fds`` (stdout
and stderr stay the runner's, for verbose children).

* request ``{"argv": [python, "-m", module, *args], "env": {…}, "output_path": str | null,
  "cwd": str}``
* replies ``{"pid": n}`` once the child exists in its own process group (or ``{"error":
  "…"}``), and later ``{"pid": n, "exit_code": c}`` when the zygote reaps it; ``c`` is negative
  for a child killed by a signal, as in :mod:`subprocess`.

The zygote serves any number of children at once. When the runner closes the request pipe,
the zygote kills what is still running (their whole groups) and exits.

Staged preload: when the run recomputes EMA series (:data:`KERNEL` among the modules: numba
and its kernels, about half the imports), the zygote imports only what the first module's
children need (the bar builders, which start every run) and then serves; for the later modules
it forks a delegate zygote that imports them meanwhile, forwards their requests to it and
relays its replies unchanged — the runner sees one fork server either way. The first children
do not wait for numba. Without the kernel, one zygote preloads every module.

Fork safety: the zygote imports polars but never runs a polars operation, so polars' thread
pool does not exist at fork time and each child creates its own. The threads that do exist
after the imports (jemalloc's background threads, polars' out-of-core cleaner, OpenBLAS) are
parked on futexes holding no lock, and jemalloc and OpenBLAS have fork handlers.

``TA_LAB2_FORKSERVER=0`` in the runner's environment disables the zygote: every child is then
a plain ``subprocess.Popen`` of its argv, as before.
"""

from __future__ import annotations

import gc
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

#: Environment switch: "0" (or "false"/"no"/"off") makes the runners use plain Popen children.
ENV_SWITCH = "TA_LAB2_FORKSERVER"

#: Module-name prefixes whose ``python -m`` children the runner forks from the zygote.
FORK_MODULE_PREFIXES: tuple[str, ...] = ("ta_lab2.",)

#: Imported once by the zygote for every run, so children find them in ``sys.modules``. A
#: module that fails to import is skipped: the child then imports it itself and reports the
#: error as usual.
PRELOAD_COMMON: tuple[str, ...] = (
    "numpy",
    "numpy.ma",  # polars imports it on its first numpy conversion (~70 ms in every child)
    "polars",
    "psycopg",
    "psycopg.sql",
    "zoneinfo",
    "logging.handlers",
    "multiprocessing.context",
    "concurrent.futures.process",
    "ta_lab2.logs",
    "ta_lab2.db.connect",
    "ta_lab2.db.bulk",
    "ta_lab2.pipeline.child",
    "ta_lab2.pipeline.progress",
    "ta_lab2.pipeline.work",
)

#: Not a ``-m`` module but what a run that recomputes EMA series (``--full-refresh``) preloads
#: for the EMA children: numba and the compiled kernels (~0.6 s of CPU). An incremental run that
#: only resumes series never loads them (a child that does need the kernel imports it itself).
KERNEL = "ta_lab2.emas.kernel"
#: The ``-m`` modules whose children use the kernel: with it preloaded, they are forked from
#: the zygote that loaded it.
KERNEL_USERS: tuple[str, ...] = ("ta_lab2.emas",)

#: Not a ``-m`` module but what children writing to a terminal (a verbose run) use: Rich's
#: log handler and progress bars (~45 ms of imports that other children never make).
TERMINAL = "rich"

#: What children of each ``-m`` module (and :data:`KERNEL`, :data:`TERMINAL`) import on top
#: of :data:`PRELOAD_COMMON`.
PRELOAD_FOR: dict[str, tuple[str, ...]] = {
    "ta_lab2.bars": ("ta_lab2.bars.cli", "ta_lab2.bars.builders"),
    "ta_lab2.emas": ("ta_lab2.emas.cli", "ta_lab2.emas.refreshers"),
    KERNEL: ("numba", KERNEL),
    TERMINAL: ("rich.logging", "rich.progress"),
}

_PR_SET_PDEATHSIG = 1


def kernel_stage(modules: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(late, early)``: with :data:`KERNEL` among ``modules``, the kernel and the modules
    whose children use it (:data:`KERNEL_USERS`) load late, in the delegate; the rest early.
    Without it, nothing is late."""
    if KERNEL not in modules:
        return [], list(modules)
    late = [m for m in modules if m == KERNEL or m in KERNEL_USERS]
    return late, [m for m in modules if m not in late]


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``TA_LAB2_FORKSERVER`` is set to 0/false/no/off (default: enabled)."""
    value = (os.environ if env is None else env).get(ENV_SWITCH, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def die_with_parent() -> None:
    """``preexec_fn`` for children: on Linux, ask the kernel to SIGKILL this process when its
    parent dies, so a killed runner or capture never leaves builders writing behind it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def forkable(argv: Sequence[str], prefixes: Sequence[str] = FORK_MODULE_PREFIXES) -> bool:
    """True for ``[sys.executable, "-m", module, …]`` with ``module`` under one of ``prefixes``:
    the only argv the zygote runs (it is this interpreter with these modules preloaded)."""
    return (
        len(argv) >= 3
        and argv[0] == sys.executable
        and argv[1] == "-m"
        and any(argv[2].startswith(p) for p in prefixes)
    )


# =========================================================================== client (runner)
class ForkServerError(RuntimeError):
    """The zygote could not start, or stopped answering."""


class ForkServer:
    """The runner's side of one zygote process.

    ``ForkServer(env, modules)`` starts the zygote with ``env`` (so what the interpreter reads at
    start-up — ``PYTHON*``, locale, ``NUMBA_*`` — is what a plain child would see) and returns
    at once; the zygote imports what children of the ``-m`` ``modules`` need (see
    :func:`preload`; None: every module of :data:`PRELOAD_FOR`) and answers the first
    :meth:`spawn` when it is done; the ``late`` ones (default: :func:`kernel_stage`) are loaded
    and served by a delegate zygote meanwhile. Any module may still be spawned. Not
    thread-safe: one runner thread drives it.
    """

    def __init__(self, env: Mapping[str, str], modules: Sequence[str] | None = None, *,
                 late: Sequence[str] | None = None, start_timeout_s: float = 120.0) -> None:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        wanted = list(PRELOAD_FOR) if modules is None else list(modules)
        if late is None:
            late, early = kernel_stage(wanted)
        else:
            early = [m for m in wanted if m not in late]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "ta_lab2.pipeline.forkserver", str(request_r), str(reply_w),
                 *early, *(["--late", *late] if late else [])],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                pass_fds=(request_r, reply_w),
                preexec_fn=die_with_parent,  # the zygote, and so every child, dies with the runner
            )
        except BaseException:
            for fd in (request_r, request_w, reply_r, reply_w):
                os.close(fd)
            raise
        os.close(request_r)
        os.close(reply_w)
        self._request = request_w
        self._reply = reply_r
        self._buffer = b""
        self._children: dict[int, ZygoteChild] = {}
        self._answers: list[dict[str, Any]] = []
        self._start_timeout_s = start_timeout_s
        self._started = False
        self.alive = True

    @property
    def pid(self) -> int:
        return self._proc.pid

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], output_path: Path | None,
              cwd: str | None = None) -> "ZygoteChild":
        """Fork a child running ``argv`` (``[python, "-m", module, *args]``); returns once the
        child is in its own process group. Raises :class:`ForkServerError` if the zygote is
        gone or does not answer (the first answer waits for the preload)."""
        if not self.alive:
            raise ForkServerError("the fork server is not running")
        request = {"argv": list(argv), "env": dict(env),
                   "output_path": None if output_path is None else str(output_path),
                   "cwd": cwd or os.getcwd()}
        try:
            _write_all(self._request, (json.dumps(request) + "\n").encode())
        except OSError as exc:  # BrokenPipeError: the zygote died
            self._lost()
            raise ForkServerError(f"the fork server stopped: {exc}") from exc
        timeout = self._start_timeout_s if not self._started else 30.0
        deadline = time.monotonic() + timeout
        while not self._answers:
            remaining = deadline - time.monotonic()
            if not self.alive:
                raise ForkServerError("the fork server stopped")
            if remaining <= 0:
                self._proc.kill()
                self._lost()
                raise ForkServerError(f"the fork server did not answer within {timeout:g}s")
            self.pump(remaining)
        answer = self._answers.pop(0)
        self._started = True
        if "error" in answer:
            raise ForkServerError(f"the fork server could not start the child: {answer['error']}")
        child = ZygoteChild(self, int(answer["pid"]), list(argv))
        self._children[child.pid] = child
        return child

    def pump(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: until something arrives) for replies and
        dispatch them: exit codes to their :class:`ZygoteChild`, spawn answers to :meth:`spawn`."""
        if not self.alive:
            return
        ready, _, _ = select.select([self._reply], [], [], timeout)
        if not ready:
            return
        data = os.read(self._reply, 65536)
        if not data:
            self._lost()
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            message = json.loads(line)
            if "exit_code" in message:
                child = self._children.pop(int(message["pid"]), None)
                if child is not None:
                    child.returncode = int(message["exit_code"])
            else:
                self._answers.append(message)

    def running(self) -> list["ZygoteChild"]:
        return list(self._children.values())

    def _lost(self) -> None:
        """The zygote is gone: its children got SIGKILL from the kernel (PR_SET_PDEATHSIG)."""
        self.alive = False
        for child in self._children.values():
            if child.returncode is None:
                child.returncode = -signal.SIGKILL
        self._children.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the request pipe: the zygote kills any child still running and exits."""
        if self._request >= 0:
            os.close(self._request)
            self._request = -1
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reply >= 0:
            os.close(self._reply)
            self._reply = -1
        self._lost()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ZygoteChild:
    """A child forked by the zygote, with the slice of :class:`subprocess.Popen`'s interface the
    runner uses: ``pid`` (also its process-group id), ``returncode``, ``poll()``, ``wait()``."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._server.pump(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._server.pump(remaining)
        return self.returncode


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# =========================================================================== server (zygote)
def preload(modules: Sequence[str] | None = None) -> dict[str, str]:
    """Import what children of ``modules`` (``-m`` module names; None: every module of
    :data:`PRELOAD_FOR`) need, and load the EMA kernels from numba's on-disk cache, without
    running any polars operation (its thread pool must not exist at fork time). Returns the
    failures by module name (the children meet, and report, the same errors themselves)."""
    import importlib

    wanted = list(PRELOAD_FOR) if modules is None else list(dict.fromkeys(modules))
    # other modules are not imported here: a script without a main guard would run in the zygote
    names = [*PRELOAD_COMMON, *(name for m in wanted for name in PRELOAD_FOR.get(m, ()))]
    failed: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    if KERNEL in wanted:
        try:
            import numpy as np

            from ta_lab2.emas.kernel import KIND_DUAL, ema_rows

            # the one signature tf_rows calls (every kind shares the compiled code)
            ema_rows(KIND_DUAL, np.array([1.0, 2.0, np.nan, 4.0]), np.ones(4, dtype=np.bool_), 1,
                     np.array([2], dtype=np.int64), 0)
        except Exception as exc:
            failed["ta_lab2.emas.kernel (warm-up)"] = f"{type(exc).__name__}: {exc}"
    return failed


class _Delegate:
    """A second zygote, forked from the first once the first module's imports are done, that
    imports the later modules (numba and the EMA kernels: most of the preload) while the first
    zygote already forks the first children; requests for its modules are forwarded to it and
    its replies relayed unchanged."""

    def __init__(self, modules: Sequence[str], pid: int, request_w: int, reply_r: int) -> None:
        self.modules = tuple(modules)
        self.pid = pid
        self.request_w = request_w
        self.reply_r = reply_r
        self.buffer = b""

    def serves(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def close(self) -> None:
        for fd in (self.request_w, self.reply_r):
            try:
                os.close(fd)
            except OSError:
                pass


class _Zygote:
    def __init__(self, request_fd: int, reply_fd: int, delegate: _Delegate | None = None) -> None:
        self.request_fd = request_fd
        self.reply_fd = reply_fd
        self.delegate = delegate
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        # SIGCHLD wakes the select() below through the self-pipe; the handler itself does nothing.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        buffer = b""
        while True:
            watched = [self.request_fd, self.wake_r] + ([self.delegate.reply_r] if self.delegate else [])
            ready, _, _ = select.select(watched, [], [])
            if self.wake_r in ready:
                _drain(self.wake_r)
                self.reap()
            if self.delegate is not None and self.delegate.reply_r in ready:
                self.relay()
            if self.request_fd in ready:
                data = os.read(self.request_fd, 1 << 20)
                if not data:  # the runner closed the pipe (or died)
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.start(json.loads(line))
        self.shutdown()

    def reply(self, message: dict[str, Any]) -> None:
        _write_all(self.reply_fd, (json.dumps(message) + "\n").encode())

    def relay(self) -> None:
        """Pass the delegate's complete reply lines on to the runner."""
        assert self.delegate is not None
        data = os.read(self.delegate.reply_r, 65536)
        if not data:  # the delegate is gone: its modules are served here again
            self.delegate.close()
            self.delegate = None
            return
        self.delegate.buffer += data
        *lines, self.delegate.buffer = self.delegate.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                _write_all(self.reply_fd, line + b"\n")

    def start(self, request: dict[str, Any]) -> None:
        if self.delegate is not None and self.delegate.serves(request["argv"][2]):
            try:
                _write_all(self.delegate.request_w, (json.dumps(request) + "\n").encode())
                return
            except OSError:  # it died: fork the child here (it imports what it lacks itself)
                self.delegate.close()
                self.delegate = None
        # The child closes its end of this pipe once it leads its own process group: the reply
        # waits for that, so the runner can never killpg() a group that does not exist yet.
        ready_r, ready_w = os.pipe()
        zygote = os.getpid()
        try:
            pid = _fork(ready_r, ready_w)
        except OSError as exc:
            self.reply({"error": str(exc)})
            return
        if pid == 0:
            try:
                os.close(ready_r)
                own = (self.delegate.request_w, self.delegate.reply_r) if self.delegate else ()
                _child(request, ready_w, parent=zygote,
                       close=(self.request_fd, self.reply_fd, self.wake_r, self.wake_w, *own))
            finally:
                os._exit(1)  # never return into the zygote's loop (_child ends the process itself)
        os.close(ready_w)
        while os.read(ready_r, 1):
            pass
        os.close(ready_r)
        self.children.add(pid)
        self.reply({"pid": pid})

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if self.delegate is not None and pid == self.delegate.pid:
                continue  # its end is noticed on its reply pipe; nothing to report
            self.children.discard(pid)
            self.reply({"pid": pid, "exit_code": os.waitstatus_to_exitcode(status)})

    def shutdown(self) -> None:
        """Nobody will read the results any more: kill what still runs, whole groups."""
        for pid in list(self.children):
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                    break
                except ProcessLookupError:
                    continue
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()
        if self.delegate is not None:  # end of its request pipe: it does the same for its own
            self.delegate.close()
            try:
                os.waitpid(self.delegate.pid, 0)
            except ChildProcessError:
                pass
            self.delegate = None


def _fork(*pipe_fds: int) -> int:
    """``os.fork()`` with the standard streams flushed first (or their buffered output would
    be written twice); if the fork fails, ``pipe_fds`` (made for the child) are closed and the
    ``OSError`` propagates."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return os.fork()
    except OSError:
        for fd in pipe_fds:
            os.close(fd)
        raise


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _child(request: dict[str, Any], ready_w: int, *, parent: int, close: Sequence[int]) -> None:
    """In the forked child: become what ``python -m MODULE ARGS…`` would be, run it, exit."""
    code = 1
    interrupted = False
    try:
        os.setsid()  # own session and process group: the runner's killpg() reaches grandchildren
        die_with_parent()
        if os.getppid() != parent:  # the zygote died before PR_SET_PDEATHSIG was armed
            os._exit(1)
        os.close(ready_w)
        signal.set_wakeup_fd(-1)
        # the dispositions a fresh interpreter has (the zygote ignores SIGINT: the runner owns Ctrl-C)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        if "multiprocessing.process" in sys.modules:
            # a fresh interpreter draws its own key for its worker processes; do not share the zygote's
            sys.modules["multiprocessing.process"].current_process().authkey = os.urandom(32)
        _redirect(request.get("output_path"))
        argv: list[str] = request["argv"]
        module = argv[2]
        sys.argv = [argv[0], *argv[3:]]  # run_module() puts the module's path in sys.argv[0]
        sys.orig_argv = list(argv)
        code, interrupted = _run_main(module)
        code = _finalize(code)
        if interrupted:
            # an uncaught KeyboardInterrupt ends a fresh interpreter by SIGINT (exit code -2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code & 0xFF)  # exit(n) reports n & 0xff; os._exit() refuses what a C int cannot hold


def _redirect(output_path: str | None) -> None:
    """fd 0 from /dev/null; fds 1 and 2 to ``output_path`` (None: keep the runner's, i.e.
    verbose); fresh ``sys.stdout``/``sys.stderr`` buffered as a new interpreter would."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if output_path is not None:
        out = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        unbuffered = bool(getattr(old, "write_through", False))  # python -u / PYTHONUNBUFFERED
        raw = io.FileIO(fd, "w", closefd=False)
        binary: Any = raw if unbuffered else io.BufferedWriter(raw)
        # a fresh interpreter line-buffers stdout on a terminal only, stderr always
        stream = io.TextIOWrapper(binary, encoding=old.encoding, errors=old.errors,
                                  line_buffering=(fd == 2 or os.isatty(fd)), write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_main(module: str) -> tuple[int, bool]:
    """``runpy`` the module as ``__main__``; map its ending to an exit code like the interpreter.
    Returns (exit code, whether it ended by an uncaught KeyboardInterrupt)."""
    import runpy

    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0, False
    except SystemExit as exc:
        return _exit_code(exc.code), False
    except KeyboardInterrupt as exc:
        _print_uncaught(exc)
        return 1, True
    except BaseException as exc:
        _print_uncaught(exc)
        return 1, False


def _print_uncaught(exc: BaseException) -> None:
    """The traceback the interpreter would print: without this module's frame."""
    tb = exc.__traceback__
    if tb is not None:
        exc = exc.with_traceback(tb.tb_next)  # the hook prints exc.__traceback__, not its argument
    sys.excepthook(type(exc), exc, exc.__traceback__)


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    try:
        print(value, file=sys.stderr)
    except Exception:
        pass
    return 1


def _finalize(code: int) -> int:
    """What interpreter shutdown does before the process ends: join non-daemon threads, run
    ``atexit`` callbacks (logging flushes its handlers there), flush the standard streams."""
    import atexit
    import threading

    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
    except BaseException:
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            code = code or 120  # like the interpreter when flushing stdout fails at exit
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ta_lab2.pipeline.forkserver REQUEST_FD REPLY_FD [MODULE…] [--late MODULE…]``
    (started by the runner): preload for children of the ``-m`` MODULEs, then serve requests;
    the late ones are preloaded and served by a delegate zygote (see :class:`_Delegate`)."""
    import warnings

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m ta_lab2.pipeline.forkserver REQUEST_FD REPLY_FD [MODULE…] [--late MODULE…]",
              file=sys.stderr)
        raise SystemExit(2)
    request_fd, reply_fd, modules = int(args[0]), int(args[1]), args[2:]
    # Ctrl-C reaches the runner's whole process group; the runner decides what dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Python ≥ 3.12 warns that fork() in a multi-threaded process may deadlock: the threads
    # alive here are parked (see the module docstring), and polars' pool does not exist yet.
    warnings.filterwarnings("ignore", message=r".*multi-threaded.*fork\(\).*", category=DeprecationWarning)
    # With the kernel to load, the other modules' children (the bars, which start every run)
    # are forked as soon as their imports are done; the kernel and the modules whose children
    # use it load meanwhile in a delegate zygote. Otherwise one zygote preloads everything.
    late = modules[modules.index("--late") + 1:] if "--late" in modules else []
    early = modules[:modules.index("--late")] if "--late" in modules else modules
    gc.disable()  # until the preload is frozen (see _freeze)
    _quietly(preload, early or late)
    delegate = _start_delegate(late, request_fd, reply_fd) if early and late else None
    _freeze()
    _Zygote(request_fd, reply_fd, delegate).serve()
    # Nothing is left to clean up; an orderly interpreter exit would tear down polars, numpy
    # and psycopg module by module (~0.3 s) while the runner waits for the zygote to end.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _freeze() -> None:
    """Move every object the preload created out of the garbage collector's reach, then let it
    run again (it was off during the preload).

    The preload creates ~100k objects (modules, classes, functions). Collecting during it cost
    the zygote ~60 ms before its first child, and, left in the collector's generations, they
    made the first full collection of every child (each EMA refresher had one) walk all of
    them: 80–110 ms, plus a copy-on-write fault for every page it touched. Frozen, they are
    never walked; children collect only what they create (``gc.freeze``, docs/decisions.md)."""
    gc.freeze()
    gc.enable()


def _quietly(function: Any, *args: Any) -> Any:
    """Run ``function`` with fds 1 and 2 on /dev/null: whatever imports print (library
    warnings) would otherwise land on the runner's terminal, where a child's output never goes
    unless it fails or the run is verbose."""
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        return function(*args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _start_delegate(modules: Sequence[str], request_fd: int, reply_fd: int) -> _Delegate | None:
    """Fork the zygote that preloads and serves ``modules`` (see :class:`_Delegate`)."""
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    parent = os.getpid()
    try:
        pid = _fork(request_r, request_w, reply_r, reply_w)
    except OSError:
        return None  # the first zygote serves every module
    if pid == 0:
        code = 1
        try:
            die_with_parent()
            if os.getppid() != parent:
                os._exit(1)
            for fd in (request_fd, reply_fd, request_w, reply_r):
                os.close(fd)
            _quietly(preload, list(modules))
            _freeze()
            _Zygote(request_r, reply_w).serve()
            code = 0
        finally:
            os._exit(code)
    os.close(request_r)
    os.close(reply_w)
    return _Delegate(modules, pid, request_w, reply_r)


if __name__ == "__main__":
    main()
