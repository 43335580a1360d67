"""The last module a run's fork server imports (after the run's own preload).

* Moves everything the preload created out of the garbage collector's reach (``gc.freeze``)
  and turns it back on: children forked from the server then never walk those objects in
  their own collections, nor touch — and so copy — the pages holding them (docs/decisions.md
  71).
* Makes the server's end immediate: it ends (``SystemExit``) once the runner and every child
  have closed its pipe, and an orderly interpreter exit would then tear down polars, numpy and
  psycopg module by module (~0.3 s) while the runner waits for it. Nothing is left to clean
  up, so its exit skips that (``atexit`` runs before the teardown; a forked process that
  inherits the handler and runs it is not the server and exits as usual).
"""

import atexit
import gc
import os

_SERVER = os.getpid()


def _exit_at_once() -> None:
    if os.getpid() == _SERVER:
        os._exit(0)


gc.freeze()
gc.enable()
atexit.register(_exit_at_once)
