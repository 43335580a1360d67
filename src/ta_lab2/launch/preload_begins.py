"""The first module a run's fork server imports (:class:`ta_lab2.launch.process.Launcher`
names it before the run's own preload; the standard library's preload can only import
modules): the garbage collector is off during the imports that follow. They create ~100k
objects that live as long as the server; collecting ~150 times meanwhile cost ~60 ms before
the first child could start (docs/performance.md). :mod:`.preload_ends` turns it back on."""

import gc

gc.disable()
