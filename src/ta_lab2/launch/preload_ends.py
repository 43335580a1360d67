"""The last module a run's fork server imports (after the run's own preload): moves everything
the preload created out of the garbage collector's reach (``gc.freeze``) and turns it back on.
Children forked from the server then never walk those objects in their own collections, nor
touch — and so copy — the pages holding them (docs/decisions.md 71)."""

import gc

gc.freeze()
gc.enable()
