"""Running work units on a Dask cluster, knowing no builder: a client of a scheduler, or of a
cluster of this machine started for one run (:mod:`.client`), and a work unit as a task that
opens its own connection from its worker's environment (:mod:`.units`).

``distributed`` is an optional extra (``pip install 'ta_lab2[dask]'``), imported only when a
command runs with ``--executor dask``."""
