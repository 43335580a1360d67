"""A Dask client for one command: of the scheduler at ``--scheduler``, or of a cluster of this
machine (``distributed.LocalCluster``: one single-threaded worker process per CPU) started for
the command and stopped after it.

The database URL never reaches the scheduler: workers read it from their own environment
(``TA_LAB2_DB_URL``, else ``TARGET_DB_URL`` or a ``db_config.env`` in their working
directory). For a cluster started here the URL is in its workers' environment from the start
(``LocalCluster(env=…)``: handed by this process to the worker processes it spawns, and to
any it restarts); a remote worker is started with it (docs/scale.md). No worker plugin
carries it: a plugin is pickled to the scheduler, which would then hold the password.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ta_lab2.db.url import ENV_URL
from ta_lab2.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds a client waits to reach its scheduler before the command fails.
CONNECT_TIMEOUT_S = 30


def import_distributed() -> Any:
    """``distributed``, or a ConfigError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError("--executor dask needs the 'distributed' package",
                          hint="pip install 'ta_lab2[dask]' (or pip install 'dask[distributed]')") from None
    return distributed


def worker_env(url: str) -> dict[str, str]:
    """The environment of a worker this process starts: the URL, and polars on one thread
    (each worker runs one task at a time; the workers are the parallelism)."""
    return {ENV_URL: url, "POLARS_MAX_THREADS": "1"}


@contextmanager
def local_cluster(url: str, n_workers: int | None = None, preload: Sequence[str] = ()) -> Iterator[str]:
    """Start a cluster of ``n_workers`` (default: the CPU count) single-threaded worker
    processes on this machine, each importing the modules named in ``preload`` as it starts
    (Dask's worker preload), yield its scheduler's address, stop it afterwards. No dashboard;
    the scheduler's HTTP endpoints (health, metrics), which Dask starts regardless, listen on a
    free port of the loopback interface rather than on 8787, where two runs at once would
    clash."""
    distributed = import_distributed()
    n = n_workers or max(1, os.cpu_count() or 1)
    with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=worker_env(url),
                                  preload=list(preload), dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                  silence_logs=logging.ERROR) as cluster:
        log.info("started a local Dask cluster of %d workers at %s", n, cluster.scheduler_address)
        yield cluster.scheduler_address


@contextmanager
def dask_client(scheduler: str | None, url: str) -> Iterator[Any]:
    """A client of ``scheduler``, or of a local cluster started for the block (``url`` goes to
    its workers' environment only)."""
    distributed = import_distributed()
    if scheduler is None:
        with local_cluster(url) as address, _client(distributed, address) as client:
            yield client
        return
    with _client(distributed, scheduler) as client:
        yield client


@contextmanager
def _client(distributed: Any, address: str) -> Iterator[Any]:
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}",
                          hint="start one with `dask scheduler` (docs/scale.md), or leave out --scheduler "
                               "to start a cluster on this machine") from None
    try:
        yield client
    finally:
        client.close()
