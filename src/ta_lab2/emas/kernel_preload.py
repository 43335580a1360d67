"""Importing this module loads the EMA kernel compiled (numba, then the kernel from numba's
on-disk cache: ~0.6 s of CPU). It exists to be named in a fork server's preload — the
standard library's preload imports modules and cannot call a function — so that every child a
run that recomputes EMA series forks finds the kernel ready instead of loading it itself."""

from ta_lab2.emas.kernel import load_compiled

load_compiled()
