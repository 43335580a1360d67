"""ta_lab2: daily crypto prices -> multi-timeframe bars and EMAs in PostgreSQL.

The packages, top layer first (docs/architecture.md holds the rules):

* ``cli``        the ``ta-lab2`` command (thin layer over the rest); ``scripts`` the seed's paths
* ``bench``      the speed bench, ``bench_scenarios`` its universes; ``demo`` the first-run tour
* ``runners``    the three runners: which children a run starts, its ids and locks
* ``baseline``   snapshot -> truncate -> rebuild -> compare harness and its reports
* ``emas``       the EMA kernel and refreshers
* ``bars``       day -> bar computation and the bar builders
* ``launch``     child processes (fork server, dependency order, timeouts)
* ``work``       what a builder's process runs on: work units, progress, command plumbing
* ``load``       source loaders (CoinMarketCap CSV, generic CSV/Parquet, synthetic universe)
* ``cluster``    work units as tasks of a Dask cluster (``--executor dask``)
* ``db``         connection (URL resolution, embedded server), schema, bulk I/O, locks
"""

__version__ = "0.1.0"
