"""ta_lab2: daily crypto prices -> multi-timeframe bars and EMAs in PostgreSQL.

The package layout mirrors the architecture:

* ``db``        connection (URL resolution, embedded server), schema, bulk I/O
* ``load``      source loaders (CoinMarketCap CSV, generic CSV/Parquet, synthetic universe)
* ``bars``      day -> bar computation and the bar builders
* ``emas``      the EMA kernel and refreshers
* ``pipeline``  runners that orchestrate builders in subprocesses
* ``baseline``  snapshot -> truncate -> rebuild -> compare harness
* ``cli``       the ``ta-lab2`` command (thin layer over the above)
"""

__version__ = "0.1.0"
