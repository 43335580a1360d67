"""Starting one child process of a run: from the standard library's fork server, in its own
process group, with the environment and output the runner gives it, dying with the runner
(spec 04, "Behaviour every runner shares").

A child is a Python function called with an argv (``ta_lab2.bars.cli.main``,
``ta_lab2.emas.cli.main``: the same commands a user can run on their own). :class:`Launcher`
starts each one with :mod:`multiprocessing`'s ``forkserver`` start method: one server per run
imports what the children need once (``preload``: polars, numpy, psycopg, the builders; numba
and the EMA kernel only for a run that recomputes EMA series), and every child is a
``fork()`` of it, so a child starts in tens of milliseconds instead of paying about a second of
imports. ``TA_LAB2_FORKSERVER=0`` uses the ``spawn`` start method instead (a new interpreter
per child, everything else the same) — a switch for ruling the fork server out when
something misbehaves.

What every child gets, whichever way it starts (:func:`_child_main` runs first in it):

* its own session and process group (``os.setsid``), so :func:`kill_group` reaches its
  worker processes too;
* the environment of its request, replacing the server's: the database URL travels there,
  never in argv (the request itself goes through a pipe);
* stdin on ``/dev/null`` (multiprocessing's doing); stdout and stderr on its output file, or
  the runner's terminal for a verbose run;
* death with the runner: it watches a pipe only the runner can write to (the *lifeline*) and
  kills its own group when that pipe closes — which the kernel does when the runner ends,
  however it ends; and death with its parent, the fork server (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

#: Environment switch: "0" (or "false"/"no"/"off") starts every child as a new interpreter.
ENV_SWITCH = "TA_LAB2_FORKSERVER"

#: What a child runs: a module-level function (or a ``functools.partial`` of one; it is pickled
#: by reference) called with the child's argv; it ends the process with ``sys.exit(code)``.
Entry = Callable[[list[str]], object]

#: A started child: ``pid`` (also its process group once it runs), ``exitcode`` (None while it
#: runs; negative: killed by that signal), ``sentinel`` (readable once it has ended), ``join()``.
Child = multiprocessing.process.BaseProcess

_PR_SET_PDEATHSIG = 1


def fork_server_enabled(env: Mapping[str, str] | None = None) -> bool:
    """False when ``TA_LAB2_FORKSERVER`` is 0/false/no/off (default: enabled)."""
    value = (os.environ if env is None else env).get(ENV_SWITCH, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing).
    Also a ``preexec_fn`` for ``subprocess``: a killed capture never leaves runners behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class Launcher:
    """Starts the children of one run: ``with Launcher(preload) as launcher: …``.

    Entering starts the fork server at once, so its imports overlap whatever the runner does
    before its first child (schema check, id validation, locks); leaving stops it. A run thus
    pays for its own server, preloaded with what that run needs — the next run's may differ
    (numba only when EMA series are recomputed) and the bench measures what a user's run
    costs. multiprocessing keeps one fork server per process, so one run at a time per
    process. The server imports with the garbage collector off and freezes what it imported
    (:mod:`.preload_begins`, :mod:`.preload_ends`). Stopping it uses ``ForkServer._stop``,
    the one private name this takes from the standard library (CPython's own tests stop
    servers with it); without it the server lives on and later runs share it.
    """

    def __init__(self, preload: Sequence[str] = (), *, fork_server: bool | None = None) -> None:
        self.preload = list(dict.fromkeys(preload))
        self.fork_server = fork_server_enabled() if fork_server is None else fork_server
        self._context = multiprocessing.get_context("forkserver" if self.fork_server else "spawn")
        self._lifeline: tuple[Any, Any] | None = None

    def __enter__(self) -> "Launcher":
        # the read end goes to every child; the write end never leaves this process
        self._lifeline = multiprocessing.Pipe(duplex=False)
        if self.fork_server:
            _stop_fork_server()
            forkserver.set_forkserver_preload([f"{__package__}.preload_begins", *self.preload,
                                               f"{__package__}.preload_ends"])
            forkserver.ensure_running()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None
        if self.fork_server:
            _stop_fork_server()

    def launch(self, name: str, entry: Entry, argv: Sequence[str], env: Mapping[str, str],
               output: Path | None) -> Child:
        """Start ``entry(argv)`` in a child with environment ``env`` and its stdout and stderr
        on ``output`` (None: the runner's, i.e. verbose); returns once it has a pid."""
        if self._lifeline is None:
            raise RuntimeError("Launcher.launch() outside its 'with' block")
        args = (entry, list(argv), dict(env), None if output is None else str(output), self._lifeline[0])
        process = self._context.Process(target=_child_main, name=name, args=args)
        try:
            process.start()
        except (ConnectionError, EOFError, FileNotFoundError):
            if not self.fork_server:
                raise
            # the server died (it cannot be told from one still ending until its socket
            # refuses): start a new one with the same preload, once
            _stop_fork_server()
            forkserver.ensure_running()
            process = self._context.Process(target=_child_main, name=name, args=args)
            process.start()
        return process

    def wait(self, children: Sequence[Child], timeout: float) -> None:
        """Return once one of ``children`` may have ended, or after ``timeout`` seconds."""
        multiprocessing.connection.wait([c.sentinel for c in children], max(0.0, timeout))


def kill_group(child: Child) -> None:
    """SIGKILL ``child``, then its whole process group, and wait for its end. The child goes
    first: once it is killed it starts nothing more, and whatever it started shares its group
    (when it had not reached ``setsid`` yet, there is no group and nothing else to kill)."""
    if child.pid is not None:
        for kill in (os.kill, os.killpg):
            try:
                kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    child.join()


def _stop_fork_server() -> None:
    """Stop this process's fork server, if one runs: it exits once its last child has."""
    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        try:
            stop()
        except ChildProcessError:  # it died and was reaped already
            pass


# ---------------------------------------------------------------------------- in the child
def _child_main(entry: Entry, argv: list[str], env: dict[str, str], output: str | None, lifeline: Any) -> None:
    """The first thing a child runs: become what the module docstring promises, run
    ``entry(argv)``. Its ``sys.exit`` code is the child's exit code."""
    os.setsid()  # own session and process group first: a timeout's killpg() must reach all it starts
    die_with_parent()
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="lifeline", daemon=True).start()
    os.environ.clear()
    os.environ.update(env)
    time.tzset()
    if output is not None:
        _redirect(output)
    try:
        entry(argv)
    finally:
        logging.shutdown()  # what the interpreter's exit would do; multiprocessing skips atexit
        for stream in (sys.stdout, sys.stderr):
            stream.flush()


def _watch_lifeline(lifeline: Any) -> None:
    """Block until the runner's end of the lifeline closes, then kill this child's group."""
    try:
        while True:
            lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os.killpg(0, signal.SIGKILL)


def _redirect(output: str) -> None:
    """fds 1 and 2 onto ``output`` (the streams keep their buffering; nothing is buffered yet)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
